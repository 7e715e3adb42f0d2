"""Cropping to the bounding box of nonzero voxels, and pasting a cropped array back."""
from __future__ import annotations

import numpy as np


def nonzero_bounding_box(data: np.ndarray, seg: np.ndarray | None = None) -> list[list[int]]:
    """Return ``[[start, stop), ...]`` per spatial axis of the nonzero voxels of (C, Z, Y, X) data.

    Labelled voxels of ``seg`` (Z, Y, X) are kept inside the box even where the image is zero, so
    cropping never drops annotations. An image without nonzero voxels keeps its full extent.
    """
    mask = np.any(data != 0, axis=0)
    if seg is not None:
        mask |= seg != 0
    if not mask.any():
        return [[0, int(s)] for s in mask.shape]
    box = []
    for axis in range(mask.ndim):
        other_axes = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.where(np.any(mask, axis=other_axes))[0]
        box.append([int(present[0]), int(present[-1]) + 1])
    return box


def crop_to_box(array: np.ndarray, box: list[list[int]]) -> np.ndarray:
    """Crop the last three axes of ``array`` to ``box``."""
    slices = tuple(slice(start, stop) for start, stop in box)
    return array[(..., *slices)]


def paste_into_box(cropped: np.ndarray, box: list[list[int]], full_shape, fill_value=0) -> np.ndarray:
    """Place ``cropped`` (leading channel axes allowed) back into an array of spatial shape ``full_shape``."""
    leading = cropped.shape[: cropped.ndim - 3]
    output = np.full((*leading, *full_shape), fill_value, dtype=cropped.dtype)
    slices = tuple(slice(start, stop) for start, stop in box)
    output[(..., *slices)] = cropped
    return output
