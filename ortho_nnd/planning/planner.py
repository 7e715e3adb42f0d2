"""Per-view experiment planning from the dataset fingerprint.

For each view with scans the planner decides, in this order:

1. target spacing: the median spacing per canonical axis. Data are anisotropic when the median
   through-plane spacing exceeds ANISOTROPY_RATIO times the in-plane spacing. Then the
   through-plane target is the THICK_AXIS_PERCENTILE percentile of the through-plane spacings,
   so the few thin-slice scans are not downsampled much, but never finer than the in-plane
   target. A preset's ``min_in_plane_spacing_mm`` coarsens the in-plane target for CPU runs;
2. patch size and topology: start from the median shape after resampling (capped by the
   preset's ``max_patch_size``), derive strides and kernels (see topology.py), and shrink the axis
   with the largest physical extent until the diffusion UNet's training-memory estimate at the
   minimum batch size fits the memory target;
3. batch size: the largest that fits the memory target, capped so that one batch covers at most
   ``max_batch_fraction_of_dataset`` of all voxels, and at least ``min_batch_size``;
4. features per stage (``base_features`` doubling per stage, capped at ``max_features``),
   self-attention at the coarse stages with at most ``attention_max_tokens`` voxels;
5. mirror axes: only the left-right axis, and only when no label name contains left or right,
   because flipping superior-inferior or anterior-posterior creates impossible anatomy;
6. diffusion and training settings from the preset.
"""
from __future__ import annotations

import logging
import math
import re

import numpy as np

from ortho_nnd.geometry import LEFT_RIGHT_ARRAY_AXIS
from ortho_nnd.network.memory import estimate_training_memory_bytes
from ortho_nnd.planning.plans import DEFAULT_PLANS_NAME, ViewPlans
from ortho_nnd.planning.topology import plan_topology
from ortho_nnd.preprocessing.resampling import ANISOTROPY_RATIO, IMAGE_IN_PLANE_ORDER, IMAGE_THROUGH_PLANE_ORDER_ANISOTROPIC, LABEL_ORDER

logger = logging.getLogger(__name__)

PLANNER_VERSION = 1

# Percentile of the through-plane spacings used as target for anisotropic data.
THICK_AXIS_PERCENTILE = 10

# Each patch-reduction step shrinks the chosen axis by at least this fraction.
PATCH_REDUCTION_FRACTION = 0.1

# Memory estimates assume bf16 activations (autocast on CUDA).
ACTIVATION_DTYPE_BYTES = 2

BYTES_PER_GB = 1024**3

NETWORK_CLASS = "ortho_nnd.network.diffusion_unet.DiffusionUNet"

_LATERAL_WORDS = re.compile(r"(^|[^a-z])(left|right)([^a-z]|$)")


class PlanningError(ValueError):
    """Raised when no plan fits the preset's limits."""


def plan_target_spacing(spacings: np.ndarray, preset: dict) -> tuple[list[float], bool]:
    """Return the target spacing (canonical order) and whether the data are anisotropic."""
    median = np.median(spacings, axis=0)
    in_plane = float(min(median[1], median[2]))
    anisotropic = median[0] > ANISOTROPY_RATIO * in_plane
    target = [float(v) for v in median]
    if anisotropic:
        target[0] = float(max(np.percentile(spacings[:, 0], THICK_AXIS_PERCENTILE), in_plane))

    minimum = preset.get("min_in_plane_spacing_mm")
    if minimum:
        target[1] = max(target[1], float(minimum))
        target[2] = max(target[2], float(minimum))
        target[0] = max(target[0], min(target[1], target[2]))
    return target, bool(anisotropic)


def mirror_axes_for(view: str, label_names: list[str]) -> list[int]:
    """Allow mirroring only along the left-right axis, and only when no label is lateralised."""
    lateral = [name for name in label_names if _LATERAL_WORDS.search(name.lower())]
    if lateral:
        logger.info("No mirroring for %s: labels %s depend on left/right.", view, lateral)
        return []
    return [LEFT_RIGHT_ARRAY_AXIS[view]]


def architecture_kwargs(topology, preset: dict, num_voxels_per_stage: list[int]) -> dict:
    stages = topology.num_stages
    features = [min(preset["base_features"] * 2**stage, preset["max_features"]) for stage in range(stages)]
    coarse_stages = set(range(max(1, stages - 2), stages))
    attention = [stage in coarse_stages and num_voxels_per_stage[stage] <= preset["attention_max_tokens"] for stage in range(stages)]
    return {
        "in_channels": 1,
        "out_channels": 1,
        "features_per_stage": features,
        "kernel_sizes": topology.kernel_sizes,
        "strides": topology.strides,
        "n_blocks_per_stage": [preset["n_blocks_first_stage"]] + [preset["n_blocks_per_stage"]] * (stages - 1),
        "n_blocks_per_stage_decoder": [preset["n_blocks_per_stage_decoder"]] * (stages - 1),
        "attention_stages": attention,
        "attention_heads": preset["attention_heads"],
        "time_embed_dim": preset["base_features"] * preset["time_embed_dim_factor"],
        "norm": "instance",
        "dropout": 0.0,
    }


