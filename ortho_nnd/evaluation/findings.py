"""Evaluate a predictions CSV of finding probabilities against a reference findings CSV."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from ortho_nnd.evaluation.csv_io import read_predictions_csv, read_reference_csv, read_validation_probabilities
from ortho_nnd.evaluation.findings_metrics import (
    DEFAULT_BOOTSTRAP_RESAMPLES,
    DEFAULT_BOOTSTRAP_SEED,
    compute_findings_metrics,
)
from ortho_nnd.evaluation.json_io import read_json, write_json_atomic
from ortho_nnd.evaluation.plots import plot_reliability, plot_roc_curves

logger = logging.getLogger(__name__)

RELIABILITY_PLOT_NAME = "reliability.png"
ROC_PLOT_NAME = "roc_curves.png"


def read_thresholds_json(path: str | os.PathLike) -> dict[str, float]:
    """Read ``{"finding": threshold}`` or ``{"thresholds": {"finding": threshold}}`` from a JSON file."""
    data = read_json(path)
    if isinstance(data, dict) and isinstance(data.get("thresholds"), dict):
        data = data["thresholds"]
    if not isinstance(data, dict) or not all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in data.values()):
        raise ValueError(
            f"Invalid thresholds file {path}: expected a JSON object mapping finding names to numbers, "
            'for example {"effusion": 0.42}.'
        )
    return {str(name): float(value) for name, value in data.items()}


def evaluate_findings_csv(
    predictions_csv: str | os.PathLike,
    reference_csv: str | os.PathLike | None,
    thresholds: Mapping[str, float] | str | os.PathLike | None = None,
    output_json: str | os.PathLike | None = None,
    plot_folder: str | os.PathLike | None = None,
    allow_missing: bool = False,
    n_bootstrap: int = DEFAULT_BOOTSTRAP_RESAMPLES,
    seed: int = DEFAULT_BOOTSTRAP_SEED,
) -> dict:
    """Compute findings metrics for the cases of ``reference_csv`` from ``predictions_csv``.

    ``reference_csv=None`` reads the references from ``{finding}_reference`` columns of
    ``predictions_csv`` (the validation probabilities format). ``thresholds`` is a mapping or
    the path of a thresholds JSON. Reference cases without prediction raise ValueError unless
    ``allow_missing`` is set. Writes the summary JSON and, with ``plot_folder``, a reliability
    diagram and ROC curves.
    """
    if reference_csv is None:
        probabilities, references = read_validation_probabilities(predictions_csv)
        decisions = None
    else:
        references = read_reference_csv(reference_csv)
        probabilities, decisions = read_predictions_csv(predictions_csv, references.findings)

    if thresholds is not None and not isinstance(thresholds, Mapping):
        thresholds = read_thresholds_json(thresholds)

    row_of_prediction = {case: row for row, case in enumerate(probabilities.cases)}
    missing = [case for case in references.cases if case not in row_of_prediction]
    if missing and not allow_missing:
        raise ValueError(
            f"{len(missing)} cases of {references.path} have no row in {predictions_csv}: {missing[:20]}. "
            "Predict them, or pass allow_missing (--allow_missing) to evaluate the others."
        )
    extra = sorted(set(probabilities.cases) - set(references.cases))
    if extra:
        logger.warning("%d cases of %s are not in the reference and are ignored: %s", len(extra), predictions_csv, extra[:20])

    evaluated = [case for case in references.cases if case in row_of_prediction]
    if not evaluated:
        raise ValueError(f"No case of {predictions_csv} appears in the reference {references.path}.")
    prediction_rows = [row_of_prediction[case] for case in evaluated]
    reference_rows = [references.cases.index(case) for case in evaluated]

    metrics = compute_findings_metrics(
        probabilities.values[prediction_rows],
        references.values[reference_rows],
        references.findings,
        thresholds=thresholds,
        decisions=None if decisions is None else decisions.values[prediction_rows],
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    metrics["missing_predictions"] = missing
    metrics["settings"].update({"predictions_csv": str(predictions_csv), "reference_csv": str(references.path)})

    if plot_folder is not None:
        plot_folder = Path(plot_folder)
        calibration = {name: values["calibration"] for name, values in metrics["per_finding"].items()}
        plot_reliability(calibration, plot_folder / RELIABILITY_PLOT_NAME)

        scores_and_labels = {}
        for column, name in enumerate(references.findings):
            labels = references.values[reference_rows, column]
            annotated = np.isfinite(labels)
            scores_and_labels[name] = (probabilities.values[prediction_rows, column][annotated], labels[annotated])
        plot_roc_curves(scores_and_labels, plot_folder / ROC_PLOT_NAME)
        metrics["plots"] = {"reliability": str(plot_folder / RELIABILITY_PLOT_NAME), "roc": str(plot_folder / ROC_PLOT_NAME)}

    if output_json is not None:
        write_json_atomic(metrics, output_json)
        logger.info("Wrote findings summary to %s", output_json)
    return metrics
