"""Table (Markdown) and plot (PNG) of a label-efficiency result (see label_efficiency.py)."""
from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

# Task -> axis title of its panel in the plot.
PANEL_TITLES = {"seg": "Segmentation: mean foreground Dice", "cls": "Diagnosis: macro AUC"}
LINE_STYLES = {"pretrained": {"marker": "o", "color": "tab:blue"}, "scratch": {"marker": "s", "color": "tab:orange"}}


def _format(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "undefined"
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def write_markdown_table(result: dict, path: Path) -> Path:
    """Write one table row per task and fraction: pretrained, scratch and their difference."""
    rows = {(row["task"], row["fraction"], row["initialisation"]): row for row in result["rows"]}
    settings = result["settings"]
    lines = [
        f"# Label efficiency on {result['dataset']}",
        "",
        f"Evaluation: {result['evaluation']}. Seeds: {', '.join(str(seed) for seed in settings['seeds'])}; "
        f"values are mean ± sample standard deviation over the seeds (no ± with one seed).",
        f"Iterations: segmentation {settings['iterations'] or 'plans default'}, "
        f"diagnosis {settings['cls_iterations'] or settings['iterations'] or 'plans default'}.",
        "",
        "| task | metric | label fraction | training cases | pretrained | from scratch | pretrained − scratch |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    task_order = list(PANEL_TITLES)
    for task, fraction in sorted({(key[0], key[1]) for key in rows}, key=lambda item: (task_order.index(item[0]), item[1])):
        pretrained = rows.get((task, fraction, "pretrained"))
        scratch = rows.get((task, fraction, "scratch"))
        difference = "n/a"
        if pretrained and scratch and pretrained["mean"] is not None and scratch["mean"] is not None:
            difference = f"{pretrained['mean'] - scratch['mean']:+.3f}"
        reference = pretrained or scratch
        cases = ", ".join(str(count) for count in reference["training_cases"])
        lines.append(
            f"| {task} | {reference['metric']} | {fraction:g} | {cases} | "
            f"{_format(pretrained['mean'], pretrained['std']) if pretrained else 'n/a'} | "
            f"{_format(scratch['mean'], scratch['std']) if scratch else 'n/a'} | {difference} |"
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def plot_label_efficiency(result: dict, path: Path) -> Path:
    """Plot each task's metric against the label fraction, one line per initialisation, error bars = std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({row["task"] for row in result["rows"]}, key=lambda task: list(PANEL_TITLES).index(task))
    figure, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        for initialisation, style in LINE_STYLES.items():
            rows = sorted(
                (row for row in result["rows"] if row["task"] == task and row["initialisation"] == initialisation and row["mean"] is not None),
                key=lambda row: row["fraction"],
            )
            if not rows:
                continue
            axis.errorbar(
                [row["fraction"] for row in rows],
                [row["mean"] for row in rows],
                yerr=[row["std"] or 0.0 for row in rows],
                label=initialisation, capsize=3, **style,
            )
        axis.set_xscale("log")
        axis.set_xticks(sorted({row["fraction"] for row in result["rows"]}))
        axis.get_xaxis().set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        axis.set_xlabel("label fraction (log scale)")
        axis.set_title(PANEL_TITLES[task])
        axis.grid(alpha=0.3)
        axis.legend()

    figure.suptitle(f"{result['dataset']}: fine-tuning from pretrained vs random weights")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
