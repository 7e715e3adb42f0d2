"""Analytic estimate of the training memory of the diffusion UNet, for the planner.

The estimate adds:

1. activations saved for backward, counted per module from the feature-map sizes (the counts
   below follow which tensors PyTorch autograd keeps for each op of ``residual.py``,
   ``attention.py`` and ``diffusion_unet.py``);
2. attention score matrices, heads * N^2 per sample at each attention stage (N = voxels);
3. transient gradient buffers during backward;
4. parameters, gradients, AdamW moments, the EMA shadow and autocast weight copies.

Rule for item 1: each module counts the tensors saved from its input onwards but not its
output, because the module that consumes the output counts it. Tensors that share storage
(views, the same tensor saved by two ops) are counted once.

NOTE: the activation counts were checked against the saved tensors of a float32 CPU run
(``tests/test_network.py``). Under autocast, norm layers may keep float32 inputs, and fused
attention kernels (flash / memory-efficient) store no score matrix, so on a GPU item 2 is an
upper bound. The CUDA context and allocator fragmentation are not included, so the planner
needs its own margin.
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ortho_nnd.network.architecture_kwargs import SPATIAL_DIMS, cumulative_strides, validate_architecture_kwargs

# Tensors saved by one TimeResidualBlock, in units of feature maps:
# norm1 input, SiLU input (norm1 output), conv1 input (SiLU output) at the input width ...
RESBLOCK_MAPS_PER_INPUT_CHANNEL = 3
# ... and norm2 input, modulation-multiply input (norm2 output), SiLU input, conv2 input at the
# output width.
RESBLOCK_MAPS_PER_OUTPUT_CHANNEL = 4
# With dropout > 0: the dropout output (activation dtype) plus its boolean mask (1 byte).
DROPOUT_MAPS = 1
DROPOUT_MASK_BYTES = 1

# SelfAttention3d: norm input, qkv-conv input, qkv output (3 maps), attention output, and the
# contiguous copy that the output projection reads.
ATTENTION_MAPS = 7

# OutputHead: norm input, SiLU input, conv input. The loss keeps the prediction and the target.
OUTPUT_HEAD_MAPS = 3
LOSS_MAPS_PER_OUTPUT_CHANNEL = 2

# During backward, the incoming and outgoing gradients of a module and the conv workspace exist
# next to the saved tensors. This many copies of the largest activation map cover them.
TRANSIENT_LARGEST_MAPS = 4

# Bytes per parameter kept in float32: weights, gradients, AdamW exp_avg and exp_avg_sq.
FP32_BYTES = 4
PARAMETER_COPIES = 4
# The EMA shadow (pretraining) is one more float32 copy.
EMA_COPIES = 1


@dataclass(frozen=True)
class MemoryEstimate:
    """Training memory estimate in bytes, split by origin."""

    activation_bytes: int
    attention_score_bytes: int
    transient_bytes: int
    parameter_state_bytes: int
    parameter_count: int

    @property
    def total_bytes(self) -> int:
        return self.activation_bytes + self.attention_score_bytes + self.transient_bytes + self.parameter_state_bytes


def count_parameters(arch_kwargs: dict) -> int:
    """Return the exact parameter count, building the network on the meta device (no memory)."""
    return _count_parameters_cached(json.dumps(arch_kwargs, sort_keys=True))


@functools.lru_cache(maxsize=256)
def _count_parameters_cached(arch_json: str) -> int:
    # Cached because the planner evaluates many patch sizes for the same architecture.
    from ortho_nnd.network.diffusion_unet import DiffusionUNet

    with torch.device("meta"):
        network = DiffusionUNet(**json.loads(arch_json))
    return sum(param.numel() for param in network.parameters())


def _resblock_elements(in_channels: int, out_channels: int, voxels: int, dropout: bool) -> tuple[int, int]:
    """Return (activation-dtype elements, mask bytes) saved by one residual block per sample."""
    elements = (RESBLOCK_MAPS_PER_INPUT_CHANNEL * in_channels + RESBLOCK_MAPS_PER_OUTPUT_CHANNEL * out_channels) * voxels
    mask_bytes = 0
    if dropout:
        elements += DROPOUT_MAPS * out_channels * voxels
        mask_bytes = DROPOUT_MASK_BYTES * out_channels * voxels
    return elements, mask_bytes


def stage_voxels(arch_kwargs: dict, patch_size: Sequence[int]) -> list[int]:
    """Return the voxel count of every stage for ``patch_size`` (ValueError if not divisible)."""
    arch = validate_architecture_kwargs(arch_kwargs)
    patch_size = [int(size) for size in patch_size]
    totals = cumulative_strides(arch["strides"])
    if len(patch_size) != SPATIAL_DIMS or any(size <= 0 for size in patch_size):
        raise ValueError(f"patch_size must be {SPATIAL_DIMS} positive integers, got {patch_size}.")
    if any(size % div for size, div in zip(patch_size, totals[-1])):
        raise ValueError(
            f"patch_size {patch_size} is not divisible by the cumulative strides {list(totals[-1])}."
        )
    return [math.prod(size // div for size, div in zip(patch_size, total)) for total in totals]


def estimate_training_memory(
    arch_kwargs: dict,
    patch_size: Sequence[int],
    batch_size: int,
    dtype_bytes: int = 2,
    include_ema: bool = True,
) -> MemoryEstimate:
    """Estimate the training memory of one optimiser step, split as in the module docstring."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    arch = validate_architecture_kwargs(arch_kwargs)
    voxels = stage_voxels(arch, patch_size)
    features = arch["features_per_stage"]
    n_stages = len(features)
    dropout = arch["dropout"] > 0

    elements = 0
    mask_bytes = 0
    score_elements = 0

    # Encoder: input conv input, residual blocks, attention.
    for stage in range(n_stages):
        conv_input_channels = arch["in_channels"] if stage == 0 else features[stage - 1]
        conv_input_voxels = voxels[0] if stage == 0 else voxels[stage - 1]
        elements += conv_input_channels * conv_input_voxels
        for _ in range(arch["n_blocks_per_stage"][stage]):
            block_elements, block_mask = _resblock_elements(features[stage], features[stage], voxels[stage], dropout)
            elements += block_elements
            mask_bytes += block_mask
        if arch["attention_stages"][stage]:
            elements += ATTENTION_MAPS * features[stage] * voxels[stage]
            score_elements += arch["attention_heads"] * voxels[stage] ** 2

    # Decoder: transposed-conv input (the coarser stage output) and residual blocks. The first
    # block reads the concatenation of upsampled features and skip (2 * C channels).
    for stage in range(n_stages - 1):
        elements += features[stage + 1] * voxels[stage + 1]
        for index in range(arch["n_blocks_per_stage_decoder"][stage]):
            in_channels = 2 * features[stage] if index == 0 else features[stage]
            block_elements, block_mask = _resblock_elements(in_channels, features[stage], voxels[stage], dropout)
            elements += block_elements
            mask_bytes += block_mask

    # Output head and loss.
    elements += OUTPUT_HEAD_MAPS * features[0] * voxels[0]
    elements += LOSS_MAPS_PER_OUTPUT_CHANNEL * arch["out_channels"] * voxels[0]

    largest_map = max(
        [2 * features[stage] * voxels[stage] for stage in range(n_stages - 1)] + [features[-1] * voxels[-1]]
    )

    parameter_count = count_parameters(arch)
    copies = PARAMETER_COPIES + (EMA_COPIES if include_ema else 0)
    parameter_bytes = parameter_count * copies * FP32_BYTES
    if dtype_bytes < FP32_BYTES:
        # Autocast keeps a low-precision copy of each weight for the step.
        parameter_bytes += parameter_count * dtype_bytes

    return MemoryEstimate(
        activation_bytes=batch_size * (elements * dtype_bytes + mask_bytes),
        attention_score_bytes=batch_size * score_elements * dtype_bytes,
        transient_bytes=batch_size * TRANSIENT_LARGEST_MAPS * largest_map * dtype_bytes,
        parameter_state_bytes=parameter_bytes,
        parameter_count=parameter_count,
    )


def estimate_training_memory_bytes(
    arch_kwargs: dict, patch_size: Sequence[int], batch_size: int, dtype_bytes: int = 2
) -> int:
    """Return the estimated training memory in bytes (``estimate_training_memory(...).total_bytes``)."""
    return estimate_training_memory(arch_kwargs, patch_size, batch_size, dtype_bytes).total_bytes
