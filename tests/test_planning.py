"""Planner rules on isotropic and strongly anisotropic fingerprints."""
from __future__ import annotations

import copy

import pytest

from ortho_nnd.network.memory import estimate_training_memory_bytes
from ortho_nnd.planning.planner import ACTIVATION_DTYPE_BYTES, BYTES_PER_GB, PlanningError, mirror_axes_for, plan_experiment, plan_view
from ortho_nnd.planning.plans import ViewPlans
from ortho_nnd.planning.presets import load_preset
from ortho_nnd.planning.topology import plan_topology


def _fingerprint(spacing, shape, count=6) -> dict:
    spacings = [[s * (1 + 0.02 * i) for s in spacing] for i in range(count)]
    return {"spacings": spacings, "shapes_after_cropping": [list(shape)] * count}


def test_anisotropic_thick_axis_not_pooled_early():
    topology = plan_topology([24, 160, 160], [4.0, 0.5, 0.5], max_stages=6, min_feature_map_size=4)

    # 4 mm / 0.5 mm = 8: the in-plane axes are pooled twice (to 2 mm) before the 4 mm slice axis,
    # now within a factor 2 of them, joins at the third downsampling.
    assert topology.strides[1] == [1, 2, 2]
    assert topology.strides[2] == [1, 2, 2]
    assert topology.strides[3] == [2, 2, 2]
    assert topology.kernel_sizes[0] == [1, 3, 3]
    assert topology.kernel_sizes[1] == [1, 3, 3]
    assert topology.kernel_sizes[2] == [3, 3, 3]


def test_isotropic_pooled_on_all_axes():
    topology = plan_topology([64, 64, 64], [1.0, 1.0, 1.0], max_stages=5, min_feature_map_size=4)

    assert all(stride == [2, 2, 2] for stride in topology.strides[1:])
    assert all(kernel == [3, 3, 3] for kernel in topology.kernel_sizes)
    assert topology.num_stages == 5


def test_patch_divisible_by_cumulative_strides():
    topology = plan_topology([23, 150, 131], [3.0, 0.6, 0.6], max_stages=6, min_feature_map_size=4)

    divisor = [1, 1, 1]
    for stride in topology.strides:
        divisor = [d * s for d, s in zip(divisor, stride)]
    assert all(p % d == 0 for p, d in zip(topology.patch_size, divisor))


@pytest.mark.parametrize("spacing,shape", [
    ([1.0, 1.0, 1.0], [160, 160, 160]),
    ([4.0, 0.4, 0.4], [30, 400, 400]),
    ([3.0, 0.6, 0.6], [24, 256, 256]),
])
@pytest.mark.parametrize("memory_gb", [0.3, 2.0])
def test_plan_respects_memory_budget(spacing, shape, memory_gb):
    preset = {**load_preset("default"), "gpu_memory_target_gb": memory_gb}

    plans = plan_view("sagittal", _fingerprint(spacing, shape), preset, ["femur"])

    arch = plans["architecture"]["kwargs"]
    memory = estimate_training_memory_bytes(arch, plans["patch_size"], plans["batch_size"], ACTIVATION_DTYPE_BYTES)
    assert memory <= memory_gb * BYTES_PER_GB
    assert plans["batch_size"] >= preset["min_batch_size"]
    ViewPlans.from_dict(plans)


def test_anisotropic_target_spacing_uses_low_percentile():
    preset = load_preset("default")
    fingerprint = _fingerprint([4.0, 0.4, 0.4], [30, 400, 400])
    fingerprint["spacings"][0] = [1.5, 0.4, 0.4]  # one thin-slice scan among 4 mm scans

    plans = plan_view("sagittal", fingerprint, preset, [])

    assert plans["target_spacing"][0] < 4.0
    assert plans["target_spacing"][0] >= plans["target_spacing"][1]
    assert plans["resampling"]["anisotropic_data"] is True


def test_bigger_budget_gives_bigger_patch_or_batch():
    fingerprint = _fingerprint([1.0, 1.0, 1.0], [200, 200, 200])
    small = plan_view("axial", fingerprint, {**load_preset("default"), "gpu_memory_target_gb": 1.0}, [])
    large = plan_view("axial", fingerprint, {**load_preset("default"), "gpu_memory_target_gb": 8.0}, [])

    small_voxels = small["batch_size"] * small["patch_size"][0] * small["patch_size"][1] * small["patch_size"][2]
    large_voxels = large["batch_size"] * large["patch_size"][0] * large["patch_size"][1] * large["patch_size"][2]
    assert large_voxels > small_voxels


def test_impossible_budget_raises():
    preset = {**load_preset("default"), "gpu_memory_target_gb": 0.001}

    with pytest.raises(PlanningError, match="gpu_memory_target"):
        plan_view("sagittal", _fingerprint([1.0, 1.0, 1.0], [64, 64, 64]), preset, [])


@pytest.mark.parametrize("view,axis", [("sagittal", 0), ("coronal", 2), ("axial", 2)])
def test_mirror_only_left_right_axis(view, axis):
    assert mirror_axes_for(view, ["femur", "medial_meniscus", "lateral_meniscus"]) == [axis]


def test_no_mirror_with_lateralised_labels():
    assert mirror_axes_for("axial", ["liver", "kidney_left", "kidney_right"]) == []


def test_replanning_keeps_user_configurations():
    preset = load_preset("cpu_small")
    fingerprint = {
        "dataset_name": "Dataset101_Knee", "labels": {"background": 0, "femur": 1}, "labelled_views": ["sagittal"],
        "views": {"sagittal": _fingerprint([3.0, 0.6, 0.6], [20, 80, 80])},
    }
    first = plan_experiment(fingerprint, preset, {"findings": []})
    first["user_configurations"] = {"sagittal_bigpatch": {"patch_size": [32, 128, 128]}}
    first["my_note"] = "kept"

    second = plan_experiment(fingerprint, preset, {"findings": []}, existing_plans=copy.deepcopy(first))

    assert second["user_configurations"] == first["user_configurations"]
    assert second["my_note"] == "kept"


def test_invalid_edited_plans_rejected():
    preset = load_preset("cpu_small")
    plans = plan_view("sagittal", _fingerprint([3.0, 0.6, 0.6], [20, 80, 80]), preset, [])
    plans["patch_size"] = [plans["patch_size"][0] + 1, plans["patch_size"][1], plans["patch_size"][2]]

    with pytest.raises(ValueError, match="not divisible"):
        ViewPlans.from_dict(plans, "edited plans.json")


@pytest.mark.parametrize("name", ["default", "large", "cpu_small"])
def test_presets_load(name):
    preset = load_preset(name)

    assert preset["preset_name"] == name


def test_unknown_preset_lists_available():
    with pytest.raises(FileNotFoundError, match="cpu_small"):
        load_preset("does_not_exist")
