"""View detection and exact reorientation of scans into each view's canonical array order.

World coordinates follow SimpleITK/DICOM: LPS, so +x points to the patient's left, +y to the
posterior and +z to the superior side. Column k of an image's direction matrix is the world
direction of index axis k. The slice normal is the direction of the through-plane index axis.
"""
from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

logger = logging.getLogger(__name__)

VIEWS = ("sagittal", "coronal", "axial")

# World axis (0 = x left-right, 1 = y anterior-posterior, 2 = z superior-inferior) along which
# the slice normal of each view points.
VIEW_NORMAL_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}

# Canonical orientation of each view as an ITK orientation code: letter k names the direction in
# which image index axis k increases. The numpy array (axis order z, y, x) therefore has the
# through-plane axis first. Sagittal PIR is how most knee scanners store sagittal series.
CANONICAL_ORIENTATION = {"sagittal": "PIR", "coronal": "LIP", "axial": "LPS"}

# Canonical numpy axis that runs left-right, the only axis that mirroring may flip.
LEFT_RIGHT_ARRAY_AXIS = {"sagittal": 0, "coronal": 2, "axial": 2}

# Obliquity above which a scan gets a warning: its slices cut the anatomy at an unusual angle.
STRONG_OBLIQUITY_DEGREES = 30.0

# A scan's through-plane axis is the index axis with the largest spacing when that spacing is at
# least this factor above the others. Near-isotropic 3D scans use index axis 2.
THROUGH_PLANE_SPACING_RATIO = 1.2

_LETTER_TO_AXIS_SIGN = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}
_AXIS_SIGN_TO_LETTER = {value: key for key, value in _LETTER_TO_AXIS_SIGN.items()}


class ViewMismatchError(ValueError):
    """Raised when a scan's declared view disagrees with the view detected from its geometry."""


@dataclass(frozen=True)
class ViewInfo:
    """Orientation facts of one scan."""

    view: str
    obliquity_degrees: float
    through_plane_index_axis: int
    orientation_code: str


def direction_matrix(image_or_direction) -> np.ndarray:
    """Return the 3x3 direction matrix (columns are index-axis directions) of an image or tuple."""
    direction = image_or_direction.GetDirection() if isinstance(image_or_direction, sitk.Image) else image_or_direction
    return np.asarray(direction, dtype=np.float64).reshape(3, 3)


def dominant_world_axes(direction: np.ndarray) -> list[tuple[int, int]]:
    """Assign each index axis a distinct world axis and sign, maximising the summed |cosines|.

    Returns ``[(world_axis, sign)]`` for index axes 0, 1, 2. Searching all six permutations keeps the
    assignment a permutation even for scans tilted by 45 degrees.
    """
    magnitude = np.abs(direction)
    best = max(itertools.permutations(range(3)), key=lambda perm: sum(magnitude[perm[k], k] for k in range(3)))
    return [(best[k], 1 if direction[best[k], k] >= 0 else -1) for k in range(3)]


def orientation_code(image_or_direction) -> str:
    """Return the closest ITK orientation code (for example 'PIR') of an image."""
    axes = dominant_world_axes(direction_matrix(image_or_direction))
    return "".join(_AXIS_SIGN_TO_LETTER[axis_sign] for axis_sign in axes)


def through_plane_index_axis(spacing) -> int:
    """Return the index axis treated as through-plane for a scan with this spacing."""
    spacing = np.asarray(spacing, dtype=np.float64)
    largest = int(np.argmax(spacing))
    others = np.delete(spacing, largest)
    if spacing[largest] >= THROUGH_PLANE_SPACING_RATIO * others.max():
        return largest
    return 2


def detect_view(image: sitk.Image) -> ViewInfo:
    """Detect the view of ``image`` from its slice normal and measure its obliquity.

    The slice normal is the direction of the through-plane index axis. Its largest world component
    picks the view (x: sagittal, y: coronal, z: axial); the obliquity is the angle between the
    normal and that world axis.
    """
    direction = direction_matrix(image)
    axis = through_plane_index_axis(image.GetSpacing())
    normal = direction[:, axis]
    world_axis = int(np.argmax(np.abs(normal)))
    cosine = float(np.clip(abs(normal[world_axis]) / max(np.linalg.norm(normal), 1e-12), -1.0, 1.0))
    view = {0: "sagittal", 1: "coronal", 2: "axial"}[world_axis]
    return ViewInfo(
        view=view,
        obliquity_degrees=math.degrees(math.acos(cosine)),
        through_plane_index_axis=axis,
        orientation_code=orientation_code(direction),
    )


