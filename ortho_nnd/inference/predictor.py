"""The ``ortho_predict`` run: exams in, segmentations, probabilities, findings and records out.

Per exam, in this order: ``{case}_{view}_seg{ending}`` for each segmented view (optionally
``{case}_{view}_probabilities.npz`` and ``.json``), ``{case}_overlay.png`` with ``--overlay``,
and last the exam record ``{case}_findings.json``, whose presence with status "complete" marks
the exam as finished. findings.csv is removed at the start and rebuilt from the records at the
end. While one exam is predicted, a background thread reads and preprocesses the next one.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ortho_nnd import io
from ortho_nnd.inference import outputs
from ortho_nnd.inference.input_discovery import Exam
from ortho_nnd.inference.model_loading import ModelSet
from ortho_nnd.inference.preparation import PreparedExam, prepare_exam
from ortho_nnd.inference.task_prediction import labels_from_probabilities, predict_findings, segment_view
from ortho_nnd.labels import channel_values

logger = logging.getLogger(__name__)

# Version of the exam record layout, stored in each record.
RECORD_FORMAT_VERSION = 1


@dataclass
class PredictionSettings:
    """Options of one prediction run (the ``ortho_predict`` flags)."""

    output_folder: Path
    device: torch.device
    step_size: float = 0.5
    use_mirroring: bool = True
    save_probabilities: bool = False
    overlay: bool = False
    continue_run: bool = False
    window_progress: bool = False


@dataclass
class RunSummary:
    """Outcome of a run: case names per outcome and the error message of each failed exam."""

    succeeded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    warnings: dict[str, list[str]] = field(default_factory=dict)

    def log(self) -> None:
        logger.info(
            "Prediction finished: %d exams succeeded, %d already finished (skipped), %d failed.",
            len(self.succeeded), len(self.skipped), len(self.failed),
        )
        for case, message in self.failed.items():
            logger.error("Failed exam %s: %s", case, message)


def _write_segmentations(
    prepared: PreparedExam, models: ModelSet, settings: PredictionSettings, record: dict
) -> dict:
    """Segment every segmentation view of the exam, write its files and return the label images."""
    case = prepared.exam.case
    label_images = {}
    for view in prepared.seg_views:
        model = models.segmentation[view]
        series = prepared.exam.chosen[view]
        image = prepared.images[view]

        probabilities = segment_view(
            model, prepared, settings.device, settings.step_size, settings.use_mirroring, settings.window_progress
        )
        labels = labels_from_probabilities(probabilities, channel_values(model.labels.values()))
        # The output takes the geometry of the image as read, so it matches the input exactly.
        label_image = io.image_from_array(labels, io.geometry_of(image))
        ending = outputs.output_ending(series.path, series.is_dicom)
        segmentation_path = settings.output_folder / f"{case}_{view}_seg{ending}"
        io.write_image(label_image, segmentation_path)
        label_images[view] = label_image

        entry = {"file": segmentation_path.name, "folds": [fold.fold for fold in model.folds], "probabilities": None}
        if settings.save_probabilities:
            stem = f"{case}_{view}_probabilities"
            outputs.write_npz_atomic(settings.output_folder / f"{stem}.npz", probabilities=probabilities.astype(np.float16))
            outputs.write_json_atomic(
                {
                    "case": case,
                    "view": view,
                    "array": "probabilities",
                    "dtype": "float16",
                    "shape": list(probabilities.shape),
                    "axis_order": "class, then the input scan's numpy order (z, y, x) = SimpleITK index (2, 1, 0)",
                    "labels": model.labels,
                    "geometry": io.geometry_of(image),
                },
                settings.output_folder / f"{stem}.json",
            )
            entry["probabilities"] = f"{stem}.npz"
        record["segmentation"][view] = entry
    return label_images


def _write_overlay(prepared: PreparedExam, label_images: dict, models: ModelSet, settings: PredictionSettings) -> str:
    from ortho_nnd.visualization import plot_exam_overlay

    views = {view: (image, label_images.get(view)) for view, image in sorted(prepared.images.items())}
    path = settings.output_folder / f"{prepared.exam.case}_overlay.png"
    plot_exam_overlay(views, path, label_names=models.label_names or None, title=prepared.exam.case)
    return path.name


def predict_exam(prepared: PreparedExam, models: ModelSet, settings: PredictionSettings) -> dict:
    """Run every task on one prepared exam, write its files and return its record (written last)."""
    exam = prepared.exam
    started = time.monotonic()
    record = {
        "format_version": RECORD_FORMAT_VERSION,
        "case": exam.case,
        "status": "running",
        "views_present": sorted(exam.chosen),
        "views_used": {"seg": list(prepared.seg_views), "cls": list(prepared.cls_views)},
        "series": {view: series.to_json() for view, series in sorted(exam.chosen.items())},
        "series_skipped": [{**series.to_json(), "reason": reason} for series, reason in exam.skipped],
        "warnings": list(prepared.warnings),
        "segmentation": {},
        "findings": None,
        "models": {
            "segmentation": {view: model.to_json() for view, model in models.segmentation.items()},
            "classification": models.classification.to_json() if models.classification else None,
        },
        "settings": {
            "step_size": settings.step_size,
            "mirroring": settings.use_mirroring,
            "device": str(settings.device),
        },
    }

    label_images = _write_segmentations(prepared, models, settings, record)

    if prepared.cls_views:
        diagnosis = predict_findings(models.classification, prepared, settings.device)
        record["findings"] = diagnosis["findings"]
        record["fusion"] = diagnosis["fusion"]
        record["view_weights"] = diagnosis.get("view_weights")

    if settings.overlay:
        record["overlay"] = _write_overlay(prepared, label_images, models, settings)

    record["status"] = outputs.STATUS_COMPLETE
    record["seconds"] = round(time.monotonic() - started, 3)
    outputs.write_json_atomic(record, outputs.exam_record_path(settings.output_folder, exam.case))
    return record


def select_part(exams: list[Exam], num_parts: int, part_id: int) -> list[Exam]:
    """Return every ``num_parts``-th exam starting at ``part_id`` (exams are sorted by case)."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise ValueError(f"Invalid --num_parts {num_parts} / --part_id {part_id}: need num_parts >= 1 and 0 <= part_id < num_parts.")
    return exams[part_id::num_parts]


