"""Cross-validation folds grouped by subject and stratified by findings.

Public API:

- ``make_splits(cases, subjects=None, findings=None, num_folds=5, seed=12345) -> list[dict]``
  returns ``[{"train": [...], "val": [...]}, ...]``. All cases of one subject land in the same
  fold. A case without a subject is its own group.
- ``validate_splits(splits, known_cases, source) -> list[dict]`` checks a user-written split list.
- ``load_or_create_splits(preprocessed_dataset_folder, cases, subjects, findings, ...)`` reads
  ``splits_final.json`` when it exists (a user-written file wins) and otherwise creates and
  saves it.
- ``fold_cases(splits, fold, available) -> (train, val)`` restricts one fold to the cases a task
  can use (for example cases with labels in the view), keeping the order.

Stratification is greedy: groups are sorted by their number of positive findings (most first,
ties broken by a seeded shuffle) and each group goes to the fold where it adds the least to the
fold's share of each finding's positives and of all cases. So each fold gets positives of every
finding that has at least ``num_folds`` positive subjects.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ortho_nnd.evaluation.json_io import write_json_atomic

logger = logging.getLogger(__name__)

SPLITS_FILE_NAME = "splits_final.json"
DEFAULT_NUM_FOLDS = 5
DEFAULT_SPLIT_SEED = 12345


def _group_cases(cases: Sequence[str], subjects: Mapping[str, str] | None) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for case in cases:
        subject = (subjects or {}).get(case) or ""
        # Prefix keeps a case id from colliding with a subject id of the same spelling.
        key = f"subject:{subject}" if subject else f"case:{case}"
        groups.setdefault(key, []).append(case)
    return groups


def _positive_counts(cases: Sequence[str], findings: Mapping[str, Sequence[float]] | None, num_findings: int) -> np.ndarray:
    counts = np.zeros(num_findings)
    for case in cases:
        values = np.asarray((findings or {}).get(case, [math.nan] * num_findings), dtype=float)
        counts += np.nan_to_num(values, nan=0.0) > 0.5
    return counts


def make_splits(
    cases: Sequence[str],
    subjects: Mapping[str, str] | None = None,
    findings: Mapping[str, Sequence[float]] | None = None,
    num_folds: int = DEFAULT_NUM_FOLDS,
    seed: int = DEFAULT_SPLIT_SEED,
) -> list[dict[str, list[str]]]:
    """Return ``num_folds`` splits over ``cases`` grouped by subject and balanced by positive findings.

    findings: per case a vector of 0, 1 or NaN (not annotated); cases absent from it count as
    not annotated.
    """
    cases = sorted(set(cases))
    if num_folds < 2:
        raise ValueError(f"Invalid number of folds {num_folds}: need at least 2.")
    groups = _group_cases(cases, subjects)
    if len(groups) < num_folds:
        raise ValueError(
            f"Only {len(groups)} subjects (or cases without subject) for {num_folds} folds. Add cases, write "
            f"{SPLITS_FILE_NAME} yourself, or train with fold 'all'."
        )

    num_findings = len(next(iter(findings.values()))) if findings else 0
    group_keys = sorted(groups)
    group_positives = {key: _positive_counts(groups[key], findings, num_findings) for key in group_keys}
    total_positives = np.maximum(sum(group_positives.values(), np.zeros(num_findings)), 1.0)

    # Seeded shuffle first, then a stable sort, so ties between equal groups depend only on the seed.
    rng = np.random.default_rng(seed)
    order = [group_keys[i] for i in rng.permutation(len(group_keys))]
    order.sort(key=lambda key: (-group_positives[key].sum(), -len(groups[key])))

    fold_positives = np.zeros((num_folds, num_findings))
    fold_sizes = np.zeros(num_folds)
    fold_groups: list[list[str]] = [[] for _ in range(num_folds)]
    for key in order:
        positives, size = group_positives[key], len(groups[key])
        # Cost: the largest share of any finding's positives, then the share of all cases, after adding the group.
        shares = (fold_positives + positives) / total_positives
        finding_cost = shares.max(axis=1) if num_findings else np.zeros(num_folds)
        size_cost = (fold_sizes + size) / len(cases)
        # Groups without positives are placed by size only; rounding lets near-equal costs tie.
        primary = np.round(finding_cost, 9) if positives.sum() > 0 else np.zeros(num_folds)
        fold = int(np.lexsort((np.arange(num_folds), size_cost, primary))[0])
        fold_positives[fold] += positives
        fold_sizes[fold] += size
        fold_groups[fold].append(key)

    splits = []
    for fold in range(num_folds):
        val = sorted(case for key in fold_groups[fold] for case in groups[key])
        val_set = set(val)
        splits.append({"train": [case for case in cases if case not in val_set], "val": val})
    return splits


def validate_splits(splits, known_cases: Sequence[str], source: str) -> list[dict[str, list[str]]]:
    """Check a split list (from a user-written file); raise ValueError naming the problem."""
    if not isinstance(splits, list) or not splits:
        raise ValueError(f"{source} must contain a non-empty JSON list of {{'train': [...], 'val': [...]}} objects.")
    known = set(known_cases)
    for fold, split in enumerate(splits):
        if not isinstance(split, dict) or not isinstance(split.get("train"), list) or not isinstance(split.get("val"), list):
            raise ValueError(f"{source}: fold {fold} must be an object with 'train' and 'val' lists of case ids.")
        unknown = sorted(case for case in set(split["train"]) | set(split["val"]) if case not in known)
        if unknown:
            raise ValueError(
                f"{source}: fold {fold} names cases that are not labelled training cases (imagesTr) of this dataset: "
                f"{unknown[:20]}. Remove them or fix their ids."
            )
        overlap = sorted(set(split["train"]) & set(split["val"]))
        if overlap:
            raise ValueError(f"{source}: fold {fold} has cases in both 'train' and 'val': {overlap[:20]}.")
    return splits


def load_or_create_splits(
    preprocessed_dataset_folder: str | os.PathLike,
    cases: Sequence[str],
    subjects: Mapping[str, str] | None = None,
    findings: Mapping[str, Sequence[float]] | None = None,
    num_folds: int = DEFAULT_NUM_FOLDS,
    seed: int = DEFAULT_SPLIT_SEED,
    write: bool = True,
) -> list[dict[str, list[str]]]:
    """Read ``splits_final.json`` if present (validated against ``cases``), else create and save it."""
    path = Path(preprocessed_dataset_folder) / SPLITS_FILE_NAME
    if path.is_file():
        try:
            splits = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"Invalid JSON in {path}: {error}. Fix the file or delete it to recreate the splits.") from error
        logger.info("Using the existing splits in %s (%d folds)", path, len(splits) if isinstance(splits, list) else 0)
        return validate_splits(splits, cases, str(path))

    splits = make_splits(cases, subjects, findings, num_folds, seed)
    if write:
        write_json_atomic(splits, path)
        logger.info("Wrote %d-fold splits over %d cases to %s", num_folds, len(set(cases)), path)
    return splits


def fold_index(fold: str | int) -> int | None:
    """Turn 'fold3', '3' or 3 into 3 and 'all' into None."""
    if isinstance(fold, str) and fold == "all":
        return None
    text = str(fold)
    text = text[len("fold"):] if text.startswith("fold") else text
    if not text.isdigit():
        raise ValueError(f"Invalid fold {fold!r}: use fold0 ... fold4 (or the number) or 'all'.")
    return int(text)


def fold_cases(
    splits: Sequence[Mapping[str, Sequence[str]]], fold: int | None, available: Sequence[str]
) -> tuple[list[str], list[str]]:
    """Return the (train, val) cases of ``fold`` that are in ``available``; fold None trains on all of them."""
    available_set = set(available)
    if fold is None:
        return sorted(available_set), []
    if not 0 <= fold < len(splits):
        raise ValueError(f"Fold {fold} does not exist: the splits have {len(splits)} folds (0 to {len(splits) - 1}).")

    train = [case for case in splits[fold]["train"] if case in available_set]
    val = [case for case in splits[fold]["val"] if case in available_set]
    unassigned = sorted(available_set - set(train) - set(val))
    if unassigned:
        logger.warning("Fold %d: %d usable cases are in neither train nor val and are not used: %s", fold, len(unassigned), unassigned[:10])
    return train, val
