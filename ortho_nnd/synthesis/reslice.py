"""Reslice a synthetic image and its label map into a thick-slice acquisition of one view.

The acquisition grid covers the label map's foreground in the view's orientation (see
``ortho_nnd.phantom.grid``) with a small random obliquity. The image is resampled with
linear interpolation on a grid ``supersampling`` times finer along the slice normal and
averaged back to the slice thickness, which models partial volume. Labels are resampled
with nearest-neighbour interpolation at the voxel centres.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ortho_nnd.phantom.grid import VIEW_DIRECTIONS, Grid, check_view, random_obliquity

# Margin in mm added around the foreground on every side of the acquisition box.
FOREGROUND_MARGIN_MM = 10.0


def foreground_corners(label: sitk.Image) -> np.ndarray:
    """Return the 8 world corners of the bounding box of the non-zero voxels, shape (8, 3)."""
    array = sitk.GetArrayFromImage(label)
    nonzero = np.argwhere(array > 0)
    if len(nonzero) == 0:
        raise ValueError("The label map has no foreground voxels; nothing to synthesise.")
    low = nonzero.min(axis=0)[::-1] - 0.5
    high = nonzero.max(axis=0)[::-1] + 0.5
    corners = np.array([[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])])
    return np.array([label.TransformContinuousIndexToPhysicalPoint(c.tolist()) for c in corners])


def acquisition_grid(
    label: sitk.Image,
    view: str,
    in_plane_spacing: float,
    slice_thickness: float,
    rng: np.random.Generator,
    max_obliquity_degrees: float = 5.0,
) -> Grid:
    """Build an oblique grid of ``view`` that covers the foreground of ``label`` plus a margin."""
    check_view(view)
    direction = random_obliquity(rng, max_obliquity_degrees) @ VIEW_DIRECTIONS[view]
    corners = foreground_corners(label)
    # Coordinates of the corners along the grid's own axes.
    projected = corners @ direction
    low = projected.min(axis=0) - FOREGROUND_MARGIN_MM
    high = projected.max(axis=0) + FOREGROUND_MARGIN_MM
    spacing = np.array([in_plane_spacing, in_plane_spacing, slice_thickness])
    size = np.maximum(np.ceil((high - low) / spacing).astype(int), 1)
    center = direction @ ((low + high) / 2.0)
    return Grid.centered(center, direction, size, spacing)


def _reference(grid: Grid, pixel_type, supersampling: int = 1) -> sitk.Image:
    """Return an empty image on ``grid``, optionally ``supersampling`` times finer along the slice normal."""
    size = list(grid.size)
    spacing = list(grid.spacing)
    origin = np.asarray(grid.origin)
    if supersampling > 1:
        size[2] *= supersampling
        spacing[2] /= supersampling
        # The first sub-slice centre lies half a slice minus half a sub-slice below the first slice centre.
        normal = grid.direction_matrix[:, 2]
        origin = origin - normal * (grid.spacing[2] / 2.0 - spacing[2] / 2.0)
    reference = sitk.Image([int(n) for n in size], pixel_type)
    reference.SetSpacing(spacing)
    reference.SetOrigin(tuple(float(o) for o in origin))
    reference.SetDirection(grid.direction)
    return reference


def reslice_image(image: sitk.Image, grid: Grid, supersampling: int) -> np.ndarray:
    """Return the slab-averaged image on ``grid`` as a float32 array (z, y, x)."""
    reference = _reference(grid, sitk.sitkFloat32, supersampling)
    # NOTE: corners of an oblique grid outside the source map become 0, a black wedge that real
    # scans do not have. Filling them with a background pseudo-tissue would be more realistic.
    fine = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(fine)
    nx, ny, nz = grid.size
    return array.reshape(nz, supersampling, ny, nx).mean(axis=1)


def reslice_label(label: sitk.Image, grid: Grid) -> sitk.Image:
    """Return the label map resampled at the voxel centres of ``grid`` (nearest neighbour, uint8)."""
    reference = _reference(grid, sitk.sitkUInt8)
    return sitk.Resample(label, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
