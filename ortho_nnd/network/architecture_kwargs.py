"""Validation of the ``architecture.kwargs`` of a view's plans for the diffusion UNet.

``validate_architecture_kwargs`` checks every key of the plans' architecture entry and returns
a normalised copy: scalar kernel sizes and strides become per-axis lists of three ints, lists
become plain Python lists, and defaults are filled in for the optional keys. All user errors
raise ``ValueError`` naming the key, the value and the fix.

Conventions (shared with ``dynamic_network_architectures``): ``features_per_stage``,
``kernel_sizes`` and ``strides`` have one entry per resolution stage, stage 0 is full
resolution and has stride 1, and ``strides[s]`` is the downsampling from stage s-1 to s.
``n_blocks_per_stage_decoder[s]`` is the block count of decoder stage ``dec{s}``, which works at
the resolution of encoder stage s. NOTE: ``dynamic_network_architectures`` orders its
``n_conv_per_stage_decoder`` from the bottleneck upwards, but here the order follows
``features_per_stage`` (finest resolution first).
"""
from __future__ import annotations

import copy
import numbers
from typing import Any

from torch import nn
from dynamic_network_architectures.building_blocks.helper import maybe_convert_scalar_to_list

# Spatial dimensions of every network in ortho_nnd (3D volumes, canonical Z, Y, X order).
SPATIAL_DIMS = 3

# The normalisation layers the residual blocks support.
SUPPORTED_NORMS = ("instance", "group")

REQUIRED_KEYS = (
    "in_channels",
    "out_channels",
    "features_per_stage",
    "kernel_sizes",
    "strides",
    "n_blocks_per_stage",
    "n_blocks_per_stage_decoder",
)

# Optional keys and their defaults. attention_stages defaults to attention at the bottleneck only.
OPTIONAL_DEFAULTS: dict[str, Any] = {
    "attention_stages": None,
    "attention_heads": 4,
    "time_embed_dim": 128,
    "norm": "instance",
    "dropout": 0.0,
}

# Keys whose difference changes the parameter shapes or the wiring of the network.
# in_channels, out_channels and dropout are not in this list because a checkpoint can still be
# loaded when they differ (first conv adapted, output head left fresh, dropout has no weights).
TOPOLOGY_KEYS = (
    "features_per_stage",
    "kernel_sizes",
    "strides",
    "n_blocks_per_stage",
    "n_blocks_per_stage_decoder",
    "attention_stages",
    "attention_heads",
    "time_embed_dim",
    "norm",
)


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0


def _positive_int(kwargs: dict, key: str) -> int:
    value = kwargs[key]
    if not _is_positive_int(value):
        raise ValueError(f"architecture kwarg '{key}' must be a positive integer, got {value!r}.")
    return int(value)


def _int_list(kwargs: dict, key: str, length: int, minimum: int) -> list[int]:
    value = kwargs[key]
    if not isinstance(value, (list, tuple)) or len(value) != length:
        raise ValueError(
            f"architecture kwarg '{key}' must be a list of {length} integers "
            f"(one per stage), got {value!r}."
        )
    for item in value:
        valid_int = isinstance(item, numbers.Integral) and not isinstance(item, bool)
        if not valid_int or item < minimum:
            raise ValueError(
                f"architecture kwarg '{key}' must contain integers >= {minimum}, got {value!r}."
            )
    return [int(item) for item in value]


def _per_axis_list(kwargs: dict, key: str, n_stages: int) -> list[list[int]]:
    value = kwargs[key]
    if not isinstance(value, (list, tuple)) or len(value) != n_stages:
        raise ValueError(
            f"architecture kwarg '{key}' must have one entry per stage ({n_stages} stages, "
            f"from features_per_stage), got {value!r}."
        )

    result = []
    for stage, entry in enumerate(value):
        per_axis = maybe_convert_scalar_to_list(nn.Conv3d, entry)
        if len(per_axis) != SPATIAL_DIMS or not all(_is_positive_int(item) for item in per_axis):
            raise ValueError(
                f"architecture kwarg '{key}' stage {stage} must be a positive integer or a list "
                f"of {SPATIAL_DIMS} positive integers (one per canonical axis), got {entry!r}."
            )
        result.append([int(item) for item in per_axis])
    return result


