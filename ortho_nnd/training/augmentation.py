"""Segmentation data augmentation with batchgeneratorsv2 transforms.

Public API:

- ``is_anisotropic(spacing) -> bool``: the through-plane spacing (canonical axis 0) is more than
  ``ANISOTROPY_RATIO`` times the finest in-plane spacing.
- ``sampling_patch_size(patch_size, spacing) -> list[int]``: the larger patch to crop from a scan
  before augmentation. The spatial transform centre-crops ``patch_size`` from it.
- ``build_segmentation_transforms(patch_size, spacing, mirror_axes, deep_supervision_scales)``
  returns a ``ComposeTransforms`` working on one sample ``{"image": (C, Z, Y, X), "segmentation":
  (1, Z, Y, X)}``.
- ``SegmentationBatchAugmentation(...)``: callable ``(**batch) -> batch`` for
  ``make_batch_iterator(transform=...)``. It augments every sample of a ``PatchDataLoader``
  batch and replaces ``target`` by a list of targets, one per deep-supervision scale.

Transforms, in the order of nnU-Net's default pipeline: rotation and scaling (for anisotropic
patches only around the through-plane axis and only in-plane), Gaussian noise, Gaussian blur,
multiplicative brightness, contrast, low-resolution simulation (in-plane only when
anisotropic), gamma (with and without inversion), mirroring along the plans' ``mirror_axes``
only, and nearest-neighbour downsampling of the target for deep supervision.

The transforms draw from NumPy's and torch's global generators, which the trainer seeds (and
each background worker seeds from the run seed), so runs are repeatable but, unlike the patch
sampling, not bitwise identical across continued runs.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import numpy as np
import torch
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform

logger = logging.getLogger(__name__)

# Through-plane / in-plane spacing ratio above which a patch counts as anisotropic (nnU-Net's
# threshold for switching to in-plane-only spatial augmentation).
ANISOTROPY_RATIO = 3.0

# Augmentation ranges and probabilities, as in nnU-Net's default training pipeline.
ROTATION_DEGREES = 30.0
SCALING_RANGE = (0.7, 1.4)
P_ROTATION = 0.2
P_SCALING = 0.2
P_NOISE = 0.1
NOISE_VARIANCE = (0.0, 0.1)
P_BLUR = 0.2
BLUR_SIGMA = (0.5, 1.0)
P_BRIGHTNESS = 0.15
BRIGHTNESS_RANGE = (0.75, 1.25)
P_CONTRAST = 0.15
CONTRAST_RANGE = (0.75, 1.25)
P_LOW_RESOLUTION = 0.25
LOW_RESOLUTION_SCALE = (0.5, 1.0)
P_GAMMA_INVERTED = 0.1
P_GAMMA = 0.3
GAMMA_RANGE = (0.7, 1.5)


def is_anisotropic(spacing: Sequence[float]) -> bool:
    """Return True when canonical axis 0 (through-plane) is much coarser than the in-plane axes."""
    spacing = [float(value) for value in spacing]
    return spacing[0] > ANISOTROPY_RATIO * min(spacing[1:])


class _InPlaneAngle:
    """Rotation angle sampler: a random angle about axis 0 (in-plane rotation), 0 about axes 1 and 2."""

    def __init__(self, max_radians: float) -> None:
        self.max_radians = max_radians

    def __call__(self, image=None, dim=None, **kwargs) -> float:
        return float(np.random.uniform(-self.max_radians, self.max_radians)) if dim == 0 else 0.0


class _InPlaneScale:
    """Scaling sampler: 1 along axis 0, one shared random factor for axes 1 and 2.

    SpatialTransform (batchgeneratorsv2 0.3.6) samples the factors of axes 0, 1, 2 in that order,
    so the factor drawn for axis 1 is reused for axis 2.
    """

    def __init__(self, scaling_range: tuple[float, float]) -> None:
        self.scaling_range = scaling_range
        self._last = 1.0

    def __call__(self, image=None, dim=None, **kwargs) -> float:
        if dim == 0:
            return 1.0
        if dim == 1:
            self._last = float(np.random.uniform(*self.scaling_range))
        return self._last


def build_segmentation_transforms(
    patch_size: Sequence[int],
    spacing: Sequence[float],
    mirror_axes: Sequence[int],
    deep_supervision_scales: Sequence[Sequence[float]] | None,
) -> ComposeTransforms:
    """Return the per-sample augmentation pipeline for one view's patches."""
    anisotropic = is_anisotropic(spacing)
    max_radians = math.radians(ROTATION_DEGREES)
    if anisotropic:
        rotation, scaling, synchronize_scaling = _InPlaneAngle(max_radians), _InPlaneScale(SCALING_RANGE), 0.0
        low_resolution_ignore_axes: tuple[int, ...] | None = (0,)
    else:
        rotation, scaling, synchronize_scaling = (-max_radians, max_radians), SCALING_RANGE, 1.0
        low_resolution_ignore_axes = None
    logger.info("Spatial augmentation for spacing %s: %s", list(spacing), "in-plane only (anisotropic)" if anisotropic else "3D")

    transforms = [
        SpatialTransform(
            tuple(int(p) for p in patch_size),
            patch_center_dist_from_border=0,
            random_crop=False,
            p_elastic_deform=0,
            p_rotation=P_ROTATION,
            rotation=rotation,
            p_scaling=P_SCALING,
            scaling=scaling,
            p_synchronize_scaling_across_axes=synchronize_scaling,
            bg_style_seg_sampling=False,
        ),
        RandomTransform(GaussianNoiseTransform(noise_variance=NOISE_VARIANCE, p_per_channel=1, synchronize_channels=True), P_NOISE),
        RandomTransform(GaussianBlurTransform(blur_sigma=BLUR_SIGMA, synchronize_channels=False, synchronize_axes=False, p_per_channel=0.5), P_BLUR),
        RandomTransform(MultiplicativeBrightnessTransform(multiplier_range=BGContrast(BRIGHTNESS_RANGE), synchronize_channels=False, p_per_channel=1), P_BRIGHTNESS),
        RandomTransform(ContrastTransform(contrast_range=BGContrast(CONTRAST_RANGE), preserve_range=True, synchronize_channels=False, p_per_channel=1), P_CONTRAST),
        RandomTransform(
            SimulateLowResolutionTransform(
                scale=LOW_RESOLUTION_SCALE, synchronize_channels=False, synchronize_axes=True,
                ignore_axes=low_resolution_ignore_axes, allowed_channels=None, p_per_channel=0.5,
            ),
            P_LOW_RESOLUTION,
        ),
        RandomTransform(GammaTransform(gamma=BGContrast(GAMMA_RANGE), p_invert_image=1, synchronize_channels=False, p_per_channel=1, p_retain_stats=1), P_GAMMA_INVERTED),
        RandomTransform(GammaTransform(gamma=BGContrast(GAMMA_RANGE), p_invert_image=0, synchronize_channels=False, p_per_channel=1, p_retain_stats=1), P_GAMMA),
    ]
    if mirror_axes:
        transforms.append(MirrorTransform(allowed_axes=tuple(int(axis) for axis in mirror_axes)))
    if deep_supervision_scales is not None:
        transforms.append(DownsampleSegForDSTransform(ds_scales=[list(scale) for scale in deep_supervision_scales]))
    return ComposeTransforms(transforms)