def _stage_voxels(topology) -> list[int]:
    shape = list(topology.patch_size)
    voxels = []
    for stride in topology.strides:
        shape = [s // f for s, f in zip(shape, stride)]
        voxels.append(math.prod(shape))
    return voxels


def _fit_patch(start_patch: list[int], target_spacing: list[float], preset: dict, budget_bytes: float):
    patch = list(start_patch)
    while True:
        topology = plan_topology(patch, target_spacing, preset["max_stages"], preset["min_feature_map_size"])
        arch = architecture_kwargs(topology, preset, _stage_voxels(topology))
        memory = estimate_training_memory_bytes(arch, topology.patch_size, preset["min_batch_size"], ACTIVATION_DTYPE_BYTES)
        if memory <= budget_bytes:
            return topology, arch, memory

        smallest = 2 * preset["min_feature_map_size"]
        extents = [p * s if p > smallest else -1.0 for p, s in zip(topology.patch_size, target_spacing)]
        axis = int(np.argmax(extents))
        if extents[axis] < 0:
            raise PlanningError(
                f"Even a patch of {topology.patch_size} voxels needs {memory / BYTES_PER_GB:.2f} GB, above the memory "
                f"target of {budget_bytes / BYTES_PER_GB:.2f} GB. Raise --gpu_memory_target or pick a preset with fewer features."
            )
        patch = list(topology.patch_size)
        patch[axis] = max(smallest, int(patch[axis] - max(1, round(PATCH_REDUCTION_FRACTION * patch[axis]))))


def plan_view(view: str, view_fingerprint: dict, preset: dict, label_names: list[str], plans_name: str = DEFAULT_PLANS_NAME) -> dict:
    """Return the plans of one view (a JSON-compatible dict validated by ViewPlans)."""
    spacings = np.asarray(view_fingerprint["spacings"], dtype=np.float64)
    target_spacing, anisotropic = plan_target_spacing(spacings, preset)

    cropped_shapes = np.asarray(view_fingerprint["shapes_after_cropping"], dtype=np.float64)
    resampled_shapes = cropped_shapes * spacings / np.asarray(target_spacing)
    median_shape = np.median(resampled_shapes, axis=0)
    # At least two feature-map minima per axis, so the UNet has an encoder stage and a bottleneck.
    smallest = 2 * preset["min_feature_map_size"]
    start_patch = [int(max(smallest, min(m, cap))) for m, cap in zip(np.round(median_shape), preset["max_patch_size"])]

    budget = preset["gpu_memory_target_gb"] * BYTES_PER_GB
    topology, arch, memory = _fit_patch(start_patch, target_spacing, preset, budget)

    # The estimate grows linearly in the batch size: fit the largest batch, then cap it by the dataset size.
    fixed = estimate_training_memory_bytes(arch, topology.patch_size, 1, ACTIVATION_DTYPE_BYTES)
    per_sample = estimate_training_memory_bytes(arch, topology.patch_size, 2, ACTIVATION_DTYPE_BYTES) - fixed
    fitting = int((budget - (fixed - per_sample)) // max(per_sample, 1))
    total_voxels = float(np.sum(np.prod(resampled_shapes, axis=1)))
    cap = int(preset["max_batch_fraction_of_dataset"] * total_voxels // math.prod(topology.patch_size))
    batch_size = max(preset["min_batch_size"], min(fitting, cap))
    memory = estimate_training_memory_bytes(arch, topology.patch_size, batch_size, ACTIVATION_DTYPE_BYTES)

    plans = {
        "view": view,
        "data_identifier": f"{plans_name}_{view}",
        "target_spacing": target_spacing,
        "median_shape_after_resampling": [float(v) for v in median_shape],
        "normalization": "zscore",
        "resampling": {
            "anisotropic_data": anisotropic,
            "anisotropy_ratio": ANISOTROPY_RATIO,
            "image_in_plane_order": IMAGE_IN_PLANE_ORDER,
            "image_through_plane_order_when_anisotropic": IMAGE_THROUGH_PLANE_ORDER_ANISOTROPIC,
            "label_order": LABEL_ORDER,
        },
        "patch_size": [int(v) for v in topology.patch_size],
        "batch_size": int(batch_size),
        "mirror_axes": mirror_axes_for(view, label_names),
        "architecture": {"network_class": NETWORK_CLASS, "kwargs": arch},
        "diffusion": dict(preset["diffusion"]),
        "training": dict(preset["training"]),
        "memory_estimate_gb": round(memory / BYTES_PER_GB, 3),
    }
    ViewPlans.from_dict(plans, f"planner output for {view}")
    logger.info(
        "%s: target spacing %s mm, patch %s, batch %d, %d stages, estimated %.2f GB",
        view, [round(v, 3) for v in target_spacing], plans["patch_size"], batch_size, topology.num_stages, memory / BYTES_PER_GB,
    )
    return plans


# Keys the planner writes; any other top-level key of an existing plans.json is kept on re-planning.
PLANNER_KEYS = ("dataset_name", "plans_name", "preset", "preset_version", "planner_version", "labels", "findings", "labelled_views", "views")


def plan_experiment(fingerprint: dict, preset: dict, dataset_json: dict, plans_name: str = DEFAULT_PLANS_NAME, existing_plans: dict | None = None) -> dict:
    """Plan every view of the fingerprint; keep user-added entries of ``existing_plans``."""
    label_names = [name for name in fingerprint.get("labels", {}) if name != "background"]
    views = {
        view: plan_view(view, view_fingerprint, preset, label_names, plans_name)
        for view, view_fingerprint in fingerprint["views"].items()
    }
    plans = {
        "dataset_name": fingerprint["dataset_name"],
        "plans_name": plans_name,
        "preset": preset["preset_name"],
        "preset_version": preset["preset_version"],
        "planner_version": PLANNER_VERSION,
        "labels": fingerprint.get("labels", {}),
        "findings": list(dataset_json.get("findings", [])),
        "labelled_views": fingerprint.get("labelled_views", []),
        "views": views,
        "user_configurations": {},
    }
    if existing_plans:
        for key, value in existing_plans.items():
            if key not in PLANNER_KEYS:
                plans[key] = value
    return plans
