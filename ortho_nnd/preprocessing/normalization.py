"""Intensity normalisation of MRI: per-scan z-score.

MRI intensities have no physical unit and vary with coil, sequence and scanner, so each scan is
normalised with its own mean and standard deviation. When the scan has a zero background, the
statistics use nonzero voxels only, so air outside a cropped field of view does not dominate them.
"""
from __future__ import annotations

import numpy as np

# Floor for the standard deviation, in input intensity units, so constant regions do not divide by zero.
MIN_STANDARD_DEVIATION = 1e-8

# Fraction of zero voxels above which statistics use only nonzero voxels.
ZERO_BACKGROUND_FRACTION = 0.1

SCHEMES = ("zscore",)


def zscore_normalize(data: np.ndarray) -> tuple[np.ndarray, dict]:
    """Return z-scored float32 data (C, Z, Y, X) and the parameters used, per channel."""
    output = np.empty(data.shape, dtype=np.float32)
    parameters = []
    for channel in range(data.shape[0]):
        volume = data[channel].astype(np.float64)
        nonzero = volume != 0
        use_mask = (1.0 - nonzero.mean()) > ZERO_BACKGROUND_FRACTION and nonzero.any()
        values = volume[nonzero] if use_mask else volume
        mean = float(values.mean())
        std = float(max(values.std(), MIN_STANDARD_DEVIATION))
        output[channel] = ((volume - mean) / std).astype(np.float32)
        parameters.append({"mean": mean, "std": std, "nonzero_mask": bool(use_mask)})
    return output, {"scheme": "zscore", "channels": parameters}


def normalize(data: np.ndarray, scheme: str) -> tuple[np.ndarray, dict]:
    """Normalise with the named scheme; raise ValueError for an unknown one."""
    if scheme == "zscore":
        return zscore_normalize(data)
    raise ValueError(f"Invalid normalization {scheme!r} in the plans; supported: {list(SCHEMES)}.")
