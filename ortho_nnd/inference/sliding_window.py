"""Sliding-window prediction over a preprocessed volume with Gaussian weighting and mirroring.

Public API:

- ``predict_sliding_window(network_fn, data, patch_size, num_classes, ...) -> torch.Tensor``
  returns per-class softmax probabilities with shape ``(num_classes, Z, Y, X)`` (float32, CPU).
- ``compute_gaussian_importance_map(patch_size, sigma_scale)`` returns the weight map used to
  blend overlapping windows.
- ``compute_window_starts(image_size, patch_size, step_size)`` returns the window start indices
  per axis.

Combination rule: the softmax probabilities (not the logits) are averaged over the mirror
combinations of each window, and the windows are blended with the Gaussian map as weights:
``probabilities[v] = sum_w g_w[v] * p_w[v] / sum_w g_w[v]``. The result is therefore a valid
probability distribution at every voxel, and fold ensembles can average these outputs directly.

The computation is deterministic for a deterministic ``network_fn``: windows are processed in a
fixed order and summed in that order.
"""
from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

logger = logging.getLogger(__name__)

# Standard deviation of the Gaussian importance map relative to the patch edge length, as in
# nnU-Net: voxels at the window border get about exp(-8) of the centre weight per axis.
DEFAULT_SIGMA_SCALE = 1.0 / 8.0

# Smallest number of windows per network call on the CPU. PyTorch (checked with 2.14) runs a
# CPU conv3d through oneDNN only when the batch has more than one sample or the input is large.
# Single small windows fall back to its native slow_conv3d, which took about 3 times longer per
# window on a 2-core Xeon (benchmarks/network_timing.py: window_seconds against
# window_in_pair_seconds). Two windows per call double the activation memory of one patch.
CPU_MIN_WINDOW_BATCH = 2

# Value that padding voxels get. Inputs are normalised (z-score for MRI), so 0 is the mean
# intensity, which is also what the training data augmentation pads with.
PADDING_VALUE = 0.0


