"""ortho_summarize on a fake results tree with two folds per task."""
import json
import re

import numpy as np
import pytest

from ortho_nnd.evaluation.csv_io import write_validation_probabilities
from ortho_nnd.evaluation.findings import evaluate_findings_csv
from ortho_nnd.evaluation.json_io import write_json_atomic
from ortho_nnd.evaluation.segmentation import summarize_case_metrics
from ortho_nnd.evaluation.segmentation_metrics import compute_segmentation_metrics
from ortho_nnd.evaluation.summarize import summarize_results
from ortho_nnd.evaluation.training_log import write_training_log_json

LABELS = {"background": 0, "femur": 1, "tibia": 2}
FINDINGS = ["effusion", "acl_tear"]


def segmentation_fold_summary(rng, n_cases=3):
    entries = []
    for index in range(n_cases):
        reference = np.zeros((12, 16, 16), dtype=np.uint8)
        reference[2:8, 2:8, 2:8] = 1
        reference[2:8, 9:14, 9:14] = 2
        prediction = reference.copy()
        # Shift the femur by a random amount so that folds differ.
        prediction[2:8, 2:8, 2:8] = 0
        shift = int(rng.integers(0, 3))
        prediction[2 + shift : 8 + shift, 2:8, 2:8] = 1
        metrics = compute_segmentation_metrics(prediction, reference, (3.0, 0.5, 0.5), LABELS)
        entries.append({"case": f"case{index}", "metrics": metrics})
    return summarize_case_metrics(entries, LABELS)