def validate_architecture_kwargs(kwargs: dict) -> dict:
    """Check the diffusion UNet kwargs and return a normalised, JSON-compatible copy.

    Raises ValueError for a missing or unknown key or a length that does not match the number
    of stages. It also raises for a non-positive size, an even kernel size, a stage-0 stride
    other than 1, and a head count that does not divide the channels of an attention stage.
    """
    if not isinstance(kwargs, dict):
        raise ValueError(f"architecture kwargs must be a dict, got {type(kwargs).__name__}.")

    missing = [key for key in REQUIRED_KEYS if key not in kwargs]
    if missing:
        raise ValueError(f"architecture kwargs are missing required keys {missing}.")
    unknown = sorted(set(kwargs) - set(REQUIRED_KEYS) - set(OPTIONAL_DEFAULTS))
    if unknown:
        raise ValueError(
            f"architecture kwargs contain unknown keys {unknown}; "
            f"allowed keys are {list(REQUIRED_KEYS) + list(OPTIONAL_DEFAULTS)}."
        )

    result = copy.deepcopy(OPTIONAL_DEFAULTS)
    result.update(copy.deepcopy(kwargs))

    # Channels and stage count.
    result["in_channels"] = _positive_int(result, "in_channels")
    result["out_channels"] = _positive_int(result, "out_channels")
    features = result["features_per_stage"]
    if not isinstance(features, (list, tuple)) or len(features) < 2:
        raise ValueError(
            "architecture kwarg 'features_per_stage' must list at least 2 stages "
            f"(one encoder stage and the bottleneck), got {features!r}."
        )
    n_stages = len(features)
    result["features_per_stage"] = _int_list(result, "features_per_stage", n_stages, minimum=1)

    # Per-axis kernel sizes and strides.
    kernel_sizes = _per_axis_list(result, "kernel_sizes", n_stages)
    for stage, kernel in enumerate(kernel_sizes):
        if any(size % 2 == 0 for size in kernel):
            raise ValueError(
                f"architecture kwarg 'kernel_sizes' stage {stage} is {kernel}; kernel sizes must "
                "be odd so that 'same' padding keeps the feature map size."
            )
    result["kernel_sizes"] = kernel_sizes

    strides = _per_axis_list(result, "strides", n_stages)
    if strides[0] != [1] * SPATIAL_DIMS:
        raise ValueError(
            f"architecture kwarg 'strides' stage 0 must be {[1] * SPATIAL_DIMS} (full resolution), "
            f"got {strides[0]}."
        )
    result["strides"] = strides

    # Block counts.
    result["n_blocks_per_stage"] = _int_list(result, "n_blocks_per_stage", n_stages, minimum=1)
    result["n_blocks_per_stage_decoder"] = _int_list(
        result, "n_blocks_per_stage_decoder", n_stages - 1, minimum=1
    )

    # Attention.
    attention = result["attention_stages"]
    if attention is None:
        attention = [False] * (n_stages - 1) + [True]
    if (
        not isinstance(attention, (list, tuple))
        or len(attention) != n_stages
        or not all(isinstance(flag, bool) for flag in attention)
    ):
        raise ValueError(
            f"architecture kwarg 'attention_stages' must be a list of {n_stages} booleans, "
            f"got {attention!r}."
        )
    result["attention_stages"] = list(attention)
    heads = _positive_int(result, "attention_heads")
    for stage, flag in enumerate(attention):
        if flag and result["features_per_stage"][stage] % heads != 0:
            raise ValueError(
                f"attention_heads={heads} does not divide features_per_stage[{stage}]="
                f"{result['features_per_stage'][stage]}; choose a head count that divides the "
                "channels of every attention stage."
            )

    # Time embedding, normalisation and dropout.
    time_embed_dim = _positive_int(result, "time_embed_dim")
    if time_embed_dim % 2 != 0:
        raise ValueError(
            f"architecture kwarg 'time_embed_dim' must be even (sine and cosine halves), "
            f"got {time_embed_dim}."
        )
    if result["norm"] not in SUPPORTED_NORMS:
        raise ValueError(
            f"architecture kwarg 'norm' must be one of {SUPPORTED_NORMS}, got {result['norm']!r}."
        )
    dropout = result["dropout"]
    if not isinstance(dropout, numbers.Real) or isinstance(dropout, bool) or not 0 <= dropout < 1:
        raise ValueError(f"architecture kwarg 'dropout' must be a number in [0, 1), got {dropout!r}.")
    result["dropout"] = float(dropout)

    return result


def cumulative_strides(strides: list[list[int]]) -> list[tuple[int, ...]]:
    """Return, per stage, the total downsampling factor per axis relative to the input."""
    totals = []
    current = [1] * SPATIAL_DIMS
    for stage_strides in strides:
        current = [total * stride for total, stride in zip(current, stage_strides)]
        totals.append(tuple(current))
    return totals
