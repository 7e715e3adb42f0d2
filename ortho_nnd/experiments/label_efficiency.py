"""Label-efficiency experiment: pretrained against from-scratch fine-tuning at several label fractions.

For every seed, label fraction and task (segmentation of the labelled view, diagnosis from all
views), two runs train with the same iterations, seed and label subset. One starts from the
dataset's pretrained diffusion models, the other from random weights (``--pretrained none``).
Each run is evaluated on the validation cases of one fold: mean foreground Dice for
segmentation and macro AUC for diagnosis (``validation/summary.json`` of the run).

The runs write into a private results root per seed,
``ORTHO_results/{dataset}/experiments/label_efficiency/runs/seed_{s}/``, which links to the
dataset's pretraining checkpoints. The user's own fine-tuning runs are therefore never
overwritten. Missing pretraining checkpoints are trained first, in the normal results folder.

Outputs in ``ORTHO_results/{dataset}/experiments/label_efficiency/``: ``label_efficiency.json``
(every run and the aggregates), ``label_efficiency.md`` (table) and ``label_efficiency.png``
(Dice and macro AUC against the label fraction). ``records/`` keeps one JSON per finished run;
a rerun with the same settings reuses them.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ortho_nnd import paths
from ortho_nnd.evaluation.json_io import read_json
from ortho_nnd.experiments.stages import run_stage
from ortho_nnd.experiments.workspace import ortho_environment, write_json
from ortho_nnd.planning.plans import DEFAULT_PLANS_NAME, load_plans, plans_path

logger = logging.getLogger(__name__)

EXPERIMENT_FOLDER = Path("experiments") / "label_efficiency"
TASKS = ("seg", "cls")
INITIALISATIONS = ("pretrained", "scratch")
DEFAULT_FRACTIONS = (0.1, 0.25, 1.0)
DEFAULT_SEEDS = (0,)
FINAL_CHECKPOINT = "checkpoint_final.pth"
LABEL_SUBSET_FILE = "label_subset.json"

# The metric of each task, read from the run's validation/summary.json.
METRIC_NAMES = {"seg": "mean foreground Dice", "cls": "macro AUC"}


@dataclass(frozen=True)
class LabelEfficiencySettings:
    """Options of one experiment. ``None`` iterations mean the plans' defaults."""

    dataset: str
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    tasks: tuple[str, ...] = TASKS
    iterations: int | None = None
    cls_iterations: int | None = None
    pretrain_iterations: int | None = None
    fold: int = 0
    view: str | None = None
    device: str = "auto"
    plans_name: str = DEFAULT_PLANS_NAME
    # Learning-rate factor of the pretrained backbone (None: the plans' value). Runs from random
    # weights always train the backbone at the full learning rate.
    backbone_lr_factor: float | None = None

    def check(self) -> None:
        if not self.fractions:
            raise ValueError("No label fractions given; pass --fractions, for example 0.1,0.25,1.0.")
        for fraction in self.fractions:
            if not 0.0 < fraction <= 1.0:
                raise ValueError(f"Invalid label fraction {fraction}: each fraction must be in (0, 1].")
        if not self.seeds:
            raise ValueError("No seeds given; pass --seeds, for example 0,1,2.")
        invalid = [task for task in self.tasks if task not in TASKS]
        if invalid or not self.tasks:
            raise ValueError(f"Invalid --tasks {list(self.tasks)}: choose from {list(TASKS)}.")
        for name in ("iterations", "cls_iterations", "pretrain_iterations"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"Invalid --{name} {value}: must be at least 1.")
        if self.backbone_lr_factor is not None and not 0 < self.backbone_lr_factor <= 1:
            raise ValueError(f"Invalid --backbone_lr_factor {self.backbone_lr_factor}: must be in (0, 1].")
        if not 0 <= self.fold <= 4:
            raise ValueError(f"Invalid --fold {self.fold}: the splits have folds 0 to 4.")

    def task_iterations(self, task: str) -> int | None:
        if task == "cls" and self.cls_iterations is not None:
            return self.cls_iterations
        return self.iterations


def _plans_suffix(plans_name: str) -> str:
    return "" if plans_name == DEFAULT_PLANS_NAME else f"__{plans_name}"