def compute_gaussian_importance_map(
    patch_size: Sequence[int],
    sigma_scale: float = DEFAULT_SIGMA_SCALE,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Build a separable Gaussian weight map of shape ``patch_size`` with maximum 1.

    The centre lies at ``(size - 1) / 2`` per axis, so the map is mirror-symmetric along every
    axis. Values that underflow to zero are raised to the smallest positive value of the map,
    so every voxel of every window contributes a positive weight and the blending never divides
    by zero.
    """
    patch_size = [int(size) for size in patch_size]
    if any(size < 1 for size in patch_size):
        raise ValueError(f"Invalid patch size {patch_size}: every axis needs at least 1 voxel.")
    if not sigma_scale > 0:
        raise ValueError(f"Invalid sigma_scale {sigma_scale}: it must be positive (default {DEFAULT_SIGMA_SCALE}).")

    gaussian = torch.ones((), dtype=torch.float64)
    for size in patch_size:
        coordinates = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
        sigma = size * sigma_scale
        profile = torch.exp(-0.5 * (coordinates / sigma) ** 2)
        gaussian = gaussian.unsqueeze(-1) * profile

    gaussian = gaussian / gaussian.max()
    gaussian = gaussian.to(dtype)

    positive = gaussian[gaussian > 0]
    gaussian = torch.clamp(gaussian, min=float(positive.min()))
    return gaussian.to(device)


def compute_window_starts(
    image_size: Sequence[int], patch_size: Sequence[int], step_size: float
) -> list[list[int]]:
    """Return, per axis, the start indices of windows that tile ``image_size`` completely.

    The distance between neighbouring starts is at most ``floor(step_size * patch)`` voxels
    (at least 1). The first window starts at 0 and the last one ends at the image border, and the
    windows in between are spread evenly. ``image_size`` must be at least ``patch_size`` on every
    axis, which ``predict_sliding_window`` ensures by padding.
    """
    if not 0 < step_size <= 1:
        raise ValueError(f"Invalid step_size {step_size}: it must be in (0, 1] (a fraction of the patch size).")
    if len(image_size) != len(patch_size):
        raise ValueError(f"Image size {list(image_size)} and patch size {list(patch_size)} have different dimensions.")

    starts_per_axis = []
    for size, patch in zip(image_size, patch_size):
        if size < patch:
            raise ValueError(f"Image size {list(image_size)} is smaller than the patch size {list(patch_size)}; pad it first.")

        max_step = max(1, int(np.floor(step_size * patch)))
        span = size - patch
        num_windows = int(np.ceil(span / max_step)) + 1

        if num_windows == 1:
            starts_per_axis.append([0])
            continue

        # The actual step span / (n - 1) is at most max_step, an integer, so rounding keeps every
        # distance between neighbouring starts at most max_step.
        actual_step = span / (num_windows - 1)
        starts_per_axis.append([int(np.round(actual_step * index)) for index in range(num_windows)])
    return starts_per_axis


def _mirror_combinations(mirror_axes: Sequence[int], num_spatial_axes: int) -> list[tuple[int, ...]]:
    """Return every subset of ``mirror_axes`` (the empty one first) as tensor dims of a batch."""
    axes = sorted({int(axis) for axis in mirror_axes})
    for axis in axes:
        if not 0 <= axis < num_spatial_axes:
            raise ValueError(
                f"Invalid mirror axis {axis}: spatial axes are 0..{num_spatial_axes - 1} of the (Z, Y, X) array."
            )

    # Batches are (B, C, spatial...), so spatial axis a is tensor dim a + 2.
    combinations = []
    for count in range(len(axes) + 1):
        for subset in itertools.combinations(axes, count):
            combinations.append(tuple(axis + 2 for axis in subset))
    return combinations


def _full_resolution_logits(output) -> torch.Tensor:
    """Take the full-resolution output of a deep-supervision network (the first list element)."""
    if isinstance(output, (list, tuple)):
        if len(output) == 0:
            raise ValueError("The network returned an empty list of outputs.")
        return output[0]
    return output


def _predict_window_batch(
    network_fn: Callable,
    batch: torch.Tensor,
    num_classes: int,
    mirror_dims: list[tuple[int, ...]],
    autocast,
) -> torch.Tensor:
    """Return the softmax probabilities of one batch of windows, averaged over the mirror set."""
    summed = None
    for dims in mirror_dims:
        flipped = torch.flip(batch, dims) if dims else batch
        with autocast:
            logits = _full_resolution_logits(network_fn(flipped))

        if logits.shape[1] != num_classes or logits.shape[2:] != batch.shape[2:]:
            raise ValueError(
                f"The network returned logits of shape {tuple(logits.shape)} for a window of shape "
                f"{tuple(batch.shape)}; expected {num_classes} channels at the window size."
            )

        probabilities = F.softmax(logits.float(), dim=1)
        if dims:
            probabilities = torch.flip(probabilities, dims)
        summed = probabilities if summed is None else summed + probabilities
    return summed / len(mirror_dims)


def _pad_to_patch_size(data: torch.Tensor, patch_size: Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Pad ``data`` (C, spatial...) symmetrically up to ``patch_size`` where it is smaller.

    Returns the padded tensor and the slices that select the original region in it.
    """
    spatial = data.shape[1:]
    before = [max(0, patch - size) // 2 for size, patch in zip(spatial, patch_size)]
    after = [max(0, patch - size) - b for size, patch, b in zip(spatial, patch_size, before)]
    region = (slice(None),) + tuple(slice(b, b + size) for b, size in zip(before, spatial))
    if not any(before) and not any(after):
        return data, region

    # F.pad lists pads from the last axis backwards.
    pads = []
    for b, a in zip(reversed(before), reversed(after)):
        pads.extend([b, a])
    return F.pad(data, pads, mode="constant", value=PADDING_VALUE), region


def _allocate_accumulators(num_classes: int, spatial: Sequence[int], device: torch.device):
    probabilities = torch.zeros((num_classes, *spatial), dtype=torch.float32, device=device)
    weights = torch.zeros(tuple(spatial), dtype=torch.float32, device=device)
    return probabilities, weights


def predict_sliding_window(
    network_fn: Callable[[torch.Tensor], torch.Tensor | list[torch.Tensor]],
    data: torch.Tensor,
    patch_size: Sequence[int],
    num_classes: int,
    step_size: float = 0.5,
    mirror_axes: Sequence[int] = (),
    gaussian: bool = True,
    device: torch.device | str = "cpu",
    batch_size: int = 1,
    progress: bool = False,
    accumulate_on_device: bool = True,
    sigma_scale: float = DEFAULT_SIGMA_SCALE,
) -> torch.Tensor:
    """Predict per-class probabilities for ``data`` (C, Z, Y, X) window by window.

    ``network_fn(x)`` maps a batch (B, C, *patch_size) to logits (B, num_classes, *patch_size) or
    to a deep-supervision list whose first element is that tensor. It runs under ``torch.no_grad``
    and bf16 autocast on CUDA. ``step_size`` is the maximum distance between window starts as a
    fraction of the patch size. ``mirror_axes`` lists the spatial axes (0 = Z) that test-time
    mirroring may flip, and all their combinations are predicted. With ``gaussian=False`` all
    window voxels get weight 1. Inputs smaller than the patch are padded with ``PADDING_VALUE``
    and the result is cropped back. On the CPU at least ``CPU_MIN_WINDOW_BATCH`` windows go through
    the network per call, even when ``batch_size`` is 1. The result is the same up to float rounding.

    The accumulators live on ``device`` when ``accumulate_on_device`` is true, and they move to
    the CPU with a warning when the device runs out of memory. Returns float32 probabilities of
    shape (num_classes, Z, Y, X) on the CPU.
    """
    if data.ndim < 2:
        raise ValueError(f"Expected data of shape (C, Z, Y, X); got shape {tuple(data.shape)}.")
    patch_size = [int(size) for size in patch_size]
    num_spatial_axes = data.ndim - 1
    if len(patch_size) != num_spatial_axes:
        raise ValueError(
            f"Patch size {patch_size} has {len(patch_size)} axes but the data of shape {tuple(data.shape)} "
            f"has {num_spatial_axes} spatial axes."
        )
    if num_classes < 1:
        raise ValueError(f"Invalid num_classes {num_classes}: it must be at least 1.")
    if batch_size < 1:
        raise ValueError(f"Invalid batch_size {batch_size}: it must be at least 1.")

    device = torch.device(device)
    mirror_dims = _mirror_combinations(mirror_axes, num_spatial_axes)

    padded, region = _pad_to_patch_size(data.float(), patch_size)
    padded_spatial = padded.shape[1:]

    starts = compute_window_starts(padded_spatial, patch_size, step_size)
    windows = [
        tuple(slice(start, start + patch) for start, patch in zip(corner, patch_size))
        for corner in itertools.product(*starts)
    ]

    if gaussian:
        weight_map = compute_gaussian_importance_map(patch_size, sigma_scale, device=device)
    else:
        weight_map = torch.ones(patch_size, dtype=torch.float32, device=device)

    accumulation_device = device if accumulate_on_device else torch.device("cpu")
    try:
        probabilities, weights = _allocate_accumulators(num_classes, padded_spatial, accumulation_device)
    except torch.cuda.OutOfMemoryError:
        logger.warning(
            "Not enough memory on %s for the accumulators of shape %s; accumulating on the CPU instead.",
            device, (num_classes, *padded_spatial),
        )
        accumulation_device = torch.device("cpu")
        probabilities, weights = _allocate_accumulators(num_classes, padded_spatial, accumulation_device)
    weight_map_accumulation = weight_map.to(accumulation_device)

    # Imported here so this module stays importable while the training package is being edited.
    from ortho_nnd.training.device import autocast_context

    autocast = autocast_context(device)
    padded = padded.to(device)
    if device.type == "cpu":
        batch_size = max(batch_size, CPU_MIN_WINDOW_BATCH)
    batches = [windows[index:index + batch_size] for index in range(0, len(windows), batch_size)]
    logger.debug(
        "Sliding window: %d windows of %s over %s, %d mirror combinations.",
        len(windows), patch_size, list(padded_spatial), len(mirror_dims),
    )

    with torch.no_grad():
        for batch_windows in tqdm(batches, desc="windows", disable=not progress, leave=False):
            batch = torch.stack([padded[(slice(None),) + window] for window in batch_windows])
            batch_probabilities = _predict_window_batch(network_fn, batch, num_classes, mirror_dims, autocast)

            batch_probabilities = batch_probabilities.to(accumulation_device)
            for window, window_probabilities in zip(batch_windows, batch_probabilities):
                probabilities[(slice(None),) + window] += window_probabilities * weight_map_accumulation
                weights[window] += weight_map_accumulation

    # Every voxel is covered by at least one window with a positive weight (see
    # compute_window_starts and compute_gaussian_importance_map), so the division is safe.
    probabilities /= weights
    return probabilities[region].cpu()
