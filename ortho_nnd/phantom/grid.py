"""Acquisition grids: slice orientation per view, obliquity, and voxel centres in world mm.

World coordinates are SimpleITK's LPS. The columns of a direction matrix contain the world
directions of image index axes 0, 1 and 2, and index axis 2 is the slice normal. The base
orientations are the usual clinical ones:

| view | index axis 0 | index axis 1 | index axis 2 (slice normal) | code |
| --- | --- | --- | --- | --- |
| sagittal | posterior | inferior | right | PIR |
| coronal | left | inferior | posterior | LIP |
| axial | left | posterior | superior | LPS |
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ortho_nnd.phantom.shapes import rotation_about_axis

VIEWS = ("sagittal", "coronal", "axial")

# Columns are the world (LPS) directions of index axes 0, 1, 2.
VIEW_DIRECTIONS = {
    "sagittal": np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]]).T,
    "coronal": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]).T,
    "axial": np.eye(3),
}


def check_view(view: str) -> str:
    if view not in VIEWS:
        raise ValueError(f"Invalid view {view!r}; valid views are {list(VIEWS)}.")
    return view


def random_obliquity(rng: np.random.Generator, max_degrees: float) -> np.ndarray:
    """Return a rotation by up to ``max_degrees`` about a random axis."""
    axis = rng.normal(size=3)
    return rotation_about_axis(axis, rng.uniform(-max_degrees, max_degrees))


@dataclass(frozen=True)
class Grid:
    """Geometry of an image in SimpleITK order: size and spacing per index axis, LPS origin, direction."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # row-major 3x3, as SimpleITK's GetDirection()

    @classmethod
    def centered(cls, center, direction: np.ndarray, size, spacing) -> "Grid":
        """Build the grid whose voxel-centre box is centred on the world point ``center``."""
        direction = np.asarray(direction, dtype=np.float64)
        half_extent = (np.asarray(size, dtype=np.float64) - 1.0) / 2.0 * np.asarray(spacing, dtype=np.float64)
        origin = np.asarray(center, dtype=np.float64) - direction @ half_extent
        return cls(
            size=tuple(int(n) for n in size),
            spacing=tuple(float(s) for s in spacing),
            origin=tuple(float(o) for o in origin),
            direction=tuple(float(d) for d in direction.ravel()),
        )

    @classmethod
    def from_image(cls, image: sitk.Image) -> "Grid":
        return cls(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def center(self) -> np.ndarray:
        return self.index_to_world(((np.asarray(self.size) - 1.0) / 2.0)[None])[0]

    def index_to_world(self, index: np.ndarray) -> np.ndarray:
        """Map (N, 3) continuous indices (SimpleITK order) to (N, 3) world points."""
        scaled = np.asarray(index, dtype=np.float64) * np.asarray(self.spacing)
        # einsum instead of a matrix product: BLAS is slow for (N, 3) arrays on busy cores.
        return np.einsum("nj,ij->ni", scaled, self.direction_matrix) + np.asarray(self.origin)

    def slice_points(self, slice_index: int, supersampling: int) -> np.ndarray:
        """Return world points of one slice, shape (size[1], size[0], supersampling, 3).

        The ``supersampling`` points of a voxel are spread evenly over the slice thickness
        along the slice normal, at the centres of equal sub-slabs.
        """
        offsets = (np.arange(supersampling) + 0.5) / supersampling - 0.5
        i = np.arange(self.size[0], dtype=np.float64)
        j = np.arange(self.size[1], dtype=np.float64)
        jj, ii, qq = np.meshgrid(j, i, offsets, indexing="ij")
        index = np.stack([ii, jj, slice_index + qq], axis=-1)
        return self.index_to_world(index.reshape(-1, 3)).reshape(self.size[1], self.size[0], supersampling, 3)

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image
