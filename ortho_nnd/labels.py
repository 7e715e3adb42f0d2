"""Mapping between declared label values and network output channels.

dataset.json may declare label values with gaps (the abdominal MR uses 0-9, 11, ..., 46-49).
Networks get one output channel per declared label, in ascending order of value, so channel i
stands for the i-th smallest declared value. Preprocessed ``_seg.npy`` arrays store channel
indices; predictions are mapped back to the declared values before they are written. For
consecutive labels 0..N the mapping is the identity.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np


def channel_values(label_values: Iterable[int]) -> list[int]:
    """Return the declared label values in channel order (ascending); background 0 must be among them."""
    values = sorted({int(v) for v in label_values})
    if not values or values[0] != 0:
        raise ValueError(f"Declared label values {values} must include background 0.")
    return values


def is_identity(values: list[int]) -> bool:
    return values == list(range(len(values)))


def values_to_channels(label_map: np.ndarray, values: list[int]) -> np.ndarray:
    """Replace declared label values by channel indices (int16); values must all be declared."""
    if is_identity(values):
        return label_map.astype(np.int16, copy=False)
    lookup = np.full(max(values) + 1, -1, dtype=np.int16)
    lookup[np.asarray(values)] = np.arange(len(values), dtype=np.int16)
    channels = lookup[label_map.astype(np.int64)]
    if (channels < 0).any():
        raise ValueError(f"Label map contains values outside the declared {values}.")
    return channels


def channels_to_values(channels: np.ndarray, values: list[int]) -> np.ndarray:
    """Replace channel indices by declared label values (uint8 when they fit, else int16)."""
    dtype = np.uint8 if max(values) < 256 else np.int16
    if is_identity(values):
        return channels.astype(dtype, copy=False)
    return np.asarray(values, dtype=dtype)[channels.astype(np.int64)]
