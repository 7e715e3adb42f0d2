"""ortho_experiment label_efficiency: aggregation, report files and a tiny end-to-end run."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from training_fixtures import make_preprocessed_dataset  # noqa: E402

from ortho_nnd.cli import experiment as experiment_cli  # noqa: E402
from ortho_nnd.experiments import label_efficiency  # noqa: E402
from ortho_nnd.experiments.label_efficiency import LabelEfficiencySettings, aggregate, run_folder  # noqa: E402
from ortho_nnd.experiments.label_efficiency_report import plot_label_efficiency, write_markdown_table  # noqa: E402

DATASET = "Dataset996_LabelEfficiency"


def _record(task, initialisation, fraction, seed, value, cases=4):
    return {
        "task": task, "initialisation": initialisation, "fraction": fraction, "seed": seed, "value": value,
        "metric": label_efficiency.METRIC_NAMES[task], "training_cases": cases,
    }


def test_aggregate_mean_std_and_undefined_values():
    records = [
        _record("seg", "pretrained", 0.1, 0, 0.5),
        _record("seg", "pretrained", 0.1, 1, 0.7),
        _record("seg", "scratch", 0.1, 0, None),
        _record("seg", "scratch", 0.1, 1, 0.4),
    ]
    rows = {(row["initialisation"]): row for row in aggregate(records)}

    assert rows["pretrained"]["mean"] == pytest.approx(0.6)
    assert rows["pretrained"]["std"] == pytest.approx(0.1414, abs=1e-3)
    assert rows["pretrained"]["n_defined"] == 2
    assert rows["scratch"]["mean"] == pytest.approx(0.4)
    assert rows["scratch"]["std"] is None
    assert (rows["scratch"]["n_defined"], rows["scratch"]["n_runs"]) == (1, 2)


def test_markdown_table_and_plot(tmp_path):
    records = [
        _record("seg", "pretrained", 0.25, 0, 0.6), _record("seg", "scratch", 0.25, 0, 0.5),
        _record("seg", "pretrained", 1.0, 0, 0.8), _record("seg", "scratch", 1.0, 0, 0.75),
        _record("cls", "pretrained", 0.25, 0, 0.7), _record("cls", "scratch", 0.25, 0, None),
    ]
    result = {
        "dataset": DATASET, "evaluation": "validation cases of fold 0",
        "settings": {"seeds": [0], "iterations": 5, "cls_iterations": None},
        "rows": aggregate(records),
    }

    table = write_markdown_table(result, tmp_path / "table.md").read_text()
    plot = plot_label_efficiency(result, tmp_path / "plot.png")

    assert "| seg | mean foreground Dice | 0.25 | 4 | 0.600 | 0.500 | +0.100 |" in table
    assert "| seg | mean foreground Dice | 1 | 4 | 0.800 | 0.750 | +0.050 |" in table
    assert "| cls | macro AUC | 0.25 | 4 | 0.700 | undefined | n/a |" in table
    assert plot.stat().st_size > 1000


@pytest.mark.parametrize("task, fraction, scratch, expected", [
    ("seg", 0.1, True, "seg_sagittal_lf0.1_scratch"),
    ("seg", 1.0, False, "seg_sagittal"),
    ("cls", 0.25, False, "cls_lf0.25"),
    ("cls", 1.0, True, "cls_scratch"),
])
def test_run_folder_matches_trainer_naming(tmp_path, task, fraction, scratch, expected):
    folder = run_folder(tmp_path, DATASET, task, "sagittal", fraction, scratch, 0, "orthoPlans")
    assert folder == tmp_path / DATASET / expected / "fold_0"


@pytest.mark.parametrize("settings, message", [
    (LabelEfficiencySettings(DATASET, fractions=(0.0, 1.0)), "fraction 0.0"),
    (LabelEfficiencySettings(DATASET, fractions=(1.5,)), "fraction 1.5"),
    (LabelEfficiencySettings(DATASET, seeds=()), "No seeds"),
    (LabelEfficiencySettings(DATASET, tasks=("seg", "det")), "Invalid --tasks"),
    (LabelEfficiencySettings(DATASET, iterations=0), "iterations 0"),
    (LabelEfficiencySettings(DATASET, fold=5), "fold 5"),
    (LabelEfficiencySettings(DATASET, backbone_lr_factor=0.0), "backbone_lr_factor 0.0"),
])
def test_settings_reject_invalid(settings, message):
    with pytest.raises(ValueError, match=message):
        settings.check()


def test_cli_rejects_non_numeric_fractions(capsys):
    with pytest.raises(SystemExit) as exit_request:
        experiment_cli.main(["label_efficiency", "-d", "999", "--fractions", "0.1,half"])
    assert exit_request.value.code == 2
    assert "Invalid --fractions" in capsys.readouterr().err


def _make_dataset(preprocessed: Path) -> Path:
    folder = make_preprocessed_dataset(
        preprocessed, DATASET, num_cases=10, views=("sagittal", "coronal"), labelled_views=("sagittal",), num_labels=1,
    )
    # Finding "large" is positive for the cases whose label covers more voxels than the median, so it is learnable.
    import numpy as np

    sizes = {f"case_{i:03d}": int((np.load(folder / "orthoPlans_sagittal" / f"case_{i:03d}_seg.npy") > 0).sum()) for i in range(10)}
    median = float(np.median(list(sizes.values())))
    with open(folder / "findings.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["case", "large", "odd"])
        for index, (case, size) in enumerate(sorted(sizes.items())):
            writer.writerow([case, int(size > median), index % 2])
    dataset_json = json.loads((folder / "dataset.json").read_text())
    dataset_json["findings"] = ["large", "odd"]
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    return folder


def test_label_efficiency_tiny_end_to_end(ortho_folders, monkeypatch):
    _make_dataset(ortho_folders["preprocessed"])
    settings = LabelEfficiencySettings(
        DATASET, fractions=(0.5, 1.0), seeds=(0,), iterations=2, pretrain_iterations=2, device="cpu",
    )

    result = label_efficiency.run_label_efficiency(settings)

    output = ortho_folders["results"] / DATASET / "experiments" / "label_efficiency"
    for name in ("label_efficiency.json", "label_efficiency.md", "label_efficiency.png"):
        assert (output / name).is_file()
    assert len(result["runs"]) == 2 * 2 * 2
    assert len(result["rows"]) == 2 * 2 * 2

    # Pretraining went to the normal results folder; fine-tuning runs only to the experiment's own root.
    for view in ("sagittal", "coronal"):
        assert (ortho_folders["results"] / DATASET / f"pretrain_{view}" / "checkpoint_final.pth").is_file()
    assert not (ortho_folders["results"] / DATASET / "seg_sagittal").exists()

    # Pretrained and scratch runs of one fraction train on the same cases; fraction 0.5 halves them.
    root = output / "runs" / "seed_0"
    for task in ("seg", "cls"):
        subsets = {}
        for scratch in (False, True):
            folder = run_folder(root, DATASET, task, "sagittal", 0.5, scratch, 0, "orthoPlans")
            subsets[scratch] = json.loads((folder / "label_subset.json").read_text())["cases"]
        assert subsets[False] == subsets[True]
    seg_rows = {(r["initialisation"], r["fraction"]): r for r in result["rows"] if r["task"] == "seg"}
    assert seg_rows[("pretrained", 0.5)]["training_cases"] == [4]
    assert seg_rows[("pretrained", 1.0)]["training_cases"] == [8]
    for run in result["runs"]:
        if run["task"] == "seg":
            assert 0.0 <= run["value"] <= 1.0

    # A rerun with the same settings reuses the stored records and trains nothing.
    def no_training(*args, **kwargs):
        raise AssertionError("a stored run was trained again")

    monkeypatch.setattr(label_efficiency, "run_stage", no_training)
    again = label_efficiency.run_label_efficiency(settings)
    assert again["rows"] == result["rows"]
