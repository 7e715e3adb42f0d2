"""Set-up shared by the segmentation and classification fine-tuning commands.

Public API:

- ``load_finetune_context(dataset, plans_name) -> FinetuneContext``: the preprocessed dataset
  folder, plans, dataset.json, findings table (None without findings.csv) and the labelled
  training cases. Those are the cases with ``source == "imagesTr"`` in any planned view, so
  unlabelled scans are never used.
- ``dataset_splits(context) -> list[dict]``: ``splits_final.json`` (read, or created on the main
  process) grouped by the findings table's subjects and stratified by its findings.
- ``run_output_folder(dataset_name, run_name, fold, plans_name) -> Path``:
  ``ORTHO_results/{dataset}/{run_name}[__{plans_name}]/fold_{k}`` or ``fold_all``.
- ``finetune_settings(args, training_plans, output_folder, iterations_key)``: ``TrainerSettings``
  with the fine-tuning learning rate (``finetune_learning_rate`` of the plans, or ``--lr``) and
  poly decay unless ``--decay`` selects cosine.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ortho_nnd import paths
from ortho_nnd.dataset import FindingsTable, load_json, read_findings_csv
from ortho_nnd.planning.plans import DEFAULT_PLANS_NAME, load_plans, plans_path
from ortho_nnd.training.base_trainer import TrainerSettings
from ortho_nnd.training.data import list_preprocessed_cases
from ortho_nnd.training.distributed import is_main_process
from ortho_nnd.training.label_fraction import select_label_subset
from ortho_nnd.training.splits import DEFAULT_SPLIT_SEED, fold_cases, fold_index, load_or_create_splits

logger = logging.getLogger(__name__)

LABELLED_SOURCE = "imagesTr"
FINDINGS_FILE = "findings.csv"
DEFAULT_FINETUNE_DECAY = "poly"
DEFAULT_FINETUNE_LEARNING_RATE = 1e-3
DEFAULT_BACKBONE_LR_FACTOR = 0.1
DEFAULT_FINETUNE_ITERATIONS = 25_000
DEFAULT_FINETUNE_SEED = 12345


@dataclass
class FinetuneContext:
    dataset_name: str
    dataset_folder: Path
    plans: dict
    dataset_json: dict
    findings: FindingsTable | None
    training_cases: list[str]

    def view_data_folder(self, view: str) -> Path:
        view_plans = self.plans["views"][view]
        return self.dataset_folder / view_plans.get("data_identifier", f"{self.plans.get('plans_name', DEFAULT_PLANS_NAME)}_{view}")


def load_finetune_context(dataset: str, plans_name: str = DEFAULT_PLANS_NAME) -> FinetuneContext:
    """Read plans, dataset.json and findings of a preprocessed dataset."""
    preprocessed = paths.preprocessed_folder()
    dataset_name = paths.dataset_name_from_id(dataset, search_in=preprocessed)
    dataset_folder = preprocessed / dataset_name
    plans = load_plans(plans_path(dataset_folder))
    if plans.get("plans_name", DEFAULT_PLANS_NAME) != plans_name:
        raise ValueError(
            f"{plans_path(dataset_folder)} contains plans {plans.get('plans_name')!r}, not {plans_name!r}. "
            "Pass -p with that name or plan again with the requested name."
        )
    dataset_json = load_json(dataset_folder / "dataset.json")

    findings = None
    findings_path = dataset_folder / FINDINGS_FILE
    if findings_path.is_file():
        findings = read_findings_csv(findings_path, dataset_json.get("findings") or None)

    context = FinetuneContext(dataset_name, dataset_folder, plans, dataset_json, findings, [])
    cases: set[str] = set()
    for view in plans["views"]:
        folder = context.view_data_folder(view)
        if folder.is_dir():
            cases.update(list_preprocessed_cases(folder, sources=[LABELLED_SOURCE]))
    if not cases:
        raise FileNotFoundError(
            f"No preprocessed {LABELLED_SOURCE} cases in {dataset_folder}. Run ortho_plan_and_preprocess first."
        )
    context.training_cases = sorted(cases)
    return context


def dataset_splits(context: FinetuneContext) -> list[dict[str, list[str]]]:
    """Return the 5-fold splits of the dataset's labelled cases (created and saved on first use)."""
    subjects = context.findings.subjects if context.findings is not None else None
    findings = context.findings.values if context.findings is not None else None
    # The split seed is fixed, not --seed, so every run of a dataset uses the same folds.
    return load_or_create_splits(
        context.dataset_folder, context.training_cases, subjects, findings, seed=DEFAULT_SPLIT_SEED, write=is_main_process()
    )


