"""Random MR-like contrast for a label map, in the style of SynthSeg.

Every label gets a Gaussian intensity with a random mean and standard deviation, so the
image is a Gaussian mixture conditioned on the labels and the network cannot rely on any
one contrast. The background of knee label maps contains fat, muscle, fluid and air, so it is
split into a few pseudo-tissues by thresholding a smooth random field, and each of them gets
its own Gaussian too.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter, zoom

# Ranges of the per-class Gaussian: mean (relative intensity) and standard deviation.
MEAN_RANGE = (0.0, 1.0)
STD_RANGE = (0.0, 0.06)
# Number of pseudo-tissues the background is split into.
NUM_BACKGROUND_TISSUES = 3
# Size in mm of the blobs of the background pseudo-tissue field.
BACKGROUND_FEATURE_MM = 15.0
# Range of the Gaussian blur (in source voxels) applied after drawing voxel intensities,
# which gives each tissue a little texture instead of white noise.
TEXTURE_SIGMA_VOXELS = (0.3, 0.8)


@dataclass(frozen=True)
class ContrastDraw:
    """Drawn Gaussian parameters: one per label value and one per background pseudo-tissue."""

    label_means: dict[int, float]
    label_stds: dict[int, float]
    background_means: tuple[float, ...]
    background_stds: tuple[float, ...]
    texture_sigma: float


def sample_contrast(rng: np.random.Generator, label_values) -> ContrastDraw:
    """Draw the Gaussian of every non-zero label and every background pseudo-tissue."""
    values = sorted(int(v) for v in label_values if int(v) != 0)
    means = rng.uniform(*MEAN_RANGE, size=len(values) + NUM_BACKGROUND_TISSUES)
    stds = rng.uniform(*STD_RANGE, size=len(values) + NUM_BACKGROUND_TISSUES)
    return ContrastDraw(
        label_means={v: float(m) for v, m in zip(values, means)},
        label_stds={v: float(s) for v, s in zip(values, stds)},
        background_means=tuple(float(m) for m in means[len(values):]),
        background_stds=tuple(float(s) for s in stds[len(values):]),
        texture_sigma=float(rng.uniform(*TEXTURE_SIGMA_VOXELS)),
    )


def background_tissues(shape, spacing_zyx, rng: np.random.Generator) -> np.ndarray:
    """Return an integer map (0 .. NUM_BACKGROUND_TISSUES-1) of smooth random blobs."""
    coarse_shape = [max(2, int(np.ceil(n * s / BACKGROUND_FEATURE_MM))) for n, s in zip(shape, spacing_zyx)]
    coarse = rng.normal(size=coarse_shape)
    factors = [n / c for n, c in zip(shape, coarse_shape)]
    field = zoom(coarse, factors, order=1, grid_mode=True, mode="nearest")[: shape[0], : shape[1], : shape[2]]
    thresholds = np.quantile(field, np.linspace(0, 1, NUM_BACKGROUND_TISSUES + 1)[1:-1])
    return np.digitize(field, thresholds).astype(np.uint8)


def render_contrast(labels: np.ndarray, spacing_zyx, draw: ContrastDraw, rng: np.random.Generator) -> np.ndarray:
    """Return a float32 image on the label map's grid with the drawn contrast."""
    image = np.empty(labels.shape, dtype=np.float32)
    background = labels == 0
    if background.any():
        tissues = background_tissues(labels.shape, spacing_zyx, rng)
        for index, (mean, std) in enumerate(zip(draw.background_means, draw.background_stds)):
            mask = background & (tissues == index)
            image[mask] = rng.normal(mean, std, size=int(mask.sum()))
    for value, mean in draw.label_means.items():
        mask = labels == value
        image[mask] = rng.normal(mean, draw.label_stds[value], size=int(mask.sum()))
    image = gaussian_filter(image, sigma=draw.texture_sigma)
    return np.clip(image, 0.0, None)
