"""Render one acquisition (sagittal, coronal or axial) of a phantom knee.

Each voxel is the mean of the tissue intensities at ``supersampling`` points spread across
the slice thickness, which models partial volume across thick slices. The in-plane point
spread is a Gaussian blur, then a smooth multiplicative bias field and Rician noise are
applied. Labels are the majority label of the same supersampled points.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter

from ortho_nnd.phantom import artifacts
from ortho_nnd.phantom.anatomy import LABELS, TISSUE, TISSUES, Subject, evaluate_model, local_to_world
from ortho_nnd.phantom.grid import VIEW_DIRECTIONS, Grid, check_view, random_obliquity

logger = logging.getLogger(__name__)

# Relative tissue intensities (1.0 = bright fluid) per pulse sequence, roughly following
# published appearances at 3 T: fat suppression darkens fat and marrow, T1 makes fat bright
# and fluid dark, and ligaments, tendons, menisci and cortex stay dark in all of them.
CONTRASTS = {
    "pd_fat_suppressed": {
        "air": 0.0, "skin": 0.35, "fat": 0.12, "muscle": 0.30, "fluid": 0.95, "tendon": 0.06,
        "collateral_ligament": 0.08, "injured_ligament": 0.80, "cortical_bone": 0.03, "bone_marrow": 0.15,
        "cartilage": 0.55, "meniscus": 0.06, "cruciate_ligament": 0.10,
    },
    "t1": {
        "air": 0.0, "skin": 0.50, "fat": 0.90, "muscle": 0.35, "fluid": 0.20, "tendon": 0.05,
        "collateral_ligament": 0.08, "injured_ligament": 0.30, "cortical_bone": 0.03, "bone_marrow": 0.85,
        "cartilage": 0.40, "meniscus": 0.06, "cruciate_ligament": 0.12,
    },
    "t2_fat_suppressed": {
        "air": 0.0, "skin": 0.30, "fat": 0.10, "muscle": 0.22, "fluid": 1.00, "tendon": 0.05,
        "collateral_ligament": 0.07, "injured_ligament": 0.85, "cortical_bone": 0.03, "bone_marrow": 0.12,
        "cartilage": 0.35, "meniscus": 0.05, "cruciate_ligament": 0.08,
    },
}
VIEW_CONTRAST = {"sagittal": "pd_fat_suppressed", "coronal": "t1", "axial": "t2_fat_suppressed"}

# Images are stored as int16 with this factor applied to the relative intensities.
INTENSITY_SCALE = 1000.0
# Gaussian in-plane point spread, in voxels.
IN_PLANE_PSF_SIGMA_VOXELS = 0.4
# Per-exam random gain of each tissue intensity (uniform, +-10 %).
TISSUE_GAIN_SPREAD = 0.10
# Noise standard deviation relative to fluid intensity (uniform range).
NOISE_SIGMA_RANGE = (0.015, 0.035)
# Standard deviation of the bias polynomial coefficients (log gain per 10 cm).
BIAS_STRENGTH = 0.12
# Largest obliquity of the slice stack relative to the base orientation, in degrees.
MAX_OBLIQUITY_DEGREES = 5.0
# Points evaluated at once, which bounds the memory of one chunk to a few hundred MB.
MAX_POINTS_PER_CHUNK = 2_000_000
# Standard deviation of the field-of-view centre around the knee, in mm, along the grid's
# in-plane axes and along its slice normal. The slab has little room to spare, so it moves less.
FOV_CENTER_JITTER_IN_PLANE_MM = 8.0
FOV_CENTER_JITTER_THROUGH_PLANE_MM = 3.0


@dataclass(frozen=True)
class SizePreset:
    """Acquisition grid of a phantom size preset."""

    in_plane_matrix: int
    field_of_view_mm: tuple[float, float]
    slab_mm: float
    slice_thickness_mm: tuple[float, float]
    supersampling: int


# "default" keeps the demo small: 80 x 80 in-plane at 1.75-2.0 mm, 21-24 slices of 3.5-4 mm.
# "benchmark" is clinical-like: 384 x 384 at 0.36-0.42 mm, 24-32 slices of 3-4 mm.
# NOTE: every point is tested against every structure, so a benchmark acquisition costs about
# 25 times a default one (about 8 s of CPU time). Culling points by structure bounding boxes would help.
SIZES = {
    "default": SizePreset(80, (140.0, 160.0), 84.0, (3.5, 4.0), 5),
    "benchmark": SizePreset(384, (140.0, 160.0), 96.0, (3.0, 4.0), 5),
}


def check_size(size: str) -> SizePreset:
    if size not in SIZES:
        raise ValueError(f"Invalid phantom size {size!r}; valid sizes are {sorted(SIZES)}.")
    return SIZES[size]


@dataclass(frozen=True)
class Acquisition:
    """Everything random about one scan of one view, so rendering itself is deterministic."""

    view: str
    grid: Grid
    contrast: str
    supersampling: int
    tissue_gain: tuple[float, ...]
    bias_coefficients: tuple[float, ...]
    noise_sigma: float
    noise_seed: int


def sample_acquisition(subject: Subject, view: str, rng: np.random.Generator, size: str = "default") -> Acquisition:
    """Draw grid, obliquity, contrast gains, bias and noise for one view of ``subject``."""
    check_view(view)
    preset = check_size(size)
    k = subject.scale

    field_of_view = rng.uniform(*preset.field_of_view_mm)
    in_plane_spacing = field_of_view / preset.in_plane_matrix
    thickness = rng.uniform(*preset.slice_thickness_mm)
    num_slices = int(round(preset.slab_mm / thickness))
    direction = random_obliquity(rng, MAX_OBLIQUITY_DEGREES) @ VIEW_DIRECTIONS[view]
    # Centre the field of view a little anterior and superior of the joint line, so the
    # patella and the suprapatellar recess are inside it.
    knee_center = local_to_world(subject, np.array([[0.0, 6.0 * k, 12.0 * k]]))[0]
    jitter = rng.normal(0.0, 1.0, size=3) * np.array(
        [FOV_CENTER_JITTER_IN_PLANE_MM, FOV_CENTER_JITTER_IN_PLANE_MM, FOV_CENTER_JITTER_THROUGH_PLANE_MM]
    )
    center = knee_center + direction @ jitter
    grid = Grid.centered(
        center, direction,
        size=(preset.in_plane_matrix, preset.in_plane_matrix, num_slices),
        spacing=(in_plane_spacing, in_plane_spacing, thickness),
    )

    gains = rng.uniform(1.0 - TISSUE_GAIN_SPREAD, 1.0 + TISSUE_GAIN_SPREAD, size=len(TISSUES))
    bias = artifacts.sample_bias_coefficients(rng, BIAS_STRENGTH)
    return Acquisition(
        view=view,
        grid=grid,
        contrast=VIEW_CONTRAST[view],
        supersampling=preset.supersampling,
        tissue_gain=tuple(float(g) for g in gains),
        bias_coefficients=tuple(float(c) for c in bias),
        noise_sigma=float(rng.uniform(*NOISE_SIGMA_RANGE)),
        noise_seed=int(rng.integers(0, 2**31 - 1)),
    )


def tissue_intensities(acquisition: Acquisition) -> np.ndarray:
    """Return the intensity of each tissue class for this acquisition (index = tissue code)."""
    table = CONTRASTS[acquisition.contrast]
    return np.array([table[name] for name in TISSUES]) * np.asarray(acquisition.tissue_gain)


def render_acquisition(subject: Subject, acquisition: Acquisition) -> tuple[sitk.Image, sitk.Image]:
    """Render the image (int16) and label map (uint8) of one acquisition, both on its grid."""
    grid = acquisition.grid
    nx, ny, nz = grid.size
    supersampling = acquisition.supersampling
    intensities = tissue_intensities(acquisition)

    signal = np.empty((nz, ny, nx), dtype=np.float64)
    labels = np.empty((nz, ny, nx), dtype=np.uint8)
    world_centres = np.empty((nz, ny, nx, 3), dtype=np.float64)
    slices_per_chunk = max(1, MAX_POINTS_PER_CHUNK // (nx * ny * supersampling))
    for first in range(0, nz, slices_per_chunk):
        chunk = range(first, min(nz, first + slices_per_chunk))
        points = np.stack([grid.slice_points(k, supersampling) for k in chunk])
        tissue, label = evaluate_model(subject, points.reshape(-1, 3))
        tissue = tissue.reshape(len(chunk), ny, nx, supersampling)
        label = label.reshape(len(chunk), ny, nx, supersampling)
        signal[chunk.start:chunk.stop] = intensities[tissue].mean(axis=-1)
        labels[chunk.start:chunk.stop] = _majority_label(label)
        world_centres[chunk.start:chunk.stop] = points.mean(axis=3)

    # In-plane point spread only: the slice profile is already in the supersampling.
    signal = gaussian_filter(signal, sigma=(0.0, IN_PLANE_PSF_SIGMA_VOXELS, IN_PLANE_PSF_SIGMA_VOXELS))
    signal *= artifacts.bias_field(world_centres, grid.center, np.asarray(acquisition.bias_coefficients))
    rng = np.random.default_rng(acquisition.noise_seed)
    signal = artifacts.add_rician_noise(signal, acquisition.noise_sigma, rng)

    pixels = np.clip(np.rint(signal * INTENSITY_SCALE), 0, np.iinfo(np.int16).max).astype(np.int16)
    image = grid.apply_to(sitk.GetImageFromArray(pixels))
    label_image = grid.apply_to(sitk.GetImageFromArray(labels))
    return image, label_image


def _majority_label(labels: np.ndarray) -> np.ndarray:
    """Return the most frequent label along the last axis, the lower label value on ties."""
    counts = np.stack([(labels == value).sum(axis=-1) for value in range(len(LABELS))], axis=-1)
    return counts.argmax(axis=-1).astype(np.uint8)


__all__ = ["Acquisition", "CONTRASTS", "SIZES", "TISSUE", "render_acquisition", "sample_acquisition"]
