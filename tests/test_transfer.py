"""Pretrained checkpoints from this or another dataset: adaptation report, rejection, subsets."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from finetune_fixtures import make_classification_dataset, make_segmentation_dataset, train_args
from training_fixtures import tiny_view_plans


def _write_pretrain_checkpoint(results_folder, dataset_name, view, view_plans):
    """Write a pretraining checkpoint with random weights, as ortho_train ... pretrain would."""
    from ortho_nnd.network import build_network_from_spec
    from ortho_nnd.training.checkpoint import save_checkpoint

    network = build_network_from_spec(view_plans["architecture"])
    weights = network.state_dict()
    payload = {
        "task": "pretrain",
        "network_weights": weights,
        "ema_weights": {name: value + 0.5 if value.is_floating_point() else value for name, value in weights.items()},
        "iteration": 5,
        "view_plans": view_plans,
        "architecture": network.to_spec(),
        "diffusion": view_plans["diffusion"],
        "dataset_name": dataset_name,
        "view": view,
        "plans_name": "orthoPlans",
    }
    path = results_folder / dataset_name / f"pretrain_{view}" / "checkpoint_final.pth"
    save_checkpoint(path, payload)
    (results_folder / dataset_name / "dataset.json").write_text("{}", encoding="utf-8")
    return path, payload


def test_compatible_transfer_adapts_plans(ortho_folders):
    from ortho_nnd.training.checkpoint import load_checkpoint
    from ortho_nnd.training.seg_trainer import run_segmentation_training

    torch.set_num_threads(1)
    folder = make_segmentation_dataset(ortho_folders["preprocessed"], num_cases=5)
    source_plans = tiny_view_plans("sagittal", patch_size=[16, 16, 16])
    source_plans["target_spacing"] = [0.5, 0.5, 0.5]
    _write_pretrain_checkpoint(ortho_folders["results"], "Dataset996_Knee", "sagittal", source_plans)

    run_segmentation_training(train_args("998", "seg", "fold0", "--pretrained_from", "996", "--iterations", "1", "--lr", "1e-12", "--backbone_lr_factor", "0.5"))
    output = ortho_folders["results"] / folder.name / "seg_sagittal" / "fold_0"
    report = json.loads((output / "load_report.json").read_text(encoding="utf-8"))

    adapted = {item["parameter"]: item for item in report["adaptation"]["adapted"]}
    assert set(adapted) == {"patch_size", "target_spacing"}
    assert adapted["patch_size"]["source"] == [16, 16, 16]
    assert adapted["patch_size"]["target"] == [8, 16, 16]
    assert report["adaptation"]["source_dataset"] == "Dataset996_Knee"
    assert report["loading"]["loaded"]
    # Only the new segmentation heads start from random weights.
    assert report["loading"]["fresh"]
    assert all(name.startswith("heads.") for name in report["loading"]["fresh"])

    # The EMA weights (shifted by 0.5 in the fake checkpoint) were loaded, not the raw ones.
    final = load_checkpoint(output / "checkpoint_final.pth")
    source = load_checkpoint(ortho_folders["results"] / "Dataset996_Knee" / "pretrain_sagittal" / "checkpoint_final.pth")
    name = "time_embedding.mlp.0.weight" if "time_embedding.mlp.0.weight" in source["ema_weights"] else next(
        key for key in source["ema_weights"] if key.endswith("weight")
    )
    assert torch.allclose(final["network_weights"][f"backbone.{name}"], source["ema_weights"][name], atol=1e-6)


def test_incompatible_topology_fails_before_training(ortho_folders):
    from ortho_nnd.training.seg_trainer import run_segmentation_training
    from ortho_nnd.training.transfer import IncompatibleTransferError

    folder = make_segmentation_dataset(ortho_folders["preprocessed"], num_cases=5)
    source_plans = tiny_view_plans("sagittal")
    source_plans["architecture"]["kwargs"]["features_per_stage"] = [8, 16]
    _write_pretrain_checkpoint(ortho_folders["results"], "Dataset996_Knee", "sagittal", source_plans)

    with pytest.raises(IncompatibleTransferError, match=r"view sagittal.*features_per_stage.*Re-plan"):
        run_segmentation_training(train_args("998", "seg", "fold0", "--pretrained_from", "996", "--iterations", "2"))
    assert not (ortho_folders["results"] / folder.name / "seg_sagittal").exists()


def test_checkpoint_of_other_view_rejected(ortho_folders):
    from ortho_nnd.training.transfer import IncompatibleTransferError, check_transfer

    plans = tiny_view_plans("sagittal")
    _, payload = _write_pretrain_checkpoint(ortho_folders["results"], "Dataset996_Knee", "coronal", tiny_view_plans("coronal"))
    with pytest.raises(IncompatibleTransferError, match="coronal view, not sagittal"):
        check_transfer(payload, plans, "sagittal", "source.pth")


def test_source_without_view_rejected(ortho_folders):
    from ortho_nnd.training.cls_trainer import run_classification_training

    make_classification_dataset(ortho_folders["preprocessed"], 10)
    _write_pretrain_checkpoint(ortho_folders["results"], "Dataset996_Knee", "sagittal", tiny_view_plans("sagittal"))
    with pytest.raises(FileNotFoundError, match="View 'coronal' has no pretrained model"):
        run_classification_training(train_args("997", "cls", "fold0", "--pretrained_from", "996", "--iterations", "2"))


def test_label_subset_same_for_pretrained_and_scratch(ortho_folders):
    from ortho_nnd.training.seg_trainer import run_segmentation_training

    torch.set_num_threads(1)
    folder = make_segmentation_dataset(ortho_folders["preprocessed"], num_cases=12)
    _write_pretrain_checkpoint(ortho_folders["results"], folder.name, "sagittal", copy.deepcopy(tiny_view_plans("sagittal")))

    run_segmentation_training(train_args("998", "seg", "fold2", "--iterations", "1", "--label_fraction", "0.3"))
    run_segmentation_training(train_args("998", "seg", "fold2", "--pretrained", "none", "--iterations", "1", "--label_fraction", "0.3"))

    results = ortho_folders["results"] / folder.name
    pretrained = json.loads((results / "seg_sagittal_lf0.3" / "fold_2" / "label_subset.json").read_text(encoding="utf-8"))
    scratch = json.loads((results / "seg_sagittal_lf0.3_scratch" / "fold_2" / "label_subset.json").read_text(encoding="utf-8"))
    # 12 cases in 5 folds: fold 2 trains on 9 or 10 cases, 30 % of them is 3.
    assert len(pretrained["cases"]) == 3
    assert pretrained["cases"] == scratch["cases"]
    assert (results / "seg_sagittal_lf0.3" / "fold_2" / "load_report.json").is_file()
    assert not (results / "seg_sagittal_lf0.3_scratch" / "fold_2" / "load_report.json").exists()
