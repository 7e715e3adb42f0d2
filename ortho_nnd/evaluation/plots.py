"""Matplotlib figures for evaluation: reliability diagram, ROC curves, loss curves, Dice per structure.

Every function writes a PNG and returns its path. The Agg backend is selected on the figure
objects directly, so no display is needed and the global pyplot state is untouched.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ortho_nnd.evaluation.findings_metrics import roc_auc, roc_curve

# Resolution of the written PNG files, in dots per inch.
PLOT_DPI = 100

# Side length of one subplot panel, in inches.
PANEL_INCHES = 3.2


def _new_figure(n_panels: int, max_columns: int = 4) -> tuple[Figure, list]:
    columns = max(1, min(max_columns, n_panels))
    rows = max(1, math.ceil(n_panels / columns))
    figure = Figure(figsize=(PANEL_INCHES * columns, PANEL_INCHES * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel().tolist()
    for axis in axes[n_panels:]:
        axis.set_visible(False)
    return figure, axes[:n_panels]


def _save(figure: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=PLOT_DPI)
    return path


def plot_reliability(per_finding_calibration: Mapping[str, Mapping[str, Sequence[float]]], path: str | os.PathLike) -> Path:
    """Draw one reliability diagram per finding: observed positive fraction against mean probability per bin."""
    names = list(per_finding_calibration)
    figure, axes = _new_figure(max(len(names), 1))
    for axis, name in zip(axes, names):
        bins = per_finding_calibration[name]
        mean_probability = np.asarray(bins["mean_probability"], dtype=float)
        positive_fraction = np.asarray(bins["positive_fraction"], dtype=float)
        filled = np.isfinite(mean_probability) & np.isfinite(positive_fraction)

        axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
        axis.plot(mean_probability[filled], positive_fraction[filled], marker="o", label="model")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("mean predicted probability")
        axis.set_ylabel("observed positive fraction")
    if axes:
        axes[0].legend(fontsize=7, loc="upper left")
    return _save(figure, path)


def plot_roc_curves(scores_and_labels: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike) -> Path:
    """Draw one ROC curve per finding from (scores, 0/1 labels) pairs, leaving the panel of a one-class finding empty."""
    names = list(scores_and_labels)
    figure, axes = _new_figure(max(len(names), 1))
    for axis, name in zip(axes, names):
        scores, labels = scores_and_labels[name]
        axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
        auc = roc_auc(scores, labels)
        if np.isfinite(auc):
            fpr, tpr, _ = roc_curve(scores, labels)
            axis.plot(fpr, tpr, drawstyle="default")
            axis.set_title(f"{name} (AUC {auc:.3f}, n={len(labels)})", fontsize=9)
        else:
            axis.set_title(f"{name} (one class only)", fontsize=9)
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_xlabel("false positive rate")
        axis.set_ylabel("true positive rate")
    return _save(figure, path)


def plot_loss_curves(logs_per_fold: Mapping[str, Mapping[str, Sequence]], title: str, path: str | os.PathLike) -> Path:
    """Draw training loss (and the validation metric when logged) against iteration, one line per fold."""
    has_validation = any(_validation_points(log)[0].size for log in logs_per_fold.values())
    figure, axes = _new_figure(2 if has_validation else 1, max_columns=2)

    for fold, log in logs_per_fold.items():
        axes[0].plot(log["iteration"], log["loss"], label=fold, linewidth=1)
        if has_validation:
            iterations, values = _validation_points(log)
            axes[1].plot(iterations, values, marker="o", markersize=3, label=fold)

    axes[0].set_title(f"{title}: training loss", fontsize=9)
    axes[0].set_xlabel("iteration")
    axes[0].set_ylabel("loss")
    axes[0].legend(fontsize=7)
    if has_validation:
        metric_names = {log.get("val_metric_name") for log in logs_per_fold.values() if log.get("val_metric_name")}
        axes[1].set_title(f"{title}: validation {', '.join(sorted(metric_names)) or 'metric'}", fontsize=9)
        axes[1].set_xlabel("iteration")
        axes[1].legend(fontsize=7)
    return _save(figure, path)


def _validation_points(log: Mapping[str, Sequence]) -> tuple[np.ndarray, np.ndarray]:
    values = log.get("val_metric")
    if not values:
        return np.empty(0), np.empty(0)
    values = np.asarray([np.nan if value is None else value for value in values], dtype=float)
    iterations = np.asarray(log["iteration"], dtype=float)
    keep = np.isfinite(values)
    return iterations[keep], values[keep]


def plot_dice_per_structure(dice_per_structure: Mapping[str, Sequence[float]], title: str, path: str | os.PathLike) -> Path:
    """Draw a box plot of per-case Dice for each structure (NaN values left out)."""
    names = list(dice_per_structure)
    values = [np.asarray([value for value in dice_per_structure[name] if value is not None and np.isfinite(value)]) for name in names]

    figure = Figure(figsize=(max(4.0, 0.6 * len(names) + 2), 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    axis = figure.subplots()
    positions = np.arange(1, len(names) + 1)
    drawn = [index for index, array in enumerate(values) if array.size]
    if drawn:
        axis.boxplot([values[index] for index in drawn], positions=positions[drawn], widths=0.6)
    axis.set_xticks(positions, names, rotation=45, ha="right", fontsize=8)
    axis.set_ylim(0, 1.02)
    axis.set_ylabel("Dice")
    axis.set_title(title, fontsize=9)
    return _save(figure, path)