def run_folder(results_root: Path, dataset_name: str, task: str, view: str, fraction: float, scratch: bool, fold: int, plans_name: str) -> Path:
    """Return the fold folder that ``ortho_train`` writes for this run (see ortho_nnd.training.label_fraction)."""
    from ortho_nnd.training.label_fraction import run_folder_name

    task_name = f"seg_{view}" if task == "seg" else "cls"
    return results_root / dataset_name / f"{run_folder_name(task_name, fraction, scratch)}{_plans_suffix(plans_name)}" / f"fold_{fold}"


def read_metric(task: str, summary_file: Path) -> tuple[float | None, int]:
    """Return the run's mean foreground Dice (seg) or macro AUC (cls), None when undefined, and the validation case count."""
    summary = read_json(summary_file)
    if task == "seg":
        value = summary["foreground_mean"]["dice"]
        cases = len(summary.get("metric_per_case", []))
    else:
        value = summary["macro"]["auc"]
        cases = int(summary.get("settings", {}).get("n_cases", 0))
    if value is None or not math.isfinite(float(value)):
        return None, cases
    return float(value), cases


def _pretrain_folder(results_root: Path, dataset_name: str, view: str, plans_name: str) -> Path:
    return results_root / dataset_name / f"pretrain_{view}{_plans_suffix(plans_name)}"


def ensure_pretrained(settings: LabelEfficiencySettings, dataset_name: str, views: list[str]) -> dict[str, Path]:
    """Return view -> pretraining checkpoint, pretraining the views that have none."""
    checkpoints = {}
    for view in views:
        checkpoint = _pretrain_folder(paths.results_folder(), dataset_name, view, settings.plans_name) / FINAL_CHECKPOINT
        if not checkpoint.is_file():
            logger.info("No pretrained %s model at %s; pretraining it first.", view, checkpoint)
            argv = [dataset_name, "pretrain", view, "--device", settings.device, "-p", settings.plans_name]
            if settings.pretrain_iterations is not None:
                argv += ["--iterations", str(settings.pretrain_iterations)]
            run_stage(f"pretrain {view}", "ortho_train", argv)
        checkpoints[view] = checkpoint
    return checkpoints


def link_checkpoints(checkpoints: dict[str, Path], results_root: Path, dataset_name: str, plans_name: str) -> None:
    """Make each pretraining checkpoint visible under ``results_root`` (symbolic link, or a copy where links fail)."""
    for view, checkpoint in checkpoints.items():
        target = _pretrain_folder(results_root, dataset_name, view, plans_name) / FINAL_CHECKPOINT
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        try:
            os.symlink(checkpoint.resolve(), target)
        except OSError as error:
            # NOTE: Windows without developer mode cannot create symbolic links; a copy costs disk space only.
            logger.info("Cannot link %s (%s); copying it instead.", checkpoint, error)
            shutil.copyfile(checkpoint, target)


def _record_key(settings: LabelEfficiencySettings, task: str, view: str, initialisation: str, checkpoints: dict[str, Path]) -> dict:
    """Return the settings that change a run's result; a stored record with another key is trained again."""
    key = {
        "iterations": settings.task_iterations(task),
        "fold": settings.fold,
        "view": view if task == "seg" else None,
        "plans_name": settings.plans_name,
    }
    if initialisation == "pretrained" and settings.backbone_lr_factor is not None:
        key["backbone_lr_factor"] = settings.backbone_lr_factor
    if initialisation == "pretrained":
        # A new pretraining run replaces checkpoint_final.pth, which changes its modification time.
        used_views = [view] if task == "seg" else sorted(checkpoints)
        key["checkpoint_mtimes"] = {name: int(checkpoints[name].stat().st_mtime) for name in used_views}
    # NOTE: a change of the preprocessed data or of splits_final.json is not detected; delete records/ after one.
    return key