def _write_labels_file(models: ModelSet, output_folder: Path) -> None:
    if models.segmentation:
        outputs.write_json_atomic(
            {"labels": models.label_names, "views": sorted(models.segmentation)}, output_folder / outputs.LABELS_FILE
        )


def run_prediction(exams: list[Exam], models: ModelSet, settings: PredictionSettings) -> RunSummary:
    """Predict ``exams`` one after the other, preparing the next exam in a background thread."""
    output_folder = Path(settings.output_folder)
    output_folder.mkdir(parents=True, exist_ok=True)
    summary = RunSummary()

    # An old table would look complete while this run is still going, so it is removed first.
    (output_folder / outputs.FINDINGS_TABLE).unlink(missing_ok=True)
    _write_labels_file(models, output_folder)

    pending = []
    for exam in exams:
        if settings.continue_run and outputs.read_exam_record(outputs.exam_record_path(output_folder, exam.case)):
            logger.info("Exam %s is already finished; skipping it (--continue).", exam.case)
            summary.skipped.append(exam.case)
        else:
            pending.append(exam)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare") as executor:
        next_future: Future | None = executor.submit(prepare_exam, pending[0], models) if pending else None
        for index, exam in enumerate(tqdm(pending, desc="exams", unit="exam")):
            future = next_future
            next_future = executor.submit(prepare_exam, pending[index + 1], models) if index + 1 < len(pending) else None
            _predict_one(exam, future, models, settings, summary)

    findings = models.classification.findings if models.classification else None
    outputs.rebuild_findings_table(output_folder, findings)
    summary.log()
    return summary


def _predict_one(exam: Exam, future: Future, models: ModelSet, settings: PredictionSettings, summary: RunSummary) -> None:
    """Wait for the exam's preparation, predict it, and record success or failure in ``summary``."""
    try:
        prepared = future.result()
        for warning in prepared.warnings:
            logger.warning("%s", warning)
        predict_exam(prepared, models, settings)
    except KeyboardInterrupt:
        raise
    except Exception as error:  # noqa: BLE001
        # One bad exam (unreadable file, failed check, out of memory) must not stop the others,
        # so every error is recorded with its type and the run continues.
        message = f"{type(error).__name__}: {error}"
        logger.error("Exam %s failed: %s", exam.case, message)
        logger.debug("Traceback of exam %s", exam.case, exc_info=True)
        summary.failed[exam.case] = message
        return

    summary.succeeded.append(exam.case)
    if prepared.warnings:
        summary.warnings[exam.case] = list(prepared.warnings)
