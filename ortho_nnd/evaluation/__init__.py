"""Evaluation: segmentation and diagnosis metrics, ortho_evaluate, ortho_summarize and the HTML report."""
from ortho_nnd.evaluation.csv_io import read_reference_csv, read_validation_probabilities, write_validation_probabilities
from ortho_nnd.evaluation.findings import evaluate_findings_csv, read_thresholds_json
from ortho_nnd.evaluation.findings_metrics import (
    average_precision,
    bootstrap_auc_ci,
    choose_threshold,
    compute_findings_metrics,
    expected_calibration_error,
    roc_auc,
)
from ortho_nnd.evaluation.json_io import write_json_atomic
from ortho_nnd.evaluation.segmentation import (
    GeometryMismatchError,
    evaluate_segmentation_folder,
    labels_from_dataset_json,
    summarize_case_metrics,
)
from ortho_nnd.evaluation.segmentation_metrics import compute_segmentation_metrics
from ortho_nnd.evaluation.summarize import summarize_results
from ortho_nnd.evaluation.training_log import read_training_log_json, write_training_log_json

__all__ = [
    "GeometryMismatchError",
    "average_precision",
    "bootstrap_auc_ci",
    "choose_threshold",
    "compute_findings_metrics",
    "compute_segmentation_metrics",
    "evaluate_findings_csv",
    "evaluate_segmentation_folder",
    "expected_calibration_error",
    "labels_from_dataset_json",
    "read_reference_csv",
    "read_thresholds_json",
    "read_training_log_json",
    "read_validation_probabilities",
    "roc_auc",
    "summarize_case_metrics",
    "summarize_results",
    "write_json_atomic",
    "write_training_log_json",
    "write_validation_probabilities",
]
