"""Render the cross-fold summary as Markdown tables and as a self-contained HTML report.

The HTML report embeds every plot as a base64 PNG and carries its CSS inline, so it opens
offline and references no external file, script or URL.
"""
from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Mapping, Sequence

from ortho_nnd.atomic_files import write_text_atomic
from ortho_nnd.evaluation.findings_metrics import MACRO_METRICS
from ortho_nnd.evaluation.json_io import nan_if_none

# Metrics shown in the tables, with their column titles.
SEGMENTATION_COLUMNS = {"dice": "Dice", "iou": "IoU", "hd95": "HD95 (mm)", "nsd": "NSD", "volume_difference_ml": "Volume diff. (ml)"}
FINDINGS_COLUMNS = {"auc": "AUC", "average_precision": "AP", "sensitivity": "Sensitivity", "specificity": "Specificity", "f1": "F1", "ece": "ECE"}

# Decimal places of the numbers in the tables.
DECIMALS = 3

_CSS = """
body { font-family: sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; margin-top: 2em; } h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.5em 0 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #eee; }
tr.aggregate td { font-weight: bold; background: #f6f6f6; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
.note { color: #666; font-size: 0.9em; }
"""


def format_mean_std(statistics: Mapping[str, float] | None) -> str:
    """Format ``{"mean", "std"}`` as ``mean ± std``, printing undefined values as ``n/a``."""
    if not statistics:
        return "n/a"
    mean = nan_if_none(statistics.get("mean"))
    std = nan_if_none(statistics.get("std"))
    if mean != mean:
        return "n/a"
    if std != std:
        return f"{mean:.{DECIMALS}f}"
    return f"{mean:.{DECIMALS}f} ± {std:.{DECIMALS}f}"


def task_table(task: Mapping) -> tuple[list[str], list[list[str]], set[int]]:
    """Return (header, rows, indices of aggregate rows) of the across-fold table of one task."""
    across = task.get("across_folds", {})
    if task["type"] == "segmentation":
        columns = SEGMENTATION_COLUMNS
        rows = [[name, *(format_mean_std(metrics.get(key)) for key in columns)] for name, metrics in across.get("mean", {}).items()]
        aggregates = [["foreground mean", *(format_mean_std(across.get("foreground_mean", {}).get(key)) for key in columns)]]
        header = ["structure", *columns.values()]
    else:
        columns = FINDINGS_COLUMNS
        rows = [[name, *(format_mean_std(metrics.get(key)) for key in columns)] for name, metrics in across.get("per_finding", {}).items()]
        aggregates = [
            [label, *(format_mean_std(across.get(key, {}).get(metric)) if metric in MACRO_METRICS else "n/a" for metric in columns)]
            for label, key in (("macro average", "macro"), ("micro average", "micro"))
        ]
        header = ["finding", *columns.values()]
    return header, rows + aggregates, set(range(len(rows), len(rows) + len(aggregates)))


# Main metrics per fold shown in the HTML report: (column title, summary section, metric).
PER_FOLD_COLUMNS = {
    "segmentation": [("Dice", "foreground_mean", "dice"), ("NSD", "foreground_mean", "nsd"), ("HD95 (mm)", "foreground_mean", "hd95")],
    "findings": [("macro AUC", "macro", "auc"), ("micro AUC", "micro", "auc"), ("macro F1", "macro", "f1"), ("macro ECE", "macro", "ece")],
}


def per_fold_table(task: Mapping) -> tuple[list[str], list[list[str]]]:
    """Return (header, rows) with the main metrics of each fold of one task."""
    columns = PER_FOLD_COLUMNS[task["type"]]
    header = ["fold", *(title for title, _, _ in columns)]
    rows = []
    for fold, values in task.get("per_fold", {}).items():
        cells = [format_mean_std({"mean": values.get(section, {}).get(metric)}) for _, section, metric in columns]
        rows.append([str(fold), *cells])
    return header, rows


def _task_notes(task: Mapping) -> list[str]:
    notes = [f"Folds summarised: {task['folds_present'] or 'none'}."]
    if task["folds_missing"]:
        notes.append(f"Folds missing: {task['folds_missing']}.")
    notes.append("Values are mean ± sample standard deviation across folds.")
    return notes


def write_markdown_summary(summary: Mapping, path: str | os.PathLike) -> Path:
    """Write one Markdown table per task, with the folds present and missing."""
    lines = [f"# Results summary: {summary['dataset']}", ""]
    for name, task in summary["tasks"].items():
        header, rows, _ = task_table(task)
        lines += [f"## {name} ({task['type']})", "", *_task_notes(task), ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("| " + " | ".join(["---"] * len(header)) + " |")
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    if summary.get("tasks_without_results"):
        lines += [f"Tasks without any validated fold: {', '.join(summary['tasks_without_results'])}.", ""]
    return write_text_atomic("\n".join(lines), Path(path))


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]], aggregate_rows: set[int]) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = []
    for index, row in enumerate(rows):
        css_class = ' class="aggregate"' if index in aggregate_rows else ""
        body.append(f"<tr{css_class}>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _html_image(path: str, caption: str) -> str:
    encoded = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{encoded}"><figcaption class="note">{html.escape(caption)}</figcaption></figure>'


PLOT_CAPTIONS = {
    "dice": "Dice per case and structure, pooled over folds",
    "roc": "ROC curves per finding, validation cases pooled over folds",
    "reliability": "Reliability diagram per finding, pooled over folds (10 equal-width bins)",
    "loss": "Training loss per fold",
}


def write_html_report(summary: Mapping, path: str | os.PathLike) -> Path:
    """Write a self-contained HTML report: tables per task and embedded PNG plots."""
    title = f"ortho_nnd results: {summary['dataset']}"
    parts = [f"<h1>{html.escape(title)}</h1>", f'<p class="note">Results folder: {html.escape(summary["results_folder"])}</p>']

    for name, task in summary["tasks"].items():
        header, rows, aggregates = task_table(task)
        parts.append(f"<h2>{html.escape(name)} ({html.escape(task['type'])})</h2>")
        parts += [f'<p class="note">{html.escape(note)}</p>' for note in _task_notes(task)]
        parts.append(_html_table(header, rows, aggregates))
        fold_header, fold_rows = per_fold_table(task)
        parts.append("<h3>Per fold</h3>")
        parts.append(_html_table(fold_header, fold_rows, set()))
        for key, plot_path in task.get("plots", {}).items():
            parts.append(_html_image(plot_path, f"{name}: {PLOT_CAPTIONS.get(key, key)}"))

    for name, entry in summary.get("pretraining", {}).items():
        parts.append(f"<h2>{html.escape(name)} (pretraining)</h2>")
        parts += [_html_image(plot_path, f"{name}: {PLOT_CAPTIONS.get(key, key)}") for key, plot_path in entry.get("plots", {}).items()]

    if summary.get("tasks_without_results"):
        parts.append(f'<p class="note">Tasks without any validated fold: {html.escape(", ".join(summary["tasks_without_results"]))}.</p>')

    document = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
    return write_text_atomic(document, Path(path))
