"""Unit tests of the pure parts of benchmarks/compare_nnunet.py (no nnU-Net installation needed)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

# benchmarks/ sits beside the package at the repository root and is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import nnunet_bridge  # noqa: E402
from benchmarks.benchmark_datasets import (  # noqa: E402
    BenchmarkCase,
    consecutive_label_mapping,
    intensity_augmented_copy,
    remap_label_array,
    single_scan_cases,
    write_dataset_layouts,
)
from benchmarks.benchmark_report import (  # noqa: E402
    Measurement,
    Row,
    dice_per_label,
    iteration_intervals,
    markdown_table,
    ratio,
    summarize,
)
from benchmarks.compare_nnunet import geometry_differences, write_document, GENERATED_BEGIN, GENERATED_END  # noqa: E402
from benchmarks.process_monitor import descendants  # noqa: E402


def _image(array: np.ndarray, spacing=(0.5, 0.6, 3.0), origin=(10.0, -5.0, 2.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def _case(name: str, seed: int) -> BenchmarkCase:
    rng = np.random.default_rng(seed)
    image = _image(rng.integers(0, 500, size=(4, 6, 5)).astype(np.int16))
    label = _image(rng.integers(0, 3, size=(4, 6, 5)).astype(np.uint8))
    return BenchmarkCase(name, image, label)


# ---------------------------------------------------------------------- dataset conversion


def test_label_mapping_closes_gaps():
    mapping = consecutive_label_mapping([0, 49, 1, 5, 5, 23])
    assert mapping == {0: 0, 1: 1, 5: 2, 23: 3, 49: 4}


def test_label_mapping_rejects_negative():
    with pytest.raises(ValueError, match="non-negative"):
        consecutive_label_mapping([0, -1, 2])


def test_remap_label_array_values():
    array = np.array([[0, 49], [5, 1]], dtype=np.uint8)
    remapped = remap_label_array(array, {0: 0, 1: 1, 5: 2, 49: 3})
    assert remapped.tolist() == [[0, 3], [2, 1]]


def test_remap_rejects_unmapped_value():
    with pytest.raises(ValueError, match=r"\[7\]"):
        remap_label_array(np.array([0, 7]), {0: 0})


def test_layouts_hold_identical_voxels(tmp_path):
    train = [_case("knee_0001", 1), _case("knee_0002", 2)]
    test = [_case("test_0001", 3)]
    labels = {"background": 0, "a": 1, "b": 2}

    layouts = write_dataset_layouts("Phantom", 990, "sagittal", labels, train, test, tmp_path / "ortho", tmp_path / "nnunet", "test data")

    assert layouts.name == "Dataset990_Phantom"
    ortho, nnunet = layouts.ortho_folder, layouts.nnunet_folder
    for case in ("knee_0001", "knee_0002"):
        ortho_image = sitk.ReadImage(str(ortho / "imagesTr" / f"{case}_sagittal.nii.gz"))
        nnunet_image = sitk.ReadImage(str(nnunet / "imagesTr" / f"{case}_0000.nii.gz"))
        assert np.array_equal(sitk.GetArrayFromImage(ortho_image), sitk.GetArrayFromImage(nnunet_image))
        assert ortho_image.GetSpacing() == nnunet_image.GetSpacing()
        ortho_label = sitk.ReadImage(str(ortho / "labelsTr" / f"{case}_sagittal.nii.gz"))
        nnunet_label = sitk.ReadImage(str(nnunet / "labelsTr" / f"{case}.nii.gz"))
        assert np.array_equal(sitk.GetArrayFromImage(ortho_label), sitk.GetArrayFromImage(nnunet_label))
    assert (nnunet / "imagesTs" / "test_0001_0000.nii.gz").is_file()
    assert (ortho / "labelsTs" / "test_0001_sagittal.nii.gz").is_file()


def test_layout_dataset_json_contents(tmp_path):
    labels = {"background": 0, "a": 1, "b": 2}
    layouts = write_dataset_layouts("Phantom", 990, "axial", labels, [_case("c1", 1)], [], tmp_path / "o", tmp_path / "n", "d")

    nnunet_json = json.loads((layouts.nnunet_folder / "dataset.json").read_text())
    ortho_json = json.loads((layouts.ortho_folder / "dataset.json").read_text())
    assert nnunet_json["channel_names"] == {"0": "MRI"}
    assert nnunet_json["labels"] == labels
    assert nnunet_json["numTraining"] == 1
    assert nnunet_json["file_ending"] == ".nii.gz"
    assert ortho_json["views"] == ["axial"]
    assert ortho_json["labelled_views"] == ["axial"]
    assert ortho_json["numTraining"] == 1


def test_layouts_reject_unlabelled_training_case(tmp_path):
    unlabelled = BenchmarkCase("c1", _case("c1", 1).image, None)
    with pytest.raises(ValueError, match="c1"):
        write_dataset_layouts("P", 990, "axial", {"background": 0}, [unlabelled], [], tmp_path / "o", tmp_path / "n", "d")


def test_augmented_copy_keeps_shape_and_dtype():
    array = np.random.default_rng(0).integers(0, 1000, size=(5, 7, 9)).astype(np.int16)
    copy = intensity_augmented_copy(array, np.random.default_rng(1))
    assert copy.shape == array.shape
    assert copy.dtype == array.dtype
    assert not np.array_equal(copy, array)
    # Monotone gamma and a smooth bias keep the image strongly correlated with the original.
    assert np.corrcoef(copy.ravel(), array.ravel())[0, 1] > 0.8


def test_augmented_copy_rejects_constant_image():
    with pytest.raises(ValueError, match="constant"):
        intensity_augmented_copy(np.ones((3, 3, 3)), np.random.default_rng(0))


def test_single_scan_cases_remap_labels(tmp_path):
    rng = np.random.default_rng(0)
    image = _image(rng.integers(0, 800, size=(4, 6, 5)).astype(np.int16))
    label_array = np.zeros((4, 6, 5), dtype=np.uint8)
    label_array[1, 1:3, 1:3] = 46
    label_array[2, 2:4, 2:4] = 5
    label = _image(label_array)
    sitk.WriteImage(image, str(tmp_path / "image.nii.gz"))
    sitk.WriteImage(label, str(tmp_path / "labels.nii.gz"))

    train, test, labels = single_scan_cases(tmp_path / "image.nii.gz", tmp_path / "labels.nii.gz", "scan", 2, seed=0)

    assert [case.case for case in train] == ["scan_original", "scan_augmented1", "scan_augmented2"]
    assert [case.case for case in test] == ["scan"]
    assert labels == {"background": 0, "label_5": 1, "label_46": 2}
    remapped = sitk.GetArrayFromImage(train[0].label)
    assert sorted(np.unique(remapped).tolist()) == [0, 1, 2]
    assert int((remapped == 2).sum()) == int((label_array == 46).sum())
    assert train[1].image.GetSpacing() == pytest.approx(image.GetSpacing())


# ---------------------------------------------------------------------- statistics and tables


def test_summarize_few_samples_min_max():
    result = summarize([3.0, 1.0, 2.0])
    assert result == Measurement(2.0, 1.0, 3.0, 3, "min-max")


def test_summarize_many_samples_iqr():
    result = summarize(list(range(1, 22)))
    assert result.median == 11.0
    assert result.spread == "IQR"
    assert result.low == 6.0
    assert result.high == 16.0


def test_summarize_single_and_invalid():
    assert summarize([4.0]).spread == "single"
    with pytest.raises(ValueError, match="empty"):
        summarize([])
    with pytest.raises(ValueError, match="NaN"):
        summarize([1.0, float("nan")])


def test_ratio_uses_medians():
    assert ratio(summarize([1.0, 2.0, 3.0]), summarize([4.0, 4.0, 4.0])) == pytest.approx(0.5)
    assert ratio(2.0, 0.0) is None
    assert ratio(None, 1.0) is None


def test_markdown_table_cells():
    rows = [
        Row("D1", "wall time", "s", summarize([1.0, 2.0, 3.0]), summarize([4.0, 4.0, 4.0]), "note"),
        Row("D1", "Dice", "", None, 0.5, "", {"ortho": "ortho_predict missing"}),
    ]
    table = markdown_table(rows).splitlines()
    assert table[0].startswith("| dataset | quantity |")
    assert "2.000 s (1.000-3.000 min-max, n=3)" in table[2]
    assert "| 0.50 |" in table[2]
    assert "not available: ortho_predict missing" in table[3]
    assert table[3].count("|") == 7


def test_iteration_intervals_skip_warmup_and_epochs():
    steps = [[0, 0.0, 0.5], [0, 1.0, 1.5], [0, 2.0, 2.5], [1, 10.0, 10.5], [1, 11.5, 12.0]]
    assert iteration_intervals(steps, warmup=1) == [1.0, 1.5]
    assert iteration_intervals(steps, warmup=0) == [1.0, 1.0, 1.5]


def test_dice_per_label_values():
    reference = np.array([0, 1, 1, 2, 2, 2])
    prediction = np.array([0, 1, 0, 2, 2, 1])
    scores = dice_per_label(prediction, reference, [1, 2, 3])
    assert scores[1] == pytest.approx(2 * 1 / (2 + 2))
    assert scores[2] == pytest.approx(2 * 2 / (2 + 3))
    assert 3 not in scores


def test_dice_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        dice_per_label(np.zeros(3), np.zeros(4), [1])


# ---------------------------------------------------------------------- nnU-Net plans and geometry


ORTHO_KWARGS = {
    "features_per_stage": [8, 16, 32],
    "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
    "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 1]],
    "n_blocks_per_stage": [1, 2, 2],
    "n_blocks_per_stage_decoder": [1, 1],
}


def _nnunet_plans() -> dict:
    return {
        "transpose_forward": [0, 1, 2],
        "configurations": {
            "3d_fullres": {
                "patch_size": [24, 80, 80],
                "batch_size": 4,
                "architecture": {"arch_kwargs": {"n_stages": 5, "features_per_stage": [32, 64, 128, 256, 320], "conv_bias": True}},
            }
        },
    }


def test_axis_map_follows_both_orders():
    assert nnunet_bridge.ortho_to_nnunet_axes([0, 1, 2], [0, 1, 2]) == [0, 1, 2]
    # ortho axis 0 is numpy axis 2; nnU-Net puts numpy axis 2 first, so its axis 0 is ortho axis 0.
    assert nnunet_bridge.ortho_to_nnunet_axes([2, 0, 1], [2, 0, 1]) == [0, 1, 2]
    assert nnunet_bridge.ortho_to_nnunet_axes([2, 0, 1], [0, 1, 2]) == [1, 2, 0]
    with pytest.raises(ValueError, match="axis orders"):
        nnunet_bridge.ortho_to_nnunet_axes([0, 0, 1], [0, 1, 2])


def test_matched_plans_copy_topology():
    original = _nnunet_plans()
    matched = nnunet_bridge.match_nnunet_plans(original, [16, 64, 48], 2, ORTHO_KWARGS, [0, 2, 1])

    configuration = matched["configurations"]["3d_fullres"]
    arch = configuration["architecture"]["arch_kwargs"]
    assert configuration["patch_size"] == [16, 48, 64]
    assert configuration["batch_size"] == 2
    assert arch["n_stages"] == 3
    assert arch["features_per_stage"] == [8, 16, 32]
    assert arch["strides"] == [[1, 1, 1], [1, 2, 2], [2, 1, 2]]
    assert arch["kernel_sizes"][0] == [1, 3, 3]
    assert arch["n_conv_per_stage"] == [3, 5, 5]
    assert arch["n_conv_per_stage_decoder"] == [2, 2]
    assert arch["conv_bias"] is True
    # The input plans stay unchanged.
    assert original["configurations"]["3d_fullres"]["batch_size"] == 4


def test_matched_plans_reject_inconsistent_kwargs():
    broken = {**ORTHO_KWARGS, "strides": [[1, 1, 1]]}
    with pytest.raises(ValueError, match="strides"):
        nnunet_bridge.match_nnunet_plans(_nnunet_plans(), [16, 64, 64], 2, broken, [0, 1, 2])
    with pytest.raises(ValueError, match="2d"):
        nnunet_bridge.match_nnunet_plans(_nnunet_plans(), [16, 64, 64], 2, ORTHO_KWARGS, [0, 1, 2], configuration="2d")


def test_training_environment_values(tmp_path):
    environment = nnunet_bridge.training_environment(40, 10, tmp_path / "t.json")
    assert environment[nnunet_bridge.ITERATIONS_VARIABLE] == "40"
    assert environment[nnunet_bridge.ITERATIONS_PER_EPOCH_VARIABLE] == "10"
    assert nnunet_bridge.training_environment(5, 10, tmp_path / "t.json")[nnunet_bridge.ITERATIONS_PER_EPOCH_VARIABLE] == "5"
    with pytest.raises(ValueError, match="at least 1"):
        nnunet_bridge.training_environment(0, 10, tmp_path / "t.json")


def test_trainer_source_compiles():
    compile(nnunet_bridge.TRAINER_SOURCE, nnunet_bridge.TRAINER_MODULE_FILE, "exec")
    assert f"class {nnunet_bridge.TRAINER_NAME}(" in nnunet_bridge.TRAINER_SOURCE


def test_geometry_differences_fields():
    reference = _image(np.zeros((4, 6, 5), dtype=np.uint8))
    same = _image(np.ones((4, 6, 5), dtype=np.uint8))
    assert geometry_differences(reference, same) == []

    shifted = _image(np.zeros((4, 6, 5), dtype=np.uint8), origin=(10.5, -5.0, 2.0))
    assert geometry_differences(reference, shifted) == ["origin"]
    resized = _image(np.zeros((4, 6, 6), dtype=np.uint8))
    assert geometry_differences(reference, resized) == ["size"]
    rotated = _image(np.zeros((4, 6, 5), dtype=np.uint8))
    rotated.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0))
    assert geometry_differences(reference, rotated) == ["direction"]


def test_process_tree_descendants():
    parents = {1: 0, 10: 1, 11: 10, 12: 10, 20: 1, 30: 99}
    assert sorted(descendants(10, parents)) == [10, 11, 12]
    assert sorted(descendants(1, parents)) == [1, 10, 11, 12, 20]


def test_document_generated_section_replaced(tmp_path):
    page = tmp_path / "benchmarks.md"
    page.write_text(f"# Title\n\nintro\n\n{GENERATED_BEGIN}\nold table\n{GENERATED_END}\n\nanalysis\n")
    write_document(page, f"{GENERATED_BEGIN}\nnew table\n{GENERATED_END}")
    text = page.read_text()
    assert "new table" in text
    assert "old table" not in text
    assert text.startswith("# Title\n\nintro")
    assert text.rstrip().endswith("analysis")
