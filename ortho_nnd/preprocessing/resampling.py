"""Resampling of canonical arrays (through-plane axis first) to a target spacing.

Images use cubic B-splines in-plane. Through-plane, anisotropic scans (through-plane spacing more
than ANISOTROPY_RATIO times the in-plane spacing) use nearest-neighbour interpolation, because a
cubic spline across 3-4 mm slices invents structure between slices that were never measured and
overshoots at tissue edges. Label maps are resampled as one-hot masks with linear interpolation and
an argmax, which keeps thin structures better than nearest-neighbour on the label values.
Grid alignment follows the image convention: the outer voxel edges of input and output coincide.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

# Through-plane spacing / in-plane spacing above which the through-plane axis is resampled separately.
ANISOTROPY_RATIO = 3.0

IMAGE_IN_PLANE_ORDER = 3
IMAGE_THROUGH_PLANE_ORDER_ANISOTROPIC = 0
LABEL_ORDER = 1


def is_anisotropic(spacing: Sequence[float]) -> bool:
    """Return True when the through-plane axis (index 0) is much coarser than the in-plane axes."""
    return float(spacing[0]) > ANISOTROPY_RATIO * float(min(spacing[1:]))


def compute_new_shape(shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float]) -> list[int]:
    """Return the voxel shape that covers the same extent at ``target_spacing`` (at least 1 voxel per axis)."""
    return [max(1, int(round(s * sp / tsp))) for s, sp, tsp in zip(shape, spacing, target_spacing)]


def _zoom(volume: np.ndarray, new_shape: Sequence[int], order: int, axes: Sequence[int]) -> np.ndarray:
    factors = [1.0] * volume.ndim
    for axis in axes:
        factors[axis] = new_shape[axis] / volume.shape[axis]
    if all(f == 1.0 for f in factors):
        return volume
    result = ndimage.zoom(volume, factors, order=order, mode="nearest", grid_mode=True, prefilter=order > 1)
    if tuple(result.shape) != tuple(new_shape):
        raise RuntimeError(f"Resampling produced shape {result.shape} instead of {tuple(new_shape)}.")
    return result


def resample_image(
    data: np.ndarray,
    new_shape: Sequence[int],
    anisotropic: bool,
    in_plane_order: int = IMAGE_IN_PLANE_ORDER,
    through_plane_order: int = IMAGE_THROUGH_PLANE_ORDER_ANISOTROPIC,
) -> np.ndarray:
    """Resample a (C, Z, Y, X) float array to (C, *new_shape)."""
    new_shape = [int(v) for v in new_shape]
    output = np.empty((data.shape[0], *new_shape), dtype=np.float32)
    for channel in range(data.shape[0]):
        volume = data[channel].astype(np.float32, copy=False)
        if tuple(volume.shape) == tuple(new_shape):
            output[channel] = volume
            continue
        if anisotropic:
            in_plane_shape = [volume.shape[0], new_shape[1], new_shape[2]]
            volume = _zoom(volume, in_plane_shape, in_plane_order, axes=(1, 2))
            volume = _zoom(volume, new_shape, through_plane_order, axes=(0,))
        else:
            volume = _zoom(volume, new_shape, in_plane_order, axes=(0, 1, 2))
        output[channel] = volume
    return output


def resample_label(label: np.ndarray, new_shape: Sequence[int], anisotropic: bool) -> np.ndarray:
    """Resample a (Z, Y, X) integer label map by linear interpolation of one-hot masks and argmax."""
    new_shape = [int(v) for v in new_shape]
    if tuple(label.shape) == tuple(new_shape):
        return label.copy()

    values = np.unique(label)
    best_score = np.full(new_shape, -1.0, dtype=np.float32)
    output = np.zeros(new_shape, dtype=label.dtype)
    for value in values:
        mask = (label == value).astype(np.float32)
        if anisotropic:
            mask = _zoom(mask, [mask.shape[0], new_shape[1], new_shape[2]], LABEL_ORDER, axes=(1, 2))
            mask = _zoom(mask, new_shape, 0, axes=(0,))
        else:
            mask = _zoom(mask, new_shape, LABEL_ORDER, axes=(0, 1, 2))
        better = mask > best_score
        output[better] = value
        best_score[better] = mask[better]
    return output


def resample_probabilities(probabilities: np.ndarray, new_shape: Sequence[int], anisotropic: bool) -> np.ndarray:
    """Resample (C, Z, Y, X) class probabilities linearly (nearest through-plane when anisotropic)."""
    new_shape = [int(v) for v in new_shape]
    if tuple(probabilities.shape[1:]) == tuple(new_shape):
        return probabilities
    return resample_image(probabilities, new_shape, anisotropic, in_plane_order=1, through_plane_order=0 if anisotropic else 1)