def sampling_patch_size(patch_size: Sequence[int], spacing: Sequence[float]) -> list[int]:
    """Return the patch size to crop before augmentation, so that rotated and scaled patches stay filled.

    SpatialTransform centre-crops ``patch_size`` from it. Along each axis that rotation and scaling
    touch, the factor is (cos + sin of the largest angle) x the largest scale factor, which covers
    a rotation about one axis. NOTE: combined rotations about several axes (3D case) can still
    reach slightly outside this box near the corners.
    """
    angle = math.radians(ROTATION_DEGREES)
    factor = (abs(math.cos(angle)) + abs(math.sin(angle))) * SCALING_RANGE[1]
    augmented_axes = (1, 2) if is_anisotropic(spacing) else (0, 1, 2)
    return [math.ceil(int(size) * factor) if axis in augmented_axes else int(size) for axis, size in enumerate(patch_size)]


def deep_supervision_scales(output_strides: Sequence[Sequence[int]]) -> list[list[float]]:
    """Turn per-output cumulative strides ((1,1,1), (1,2,2), ...) into target scale factors."""
    return [[1.0 / stride for stride in strides] for strides in output_strides]


class SegmentationBatchAugmentation:
    """Batch transform for ``make_batch_iterator``: augments each sample of ``{"data", "target", "keys"}``.

    Returns ``data`` (B, 1, Z, Y, X) float32 and ``target``: a list with one (B, 1, ...) int16
    tensor per deep-supervision scale (a single-element list without deep supervision).
    """

    def __init__(
        self,
        patch_size: Sequence[int],
        spacing: Sequence[float],
        mirror_axes: Sequence[int],
        deep_supervision_scales: Sequence[Sequence[float]] | None,
        enabled: bool = True,
    ) -> None:
        self.deep_supervision_scales = [list(scale) for scale in deep_supervision_scales] if deep_supervision_scales else [[1.0, 1.0, 1.0]]
        if enabled:
            self.transforms = build_segmentation_transforms(patch_size, spacing, mirror_axes, self.deep_supervision_scales)
        else:
            self.transforms = ComposeTransforms([DownsampleSegForDSTransform(ds_scales=self.deep_supervision_scales)])

    def __call__(self, **batch: Any) -> dict[str, Any]:
        images, targets = [], []
        for sample in range(batch["data"].shape[0]):
            result = self.transforms(image=batch["data"][sample].float(), segmentation=batch["target"][sample].to(torch.int16))
            images.append(result["image"])
            targets.append(result["segmentation"])

        batch["data"] = torch.stack(images).float()
        batch["target"] = [torch.stack([sample_targets[scale] for sample_targets in targets]) for scale in range(len(targets[0]))]
        return batch
