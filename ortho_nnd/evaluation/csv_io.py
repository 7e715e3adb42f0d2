"""Read and write the findings CSV files: references, predictions and validation probabilities.

Formats (see documentation/evaluation.md):

- reference: ``case[,subject],finding_1,...`` with cells 0 or 1. An empty cell means "not annotated".
- predictions: ``case,{finding}...`` with probabilities in [0, 1] and optional ``{finding}_decision`` (0/1).
- validation probabilities: the predictions format plus ``{finding}_reference`` columns
  (0, 1 or empty), written by trainers with :func:`write_validation_probabilities`.
"""
from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ortho_nnd.atomic_files import atomic_output

logger = logging.getLogger(__name__)

CASE_COLUMN = "case"
SUBJECT_COLUMN = "subject"
DECISION_SUFFIX = "_decision"
REFERENCE_SUFFIX = "_reference"

# Expected cell contents, also used in error messages.
LABEL_KIND = "a label (0, 1 or empty)"
PROBABILITY_KIND = "a probability in [0, 1]"


@dataclass
class FindingsTable:
    """Table of cases by findings read from a CSV file, with NaN for an empty cell."""

    path: Path
    cases: list[str]
    findings: list[str]
    values: np.ndarray


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise FileNotFoundError(f"CSV file not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        header = [name.strip() for name in (reader.fieldnames or [])]
        rows = [{(key or "").strip(): (value or "").strip() for key, value in row.items()} for row in reader]
    if CASE_COLUMN not in header:
        raise ValueError(f"{path} has no '{CASE_COLUMN}' column (header: {header}). The first column must be '{CASE_COLUMN}'.")
    if len(set(header)) != len(header):
        raise ValueError(f"{path} has duplicate column names in its header {header}. Rename them.")

    cases = [row[CASE_COLUMN] for row in rows]
    if any(not case for case in cases):
        raise ValueError(f"{path} has a row with an empty '{CASE_COLUMN}' cell (row {cases.index('') + 2}). Fill or remove it.")
    duplicates = sorted({case for case in cases if cases.count(case) > 1})
    if duplicates:
        raise ValueError(f"{path} lists cases more than once: {duplicates}. Keep one row per case.")
    return header, rows


def _parse_cell(text: str, path: Path, row_number: int, column: str, kind: str) -> float:
    if text == "":
        return float("nan")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"Invalid value {text!r} in {path}, row {row_number}, column {column!r}: expected {kind}.") from None

    if kind == LABEL_KIND and value not in (0.0, 1.0):
        raise ValueError(f"Invalid value {text!r} in {path}, row {row_number}, column {column!r}: expected {kind}.")
    if kind == PROBABILITY_KIND and not 0.0 <= value <= 1.0:
        raise ValueError(f"Invalid value {text!r} in {path}, row {row_number}, column {column!r}: expected {kind}.")
    return value


def _table(path: Path, rows: list[dict[str, str]], columns: Sequence[str], names: Sequence[str], kind: str) -> FindingsTable:
    values = np.full((len(rows), len(columns)), np.nan)
    for row_index, row in enumerate(rows):
        for column_index, column in enumerate(columns):
            values[row_index, column_index] = _parse_cell(row.get(column, ""), path, row_index + 2, column, kind)
    return FindingsTable(path, [row[CASE_COLUMN] for row in rows], list(names), values)


def read_reference_csv(path: str | os.PathLike) -> FindingsTable:
    """Read a reference findings CSV, in which every column except ``case`` and ``subject`` is a finding."""
    path = Path(path)
    header, rows = _read_rows(path)
    findings = [name for name in header if name not in (CASE_COLUMN, SUBJECT_COLUMN)]
    if not findings:
        raise ValueError(f"{path} has no finding columns besides '{CASE_COLUMN}' and '{SUBJECT_COLUMN}'.")
    return _table(path, rows, findings, findings, LABEL_KIND)


def read_predictions_csv(path: str | os.PathLike, findings: Sequence[str]) -> tuple[FindingsTable, FindingsTable | None]:
    """Read probabilities (and ``{finding}_decision`` columns when all are present) for ``findings``.

    Returns (probabilities, decisions or None). Empty probability cells are an error.
    """
    path = Path(path)
    header, rows = _read_rows(path)
    missing = [name for name in findings if name not in header]
    if missing:
        raise ValueError(
            f"{path} lacks probability columns for findings {missing} (header: {header}). "
            f"Add a column named after each finding with its probability."
        )

    probabilities = _table(path, rows, findings, findings, PROBABILITY_KIND)
    empty = np.argwhere(np.isnan(probabilities.values))
    if empty.size:
        row, column = empty[0]
        raise ValueError(f"{path}, row {row + 2}, column {findings[column]!r}: empty probability. Every case needs a probability for every finding.")

    decision_columns = [name + DECISION_SUFFIX for name in findings]
    present = [column in header for column in decision_columns]
    decisions = None
    if all(present):
        decisions = _table(path, rows, decision_columns, findings, LABEL_KIND)
    elif any(present):
        logger.warning("%s has decision columns for only some findings, so they are ignored and thresholds are used.", path)
    return probabilities, decisions


def read_validation_probabilities(path: str | os.PathLike) -> tuple[FindingsTable, FindingsTable]:
    """Read a validation probabilities CSV, returning (probabilities, references)."""
    path = Path(path)
    header, _ = _read_rows(path)
    findings = [name[: -len(REFERENCE_SUFFIX)] for name in header if name.endswith(REFERENCE_SUFFIX)]
    if not findings:
        raise ValueError(f"{path} has no '{{finding}}{REFERENCE_SUFFIX}' columns, so it contains no reference labels. Write it with write_validation_probabilities and references.")

    probabilities, _ = read_predictions_csv(path, findings)
    _, rows = _read_rows(path)
    references = _table(path, rows, [name + REFERENCE_SUFFIX for name in findings], findings, LABEL_KIND)
    return probabilities, references


def write_validation_probabilities(
    path: str | os.PathLike,
    cases: Sequence[str],
    probs: np.ndarray,
    refs: np.ndarray | None,
    findings: Sequence[str],
) -> Path:
    """Write ``case,{finding}...,{finding}_reference...`` to ``path`` (atomic write).

    ``probs`` and ``refs`` have shape (N, K) in ``findings`` order. NaN in ``refs`` (or
    ``refs=None``) writes an empty reference cell ("not annotated").
    """
    path = Path(path)
    probs = np.asarray(probs, dtype=float)
    refs = np.full_like(probs, np.nan) if refs is None else np.asarray(refs, dtype=float)
    expected_shape = (len(cases), len(findings))
    if probs.shape != expected_shape or refs.shape != expected_shape:
        raise ValueError(f"Expected probs and refs of shape {expected_shape} (cases, findings), got {probs.shape} and {refs.shape}.")

    header = [CASE_COLUMN, *findings, *(name + REFERENCE_SUFFIX for name in findings)]
    with atomic_output(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        for case, probability_row, reference_row in zip(cases, probs, refs):
            references = ["" if np.isnan(value) else str(int(value)) for value in reference_row]
            writer.writerow([case, *(f"{value:.6f}" for value in probability_row), *references])
    return path
