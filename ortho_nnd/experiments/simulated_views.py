"""Simulated coronal and axial acquisitions from one 3D scan, for pretraining on real anatomy.

``simulate_view(image, view, in_plane_spacing_mm, slice_thickness_mm)`` reslices a scan onto a
grid whose slices are exactly coronal or axial (or sagittal), covering the scan's whole field of
view. Each output slice averages the source over the full slice thickness (a box slice profile),
as a 2D acquisition with thick slices would. The output's direction matrix is a proper rotation
that ``ortho_nnd.geometry.detect_view`` reads as the requested view.

NOTE: this is a simulation. The in-plane detail of a simulated view can be no finer than the
source resolution along those axes. For a sagittal 3D scan with 1.5 mm slices, left-right detail
in the coronal and axial images stays 1.5 mm for any ``in_plane_spacing_mm``. Contrast, noise
and artefacts stay those of the source sequence.
"""
from __future__ import annotations

import itertools
import logging
import math

import numpy as np
import SimpleITK as sitk

logger = logging.getLogger(__name__)

# Direction matrix columns (row direction, column direction, slice normal) in LPS world
# coordinates: the DICOM convention for each plane. Each triple is right-handed (determinant +1).
VIEW_DIRECTIONS = {
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (-1.0, 0.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0)),
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
}

# Sub-slice spacing used to integrate the slice profile, in mm: a few per source voxel.
SUB_SLICE_SPACING_MM = 0.5


def view_direction(view: str) -> np.ndarray:
    """Return the 3x3 direction matrix (columns = index axes) of an exactly ``view``-oriented grid."""
    if view not in VIEW_DIRECTIONS:
        raise ValueError(f"Invalid view {view!r}; expected one of {sorted(VIEW_DIRECTIONS)}.")
    return np.array(VIEW_DIRECTIONS[view], dtype=float).T


def world_bounds(image: sitk.Image, direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the min and max of the image's field of view (voxel edges) along the columns of ``direction``."""
    size = np.array(image.GetSize())
    corners = []
    for corner in itertools.product(*[(-0.5, s - 0.5) for s in size]):
        world = np.array(image.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner]))
        corners.append(direction.T @ world)
    corners = np.array(corners)
    return corners.min(axis=0), corners.max(axis=0)


def simulate_view(image: sitk.Image, view: str, in_plane_spacing_mm: float, slice_thickness_mm: float) -> sitk.Image:
    """Reslice ``image`` into a ``view`` acquisition with thick slices (float32, 0 outside the source)."""
    if in_plane_spacing_mm <= 0 or slice_thickness_mm <= 0:
        raise ValueError(
            f"Invalid spacing: in-plane {in_plane_spacing_mm} mm, slice thickness {slice_thickness_mm} mm; both must be positive."
        )
    direction = view_direction(view)
    low, high = world_bounds(image, direction)
    spacing = np.array([in_plane_spacing_mm, in_plane_spacing_mm, slice_thickness_mm], dtype=float)
    size = np.maximum(np.ceil((high - low) / spacing).astype(int), 1)

    # Sample n thin sub-slices per output slice and average them: a box slice profile of the full thickness.
    sub_slices = max(1, math.ceil(slice_thickness_mm / SUB_SLICE_SPACING_MM))
    fine_spacing = np.array([spacing[0], spacing[1], slice_thickness_mm / sub_slices])
    fine_size = [int(size[0]), int(size[1]), int(size[2]) * sub_slices]
    fine_origin_local = low + fine_spacing / 2.0

    reference = sitk.Image(fine_size, sitk.sitkFloat32)
    reference.SetSpacing([float(v) for v in fine_spacing])
    reference.SetDirection([float(v) for v in direction.flatten()])
    reference.SetOrigin([float(v) for v in direction @ fine_origin_local])
    fine = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), reference, sitk.Transform(), sitk.sitkLinear, 0.0)

    # GetArrayFromImage puts the slice axis first: (slices * n, rows, columns).
    fine_array = sitk.GetArrayFromImage(fine)
    thick = fine_array.reshape(int(size[2]), sub_slices, fine_size[1], fine_size[0]).mean(axis=1)

    output = sitk.GetImageFromArray(thick.astype(np.float32))
    output.SetSpacing([float(v) for v in spacing])
    output.SetDirection([float(v) for v in direction.flatten()])
    output.SetOrigin([float(v) for v in direction @ (low + spacing / 2.0)])
    logger.info(
        "Simulated %s view: size %s, spacing %s mm, %d sub-slices per slice",
        view, output.GetSize(), [round(v, 3) for v in output.GetSpacing()], sub_slices,
    )
    return output