@dataclass
class FoldSelection:
    """Training and validation cases of one fold, after the optional label-fraction subset."""

    fold: int | None
    train_cases: list[str]
    val_cases: list[str]
    seed: int


def select_fold_cases(context: "FinetuneContext", args: argparse.Namespace, cases: list[str], strata_for, what: str) -> FoldSelection:
    """Split ``cases`` by the fold in ``args.task_arg`` and apply ``--label_fraction`` to the training part.

    ``strata_for(train_cases)`` returns the stratum of each training case for the subset. The subset
    depends only on fold, fraction and seed, so pretrained and scratch runs train on the same cases.
    """
    fold = fold_index(args.task_arg)
    if fold is None:
        train_cases, val_cases = sorted(cases), []
    else:
        train_cases, val_cases = fold_cases(dataset_splits(context), fold, cases)
    if not train_cases:
        raise ValueError(f"Fold {fold} has no training case with {what}.")

    label_fraction = getattr(args, "label_fraction", None)
    seed = args.seed if args.seed is not None else DEFAULT_FINETUNE_SEED
    if label_fraction is not None:
        train_cases = select_label_subset(train_cases, label_fraction, fold, seed, strata_for(train_cases))
    return FoldSelection(fold, train_cases, val_cases, seed)


def run_output_folder(dataset_name: str, run_name: str, fold: int | None, plans_name: str = DEFAULT_PLANS_NAME) -> Path:
    suffix = "" if plans_name == DEFAULT_PLANS_NAME else f"__{plans_name}"
    fold_name = "fold_all" if fold is None else f"fold_{fold}"
    return paths.results_folder() / dataset_name / f"{run_name}{suffix}" / fold_name


def iterations_from_args(args: argparse.Namespace, training_plans: dict, iterations_key: str, num_cases: int, batch_size: int) -> int:
    if getattr(args, "epochs", None) is not None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        return args.epochs * max(math.ceil(num_cases / (batch_size * world_size)), 1)
    if getattr(args, "iterations", None):
        return int(args.iterations)
    return int(training_plans.get(iterations_key, training_plans.get("finetune_iterations", DEFAULT_FINETUNE_ITERATIONS)))


def finetune_settings(args: argparse.Namespace, training_plans: dict, output_folder: Path, iterations: int) -> TrainerSettings:
    """Build trainer settings from the plans' fine-tuning entries and the command line."""
    from ortho_nnd.training.pretrain import settings_from_args

    plans_for_finetuning = dict(training_plans)
    plans_for_finetuning["learning_rate"] = training_plans.get("finetune_learning_rate", DEFAULT_FINETUNE_LEARNING_RATE)
    settings = settings_from_args(args, plans_for_finetuning, output_folder, iterations)
    settings.decay = getattr(args, "decay", None) or DEFAULT_FINETUNE_DECAY
    settings.seed = args.seed if getattr(args, "seed", None) is not None else DEFAULT_FINETUNE_SEED
    return settings


def backbone_lr_factor(args: argparse.Namespace, training_plans: dict) -> float:
    factor = getattr(args, "backbone_lr_factor", None)
    if factor is None:
        factor = training_plans.get("backbone_lr_factor", DEFAULT_BACKBONE_LR_FACTOR)
    if not 0 < float(factor) <= 1:
        raise ValueError(f"Invalid --backbone_lr_factor {factor}: must be in (0, 1].")
    return float(factor)