@pytest.fixture
def results_tree(tmp_path, monkeypatch):
    monkeypatch.setenv("ORTHO_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("ORTHO_preprocessed", str(tmp_path / "preprocessed"))
    monkeypatch.setenv("ORTHO_results", str(tmp_path / "results"))
    dataset = tmp_path / "results" / "Dataset101_Knee"
    rng = np.random.default_rng(0)

    for fold in (0, 1):
        fold_folder = dataset / "seg_sagittal" / f"fold_{fold}"
        write_json_atomic(segmentation_fold_summary(rng), fold_folder / "validation" / "summary.json")
        write_training_log_json(fold_folder / "training_log.json", [0, 10, 20], [1.0, 0.6, 0.4], [1e-4, 1e-4, 5e-5], [None, None, 0.8], "foreground_dice")

        cls_folder = dataset / "cls" / f"fold_{fold}"
        refs = (rng.random((20, 2)) < 0.5).astype(float)
        refs[0, 1] = np.nan
        probs = np.clip(refs * 0.4 + rng.random((20, 2)) * 0.6, 0, 1)
        probs[0, 1] = 0.5
        probabilities_csv = write_validation_probabilities(cls_folder / "validation" / "probabilities.csv", [f"k{fold}_{i}" for i in range(20)], probs, refs, FINDINGS)
        evaluate_findings_csv(probabilities_csv, None, output_json=cls_folder / "validation" / "summary.json", n_bootstrap=20)
        write_training_log_json(cls_folder / "training_log.json", [0, 10], [0.7, 0.5], [1e-4, 1e-4])

    write_training_log_json(dataset / "pretrain_sagittal" / "training_log.json", [0, 100, 200], [0.9, 0.5, 0.3], [1e-4] * 3)
    return dataset


def test_summarize_writes_all_files(results_tree):
    summary = summarize_results("101")

    for name in ("summary.json", "summary.md", "report.html"):
        assert (results_tree / name).is_file(), name
    for name in ("dice_seg_sagittal.png", "loss_seg_sagittal.png", "roc_cls.png", "reliability_cls.png", "loss_cls.png", "loss_pretrain_sagittal.png"):
        assert (results_tree / "report_plots" / name).stat().st_size > 0, name
    assert set(summary["tasks"]) == {"seg_sagittal", "cls"}


def test_summarize_mean_and_std_across_folds(results_tree):
    summary = summarize_results(results_tree)

    fold_values = [
        json.loads((results_tree / "seg_sagittal" / f"fold_{fold}" / "validation" / "summary.json").read_text(encoding="utf-8"))["mean"]["femur"]["dice"]
        for fold in (0, 1)
    ]
    across = summary["tasks"]["seg_sagittal"]["across_folds"]["mean"]["femur"]["dice"]
    assert across["mean"] == pytest.approx(np.mean(fold_values))
    assert across["std"] == pytest.approx(np.std(fold_values, ddof=1))
    assert summary["tasks"]["seg_sagittal"]["across_folds"]["mean"]["tibia"]["dice"]["mean"] == pytest.approx(1.0)

    fold_aucs = [
        json.loads((results_tree / "cls" / f"fold_{fold}" / "validation" / "summary.json").read_text(encoding="utf-8"))["per_finding"]["effusion"]["auc"]
        for fold in (0, 1)
    ]
    assert summary["tasks"]["cls"]["across_folds"]["per_finding"]["effusion"]["auc"]["mean"] == pytest.approx(np.mean(fold_aucs))
    assert summary["tasks"]["cls"]["pooled_over_folds"]["acl_tear"]["n_annotated"] == 38


def test_summarize_lists_missing_folds(results_tree):
    summary = summarize_results(results_tree, num_folds=5)

    assert summary["tasks"]["seg_sagittal"]["folds_present"] == [0, 1]
    assert summary["tasks"]["seg_sagittal"]["folds_missing"] == [2, 3, 4]
    assert "Folds missing: [2, 3, 4]" in (results_tree / "summary.md").read_text(encoding="utf-8")


def test_report_html_is_self_contained(results_tree):
    summarize_results(results_tree)
    html = (results_tree / "report.html").read_text(encoding="utf-8")

    # Dice, ROC, reliability, two fine-tuning loss plots and one pretraining loss plot.
    assert html.count('src="data:image/png;base64,') == 6
    assert not re.search(r"https?://", html)
    assert "<script" not in html
    assert "<link" not in html
    assert len(re.findall(r'src="', html)) == 6
    assert "femur" in html
    assert "effusion" in html


def test_summary_markdown_has_one_table_per_task(results_tree):
    summarize_results(results_tree)
    markdown = (results_tree / "summary.md").read_text(encoding="utf-8")

    assert "## seg_sagittal (segmentation)" in markdown
    assert "## cls (findings)" in markdown
    separator_lines = [line for line in markdown.splitlines() if line.startswith("| ---")]
    assert len(separator_lines) == 2
    assert "foreground mean" in markdown
    assert "macro average" in markdown


def test_summarize_without_trained_task_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("ORTHO_results", str(tmp_path / "results"))
    dataset = tmp_path / "results" / "Dataset102_Empty"
    (dataset / "seg_sagittal" / "fold_0").mkdir(parents=True)

    with pytest.raises(FileNotFoundError, match="No trained task"):
        summarize_results(dataset)


def test_cli_summarize(results_tree):
    from ortho_nnd.cli.summarize import main

    assert main(["Dataset101_Knee", "--num_folds", "2"]) == 0
    assert json.loads((results_tree / "summary.json").read_text(encoding="utf-8"))["tasks"]["cls"]["folds_missing"] == []


def test_report_html_per_fold_table(results_tree):
    summary = summarize_results(results_tree)
    html = (results_tree / "report.html").read_text(encoding="utf-8")

    fold_dice = summary["tasks"]["seg_sagittal"]["per_fold"]["1"]["foreground_mean"]["dice"]
    assert html.count("<h3>Per fold</h3>") == 2
    assert f"<td>1</td><td>{fold_dice:.3f}</td>" in html


def test_probabilities_without_references_skipped(results_tree):
    bad = results_tree / "cls" / "fold_1" / "validation" / "probabilities.csv"
    bad.write_text("case,effusion,acl_tear\nk1,0.2,0.3\n", encoding="utf-8")

    summary = summarize_results(results_tree)

    assert summary["tasks"]["cls"]["pooled_over_folds"]["effusion"]["n_annotated"] == 20
    assert summary["tasks"]["cls"]["folds_present"] == [0, 1]