def train_and_evaluate(
    settings: LabelEfficiencySettings, dataset_name: str, view: str, task: str, initialisation: str, fraction: float, seed: int,
    results_root: Path, record_file: Path, checkpoints: dict[str, Path],
) -> dict:
    """Train one run (or reuse its stored record) and return its record."""
    key = _record_key(settings, task, view, initialisation, checkpoints)
    if record_file.is_file():
        record = read_json(record_file)
        if record.get("key") == key:
            logger.info("Reusing %s", record_file)
            return record

    scratch = initialisation == "scratch"
    argv = [
        dataset_name, task, f"fold{settings.fold}", "--label_fraction", repr(float(fraction)), "--seed", str(seed),
        "--device", settings.device, "-p", settings.plans_name,
    ]
    if task == "seg":
        argv += ["--view", view]
    if settings.task_iterations(task) is not None:
        argv += ["--iterations", str(settings.task_iterations(task))]
    if scratch:
        argv += ["--pretrained", "none"]
    elif settings.backbone_lr_factor is not None:
        argv += ["--backbone_lr_factor", str(settings.backbone_lr_factor)]

    name = f"{task} {initialisation} fraction {fraction:g} seed {seed}"
    with ortho_environment({"ORTHO_results": results_root}):
        stage = run_stage(name, "ortho_train", argv)

    folder = run_folder(results_root, dataset_name, task, view, fraction, scratch, settings.fold, settings.plans_name)
    subset = read_json(folder / LABEL_SUBSET_FILE)
    value, validation_cases = read_metric(task, folder / "validation" / "summary.json")
    record = {
        "key": key,
        "task": task,
        "initialisation": initialisation,
        "fraction": float(fraction),
        "seed": int(seed),
        "metric": METRIC_NAMES[task],
        "value": value,
        "training_cases": len(subset["cases"]),
        "validation_cases": validation_cases,
        "seconds": round(stage.seconds, 1),
        "run_folder": str(folder),
        "command": stage.command,
    }
    write_json(record, record_file)
    return record


def aggregate(records: list[dict]) -> list[dict]:
    """Return one row per (task, initialisation, fraction): mean, sample std and count of the defined values."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        groups.setdefault((record["task"], record["initialisation"], record["fraction"]), []).append(record)

    rows = []
    for (task, initialisation, fraction), members in sorted(groups.items()):
        values = np.array([m["value"] for m in members if m["value"] is not None], dtype=float)
        rows.append({
            "task": task,
            "metric": METRIC_NAMES[task],
            "initialisation": initialisation,
            "fraction": fraction,
            "training_cases": sorted({m["training_cases"] for m in members}),
            "mean": float(values.mean()) if values.size else None,
            "std": float(values.std(ddof=1)) if values.size > 1 else None,
            "n_defined": int(values.size),
            "n_runs": len(members),
        })
    return rows


def _plan_views(dataset_name: str, settings: LabelEfficiencySettings) -> tuple[dict, dict]:
    preprocessed = paths.preprocessed_folder() / dataset_name
    plans = load_plans(plans_path(preprocessed))
    dataset_json = read_json(preprocessed / "dataset.json")
    return plans, dataset_json


def run_label_efficiency(settings: LabelEfficiencySettings) -> dict:
    """Run (or resume) the experiment and write its JSON, table and plot. Returns the JSON content."""
    from ortho_nnd.experiments.label_efficiency_report import plot_label_efficiency, write_markdown_table
    from ortho_nnd.training.seg_trainer import default_view

    settings.check()
    dataset_name = paths.dataset_name_from_id(settings.dataset, search_in=paths.preprocessed_folder())
    plans, dataset_json = _plan_views(dataset_name, settings)
    view = settings.view or default_view(dataset_json, plans)
    views = list(plans["views"]) if "cls" in settings.tasks else [view]
    output_folder = paths.results_folder() / dataset_name / EXPERIMENT_FOLDER
    output_folder.mkdir(parents=True, exist_ok=True)

    checkpoints = ensure_pretrained(settings, dataset_name, views)
    records = []
    for seed in settings.seeds:
        results_root = output_folder / "runs" / f"seed_{seed}"
        link_checkpoints(checkpoints, results_root, dataset_name, settings.plans_name)
        # Task-major order: an interrupted run has finished all segmentation runs before the first diagnosis run.
        for task in settings.tasks:
            for fraction in settings.fractions:
                for initialisation in INITIALISATIONS:
                    record_file = output_folder / "records" / f"{task}_{initialisation}_lf{fraction:g}_seed{seed}.json"
                    records.append(train_and_evaluate(
                        settings, dataset_name, view, task, initialisation, fraction, seed, results_root, record_file, checkpoints
                    ))

    result = {
        "dataset": dataset_name,
        "output_folder": str(output_folder),
        "settings": {**dataclasses.asdict(settings), "view": view},
        "evaluation": f"validation cases of fold {settings.fold} (splits_final.json of the preprocessed dataset)",
        "rows": aggregate(records),
        "runs": records,
    }
    write_json(result, output_folder / "label_efficiency.json")
    write_markdown_table(result, output_folder / "label_efficiency.md")
    plot_label_efficiency(result, output_folder / "label_efficiency.png")
    logger.info("Label-efficiency results in %s", output_folder)
    return result
