"""Gather the validation results of all folds of each trained task into one summary.

Expected layout under ``ORTHO_results/DatasetXXX_Name/``:

    seg_{view}/fold_{k}/validation/summary.json        segmentation summary (evaluate_segmentation_folder)
    cls/fold_{k}/validation/summary.json               findings summary (compute_findings_metrics)
    cls/fold_{k}/validation/probabilities.csv          probabilities and references, for pooled ROC curves
    {task}/fold_{k}/training_log.json                  optional, for loss curves
    pretrain_{view}/training_log.json                  optional, for loss curves

Writes ``summary.json``, ``summary.md``, ``report.html`` and ``report_plots/*.png`` into the
dataset results folder.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ortho_nnd import paths
from ortho_nnd.evaluation.csv_io import read_validation_probabilities
from ortho_nnd.evaluation.findings_metrics import MACRO_METRICS, calibration_bins, roc_auc
from ortho_nnd.evaluation.json_io import nan_if_none, read_json, write_json_atomic
from ortho_nnd.evaluation.plots import plot_dice_per_structure, plot_loss_curves, plot_reliability, plot_roc_curves
from ortho_nnd.evaluation.report import write_html_report, write_markdown_summary
from ortho_nnd.evaluation.segmentation_metrics import MEAN_METRICS
from ortho_nnd.evaluation.training_log import TRAINING_LOG_NAME, read_training_log_json

logger = logging.getLogger(__name__)

# Folds that fine-tuning creates by default (splits_final.json has five entries).
DEFAULT_NUM_FOLDS = 5

SEGMENTATION_TASK = re.compile(r"^seg_(?P<view>[A-Za-z0-9]+)$")
FINDINGS_TASK = "cls"
PRETRAIN_TASK = re.compile(r"^pretrain_(?P<view>[A-Za-z0-9]+)$")
FOLD_FOLDER = re.compile(r"^fold_(?P<fold>\d+)$")

VALIDATION_SUMMARY = Path("validation") / "summary.json"
VALIDATION_PROBABILITIES = Path("validation") / "probabilities.csv"
PLOTS_FOLDER_NAME = "report_plots"

# Per-finding metrics carried from each fold into the across-fold summary.
FINDING_METRICS = ("auc", "average_precision", "sensitivity", "specificity", "f1", "ece")


def resolve_results_folder(dataset_name_or_folder: str | int | os.PathLike) -> Path:
    """Return the results folder of a dataset given as id (101), name (Dataset101_Knee) or an existing folder."""
    candidate = Path(str(dataset_name_or_folder)).expanduser()
    if candidate.is_dir():
        return candidate
    folder = paths.results_dataset_folder(dataset_name_or_folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Results folder {folder} does not exist. Train a task first (ortho_train) or set ORTHO_results.")
    return folder


def mean_and_std(values: Sequence[float]) -> dict[str, float]:
    """Return mean and sample standard deviation (ddof=1) of the finite values, with std NaN for fewer than two."""
    array = np.asarray([nan_if_none(value) for value in values], dtype=float)
    finite = array[np.isfinite(array)]
    mean = float(finite.mean()) if finite.size else float("nan")
    std = float(finite.std(ddof=1)) if finite.size > 1 else float("nan")
    return {"mean": mean, "std": std, "n": int(finite.size)}


def _fold_folders(task_folder: Path) -> dict[int, Path]:
    folds = {}
    for child in task_folder.iterdir():
        match = FOLD_FOLDER.match(child.name)
        if child.is_dir() and match:
            folds[int(match["fold"])] = child
    return dict(sorted(folds.items()))


def _training_logs(folders: Mapping[str, Path]) -> dict[str, dict]:
    logs = {}
    for label, folder in folders.items():
        path = folder / TRAINING_LOG_NAME
        if path.is_file():
            try:
                logs[label] = read_training_log_json(path)
            except ValueError as error:
                logger.warning("Skipping training log: %s", error)
    return logs


def _summarize_segmentation_task(task: str, task_folder: Path, num_folds: int, plots_folder: Path) -> dict:
    fold_folders = _fold_folders(task_folder)
    per_fold: dict[str, dict] = {}
    dice_per_structure: dict[str, list] = {}
    for fold, folder in fold_folders.items():
        summary_path = folder / VALIDATION_SUMMARY
        if not summary_path.is_file():
            continue
        summary = read_json(summary_path)
        if not isinstance(summary, dict) or "mean" not in summary or "foreground_mean" not in summary:
            raise ValueError(f"{summary_path} is not a segmentation summary (no 'mean'/'foreground_mean'). Re-run the validation of this fold.")
        per_fold[str(fold)] = {"mean": summary["mean"], "foreground_mean": summary["foreground_mean"], "counts": summary.get("counts", {})}
        for case in summary.get("metric_per_case", []):
            for name, metrics in case.get("metrics", {}).items():
                dice_per_structure.setdefault(name, []).append(nan_if_none(metrics.get("dice")))

    result = _fold_bookkeeping(task, "segmentation", fold_folders, per_fold, num_folds)
    if not per_fold:
        return result

    class_names = list(next(iter(per_fold.values()))["mean"])
    result["across_folds"] = {
        "foreground_mean": {
            metric: mean_and_std([fold["foreground_mean"].get(metric) for fold in per_fold.values()]) for metric in MEAN_METRICS
        },
        "mean": {
            name: {metric: mean_and_std([fold["mean"].get(name, {}).get(metric) for fold in per_fold.values()]) for metric in MEAN_METRICS}
            for name in class_names
        },
    }
    result["per_fold"] = per_fold

    if dice_per_structure:
        result["plots"]["dice"] = str(plot_dice_per_structure(dice_per_structure, f"{task}: Dice per case, all folds", plots_folder / f"dice_{task}.png"))
    return result


def _summarize_findings_task(task: str, task_folder: Path, num_folds: int, plots_folder: Path) -> dict:
    fold_folders = _fold_folders(task_folder)
    per_fold: dict[str, dict] = {}
    pooled_scores: dict[str, list] = {}
    pooled_labels: dict[str, list] = {}
    for fold, folder in fold_folders.items():
        summary_path = folder / VALIDATION_SUMMARY
        if not summary_path.is_file():
            continue
        summary = read_json(summary_path)
        if not isinstance(summary, dict) or "per_finding" not in summary:
            raise ValueError(f"{summary_path} is not a findings summary (no 'per_finding'). Re-run the validation of this fold.")
        per_fold[str(fold)] = {
            "per_finding": {name: {metric: values.get(metric) for metric in FINDING_METRICS} for name, values in summary["per_finding"].items()},
            "macro": summary.get("macro", {}),
            "micro": summary.get("micro", {}),
        }

        probabilities_path = folder / VALIDATION_PROBABILITIES
        if probabilities_path.is_file():
            try:
                probabilities, references = read_validation_probabilities(probabilities_path)
            except ValueError as error:
                logger.warning("Leaving fold %d out of the pooled ROC curves: %s", fold, error)
                continue
            for column, name in enumerate(probabilities.findings):
                annotated = np.isfinite(references.values[:, column])
                pooled_scores.setdefault(name, []).extend(probabilities.values[annotated, column].tolist())
                pooled_labels.setdefault(name, []).extend(references.values[annotated, column].tolist())

    result = _fold_bookkeeping(task, "findings", fold_folders, per_fold, num_folds)
    if not per_fold:
        return result

    finding_names = list(next(iter(per_fold.values()))["per_finding"])
    result["across_folds"] = {
        "per_finding": {
            name: {metric: mean_and_std([fold["per_finding"].get(name, {}).get(metric) for fold in per_fold.values()]) for metric in FINDING_METRICS}
            for name in finding_names
        },
        "macro": {metric: mean_and_std([fold["macro"].get(metric) for fold in per_fold.values()]) for metric in MACRO_METRICS},
        "micro": {metric: mean_and_std([fold["micro"].get(metric) for fold in per_fold.values()]) for metric in MACRO_METRICS},
    }
    result["per_fold"] = per_fold

    if pooled_scores:
        scores_and_labels = {name: (np.asarray(pooled_scores[name]), np.asarray(pooled_labels[name])) for name in pooled_scores}
        result["pooled_over_folds"] = {
            name: {"auc": roc_auc(scores, labels), "n_annotated": int(labels.size), "n_positive": int(labels.sum())}
            for name, (scores, labels) in scores_and_labels.items()
        }
        result["plots"]["roc"] = str(plot_roc_curves(scores_and_labels, plots_folder / f"roc_{task}.png"))
        calibration = {name: calibration_bins(scores, labels) for name, (scores, labels) in scores_and_labels.items()}
        result["plots"]["reliability"] = str(plot_reliability(calibration, plots_folder / f"reliability_{task}.png"))
    return result


def _fold_bookkeeping(task: str, kind: str, fold_folders: Mapping[int, Path], per_fold: Mapping[str, dict], num_folds: int) -> dict:
    present = sorted(int(fold) for fold in per_fold)
    expected = set(range(num_folds)) | set(fold_folders)
    missing = sorted(expected - set(present))
    if missing:
        logger.warning("%s: no validation summary for folds %s, so summarising folds %s.", task, missing, present)
    return {"task": task, "type": kind, "folds_present": present, "folds_missing": missing, "per_fold": {}, "plots": {}}


def summarize_results(
    dataset_name_or_folder: str | int | os.PathLike,
    num_folds: int = DEFAULT_NUM_FOLDS,
    write_report: bool = True,
) -> dict:
    """Summarise every trained task of a dataset and write summary.json, summary.md, plots and report.html.

    Returns the summary dictionary. Raises FileNotFoundError when no task has a fold with a
    validation summary.
    """
    results_folder = resolve_results_folder(dataset_name_or_folder)
    plots_folder = results_folder / PLOTS_FOLDER_NAME

    tasks: dict[str, dict] = {}
    for task_folder in sorted(child for child in results_folder.iterdir() if child.is_dir()):
        name = task_folder.name
        if SEGMENTATION_TASK.match(name):
            tasks[name] = _summarize_segmentation_task(name, task_folder, num_folds, plots_folder)
        elif name == FINDINGS_TASK:
            tasks[name] = _summarize_findings_task(name, task_folder, num_folds, plots_folder)
        else:
            continue

        logs = _training_logs({f"fold_{fold}": folder for fold, folder in _fold_folders(task_folder).items()})
        if logs:
            tasks[name]["plots"]["loss"] = str(plot_loss_curves(logs, name, plots_folder / f"loss_{name}.png"))

    trained = {name: task for name, task in tasks.items() if task["folds_present"]}
    if not trained:
        raise FileNotFoundError(
            f"No trained task in {results_folder}: expected seg_{{view}}/fold_{{k}}/{VALIDATION_SUMMARY.as_posix()} "
            f"or cls/fold_{{k}}/{VALIDATION_SUMMARY.as_posix()}. Train and validate a fold first (ortho_train)."
        )

    pretraining: dict[str, dict] = {}
    for task_folder in sorted(child for child in results_folder.iterdir() if child.is_dir() and PRETRAIN_TASK.match(child.name)):
        logs = _training_logs({task_folder.name: task_folder})
        if logs:
            pretraining[task_folder.name] = {"plots": {"loss": str(plot_loss_curves(logs, task_folder.name, plots_folder / f"loss_{task_folder.name}.png"))}}

    summary = {
        "dataset": results_folder.name,
        "results_folder": str(results_folder),
        "num_folds_expected": num_folds,
        "tasks": trained,
        "tasks_without_results": sorted(set(tasks) - set(trained)),
        "pretraining": pretraining,
        "std": "sample standard deviation across folds (ddof=1), null with fewer than two folds",
    }

    if write_report:
        write_json_atomic(summary, results_folder / "summary.json")
        write_markdown_summary(summary, results_folder / "summary.md")
        write_html_report(summary, results_folder / "report.html")
        logger.info("Wrote summary.json, summary.md and report.html to %s", results_folder)
    return summary