def check_declared_view(image: sitk.Image, declared_view: str, file_name: str) -> ViewInfo:
    """Detect the view of ``image`` and raise ViewMismatchError when it differs from ``declared_view``."""
    if declared_view not in VIEWS:
        raise ValueError(f"Invalid view {declared_view!r} for {file_name}; expected one of {VIEWS}.")

    info = detect_view(image)
    if info.view != declared_view:
        raise ViewMismatchError(
            f"{file_name} is declared {declared_view} but its geometry indicates {info.view} (slice normal "
            f"{info.obliquity_degrees:.1f} degrees from the {info.view} axis, orientation {info.orientation_code}). "
            f"Rename the file to the detected view or fix the direction matrix in its header."
        )
    if info.obliquity_degrees > STRONG_OBLIQUITY_DEGREES:
        logger.warning(
            "%s is strongly oblique: its slice normal is %.1f degrees from the %s axis.",
            file_name, info.obliquity_degrees, info.view,
        )
    return info


@dataclass(frozen=True)
class CanonicalTransform:
    """Axis permutation and flips that bring a numpy array (z, y, x) into a view's canonical order.

    ``canonical = np.flip(array.transpose(permutation), axis=flipped_axes)``.
    """

    permutation: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    def to_json(self) -> dict:
        return {"permutation": list(self.permutation), "flips": list(self.flips)}

    @classmethod
    def from_json(cls, data: dict) -> "CanonicalTransform":
        return cls(tuple(int(v) for v in data["permutation"]), tuple(bool(v) for v in data["flips"]))

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Reorient a numpy array with SimpleITK axis order into canonical order (leading channel axes allowed)."""
        leading = array.ndim - 3
        axes = list(range(leading)) + [leading + p for p in self.permutation]
        result = np.transpose(array, axes)
        flip_axes = tuple(leading + k for k in range(3) if self.flips[k])
        if flip_axes:
            result = np.flip(result, axis=flip_axes)
        return np.ascontiguousarray(result)

    def invert(self, array: np.ndarray) -> np.ndarray:
        """Undo ``apply``: bring a canonical array back into the scan's own axis order."""
        leading = array.ndim - 3
        flip_axes = tuple(leading + k for k in range(3) if self.flips[k])
        if flip_axes:
            array = np.flip(array, axis=flip_axes)
        inverse = np.argsort(self.permutation)
        axes = list(range(leading)) + [leading + int(p) for p in inverse]
        return np.ascontiguousarray(np.transpose(array, axes))

    def apply_to_spacing(self, spacing_numpy_order) -> list[float]:
        """Permute a per-axis value in numpy order (z, y, x) into canonical order."""
        return [float(spacing_numpy_order[p]) for p in self.permutation]


def canonical_transform(image: sitk.Image, view: str) -> CanonicalTransform:
    """Compute the exact permutation and flips that bring ``image`` into ``view``'s canonical order.

    No interpolation happens: an oblique scan keeps its tilt, and only the axes are relabelled to
    the nearest anatomical directions.
    """
    if view not in CANONICAL_ORIENTATION:
        raise ValueError(f"Invalid view {view!r}; expected one of {VIEWS}.")

    source_axes = dominant_world_axes(direction_matrix(image))
    target_axes = [_LETTER_TO_AXIS_SIGN[letter] for letter in CANONICAL_ORIENTATION[view]]

    # In index order: target index axis j comes from the source index axis with the same world axis.
    source_index_for_target = []
    flip_index = []
    for world_axis, sign in target_axes:
        source_index = next(k for k, (axis, _) in enumerate(source_axes) if axis == world_axis)
        source_index_for_target.append(source_index)
        flip_index.append(source_axes[source_index][1] != sign)

    # Numpy axis n corresponds to index axis 2 - n.
    permutation = tuple(2 - source_index_for_target[2 - n] for n in range(3))
    flips = tuple(flip_index[2 - n] for n in range(3))
    return CanonicalTransform(permutation=permutation, flips=flips)


def spacing_numpy_order(image: sitk.Image) -> list[float]:
    """Return the spacing of ``image`` in numpy axis order (z, y, x)."""
    return [float(v) for v in reversed(image.GetSpacing())]
