"""Segmentation fine-tuning: a short CPU run learns, outputs follow the documented layout."""
from __future__ import annotations

import json

import pytest
import torch

from finetune_fixtures import make_segmentation_dataset, train_args

# Bars for the learning test. Measured on this synthetic data (seeds 0, 1, 2; the test uses 0):
# 40 iterations reach a foreground Dice of 0.79 to 0.81, an untrained network (learning rate
# 1e-12) 0.0 to 0.53. The floor of 0.65 and the gain of 0.2 leave room for floating-point
# differences between platforms and still fail when the trainer does not learn.
MIN_TRAINED_DICE = 0.65
MIN_DICE_GAIN = 0.2


def _write_two_fold_splits(dataset_folder, num_cases):
    cases = [f"case_{index:03d}" for index in range(num_cases)]
    splits = [{"train": cases[half:], "val": cases[:half]} for half in [num_cases // 2]]
    splits.append({"train": splits[0]["val"], "val": splits[0]["train"]})
    (dataset_folder / "splits_final.json").write_text(json.dumps(splits), encoding="utf-8")


def _foreground_dice(summary_path):
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    return summary["foreground_mean"]["dice"]


def test_segmentation_run_learns(ortho_folders):
    from ortho_nnd.training.seg_trainer import run_segmentation_training

    torch.set_num_threads(1)
    folder = make_segmentation_dataset(ortho_folders["preprocessed"], num_cases=8)
    _write_two_fold_splits(folder, 8)
    output = ortho_folders["results"] / folder.name / "seg_sagittal_scratch" / "fold_0"

    run_segmentation_training(train_args("998", "seg", "fold0", "--pretrained", "none", "--iterations", "1", "--lr", "1e-12"))
    untrained = _foreground_dice(output / "validation" / "summary.json")

    run_segmentation_training(train_args("998", "seg", "fold0", "--pretrained", "none", "--iterations", "40"))
    trained = _foreground_dice(output / "validation" / "summary.json")

    assert trained >= MIN_TRAINED_DICE, f"trained Dice {trained:.3f}, untrained {untrained:.3f}"
    assert trained - untrained >= MIN_DICE_GAIN, f"trained Dice {trained:.3f}, untrained {untrained:.3f}"
    log = json.loads((output / "training_log.json").read_text(encoding="utf-8"))
    assert log["val_metric_name"] == "foreground_dice"
    assert log["val_metric"][-1] == pytest.approx(trained)
    assert (output / "checkpoint_final.pth").is_file()
    assert json.loads((output / "label_subset.json").read_text(encoding="utf-8"))["cases"] == [f"case_{i:03d}" for i in range(4, 8)]


def test_segmentation_label_fraction_folders(ortho_folders):
    from ortho_nnd.training.seg_trainer import run_segmentation_training

    torch.set_num_threads(1)
    folder = make_segmentation_dataset(ortho_folders["preprocessed"], num_cases=10)
    run_segmentation_training(train_args("998", "seg", "fold1", "--pretrained", "none", "--iterations", "2", "--label_fraction", "0.25"))

    output = ortho_folders["results"] / folder.name / "seg_sagittal_lf0.25_scratch" / "fold_1"
    subset = json.loads((output / "label_subset.json").read_text(encoding="utf-8"))
    splits = json.loads((folder / "splits_final.json").read_text(encoding="utf-8"))
    # 8 training cases in fold 1 of 5 (10 cases), a quarter of them is 2.
    assert len(subset["cases"]) == 2
    assert set(subset["cases"]) <= set(splits[1]["train"])
    summary = json.loads((output / "validation" / "summary.json").read_text(encoding="utf-8"))
    assert sorted(entry["case"] for entry in summary["metric_per_case"]) == sorted(splits[1]["val"])


def test_segmentation_with_augmentation_runs(ortho_folders):
    from ortho_nnd.training.seg_trainer import run_segmentation_training

    torch.set_num_threads(1)
    folder = make_segmentation_dataset(ortho_folders["preprocessed"], num_cases=5, augmentation=True)
    run_segmentation_training(train_args("998", "seg", "all", "--pretrained", "none", "--iterations", "3"))
    output = ortho_folders["results"] / folder.name / "seg_sagittal_scratch" / "fold_all"
    assert (output / "checkpoint_final.pth").is_file()
    assert not (output / "validation").exists()


def test_segmentation_auto_without_pretraining_fails(ortho_folders):
    from ortho_nnd.training.seg_trainer import run_segmentation_training

    make_segmentation_dataset(ortho_folders["preprocessed"], num_cases=5)
    with pytest.raises(FileNotFoundError, match="--pretrained none"):
        run_segmentation_training(train_args("998", "seg", "fold0", "--iterations", "2"))


def test_anisotropic_augmentation_rotates_in_plane():
    from ortho_nnd.training import augmentation

    assert augmentation.is_anisotropic([4.0, 1.0, 1.0])
    assert not augmentation.is_anisotropic([2.0, 1.0, 1.0])

    torch.manual_seed(0)
    spatial = augmentation.SpatialTransform(
        (8, 16, 16), 0, False, p_rotation=1, rotation=augmentation._InPlaneAngle(1.0),
        p_scaling=1, scaling=augmentation._InPlaneScale((0.8, 0.8)), p_synchronize_scaling_across_axes=0,
    )
    image = torch.zeros(1, 8, 16, 16)
    image[:, 3] = 1.0
    result = spatial(image=image, segmentation=torch.zeros(1, 8, 16, 16, dtype=torch.int16))
    mass_per_slice = result["image"][0].sum(dim=(1, 2))
    # Rotation about axis 0 and in-plane scaling keep all intensity in slice 3.
    assert mass_per_slice[3] > 0
    assert torch.count_nonzero(mass_per_slice) == 1


def test_deep_supervision_weights_halve():
    from ortho_nnd.training.seg_trainer import deep_supervision_weights

    weights = deep_supervision_weights(3)
    assert weights == pytest.approx([4 / 7, 2 / 7, 1 / 7])


@pytest.mark.slow
def test_phantom_segmentation_validation_in_raw_geometry(ortho_folders):
    """Phantom -> preprocessing -> a short seg run: validation files sit on the raw label grid."""
    import SimpleITK as sitk

    from ortho_nnd.cli.plan_and_preprocess import main_plan_and_preprocess
    from ortho_nnd.phantom import generate_phantom_dataset
    from ortho_nnd.training.seg_trainer import run_segmentation_training

    raw_folder = generate_phantom_dataset(ortho_folders["raw"], 999, num_cases=4, num_test=0, num_unlabeled=0, seed=0)
    assert main_plan_and_preprocess(["-d", "999", "--preset", "cpu_small", "-np", "1"]) == 0
    dataset_folder = ortho_folders["preprocessed"] / raw_folder.name
    label_files = sorted((raw_folder / "labelsTr").glob("*_sagittal.nii.gz"))
    cases = [path.name[: -len("_sagittal.nii.gz")] for path in label_files]
    (dataset_folder / "splits_final.json").write_text(json.dumps([{"train": cases[1:], "val": cases[:1]}]), encoding="utf-8")

    run_segmentation_training(train_args("999", "seg", "fold0", "--pretrained", "none", "--iterations", "2"))
    validation = ortho_folders["results"] / raw_folder.name / "seg_sagittal_scratch" / "fold_0" / "validation"
    summary = json.loads((validation / "summary.json").read_text(encoding="utf-8"))
    assert summary["settings"]["evaluation_space"] == ["original"]

    prediction = sitk.ReadImage(str(validation / f"{cases[0]}_sagittal.nii.gz"))
    reference = sitk.ReadImage(str(raw_folder / "labelsTr" / f"{cases[0]}_sagittal.nii.gz"))
    assert prediction.GetSize() == reference.GetSize()
    assert prediction.GetSpacing() == pytest.approx(reference.GetSpacing())
    assert prediction.GetOrigin() == pytest.approx(reference.GetOrigin())
    assert prediction.GetDirection() == pytest.approx(reference.GetDirection(), abs=1e-6)
