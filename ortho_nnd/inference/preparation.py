"""Reading and preprocessing one exam for the loaded models (runs in a background thread)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import SimpleITK as sitk

from ortho_nnd import io
from ortho_nnd.inference.input_discovery import Exam
from ortho_nnd.inference.model_loading import ModelSet, preprocessing_key
from ortho_nnd.preprocessing.preprocessor import PreprocessedScan, preprocess_scan

logger = logging.getLogger(__name__)

# Value of the ``source`` property of scans preprocessed at prediction time.
PREDICTION_SOURCE = "imagesTs"


@dataclass
class PreparedExam:
    """The images of an exam's used views and their preprocessed arrays per plans."""

    exam: Exam
    images: dict[str, sitk.Image] = field(default_factory=dict)
    preprocessed: dict[tuple[str, str], PreprocessedScan] = field(default_factory=dict)
    seg_views: list[str] = field(default_factory=list)
    cls_views: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class ExamError(ValueError):
    """An exam cannot be predicted; the message names the exam, the cause and the fix."""


def _plans_needed(models: ModelSet, view: str, seg_views: list[str], cls_views: list[str]) -> list[dict]:
    """Return the distinct view plans (by preprocessing key) that the models need for ``view``."""
    plans = []
    if view in seg_views:
        plans.extend(fold.view_plans for fold in models.segmentation[view].folds)
    if view in cls_views:
        plans.extend(fold.view_plans[view] for fold in models.classification.folds)

    unique = {}
    for view_plans in plans:
        unique.setdefault(preprocessing_key(view, view_plans), view_plans)
    return list(unique.values())


def plan_exam_views(exam: Exam, models: ModelSet) -> tuple[list[str], list[str], list[str]]:
    """Return (segmentation views, diagnosis views, warnings) for the views the exam has."""
    warnings = []
    seg_views = []
    for view in models.segmentation:
        if view in exam.chosen:
            seg_views.append(view)
        else:
            warnings.append(f"Exam {exam.case} has no {view} series, so its {view} segmentation is skipped.")

    cls_views = []
    if models.classification is not None:
        cls_views = [view for view in models.classification.views if view in exam.chosen]
        missing = [view for view in models.classification.views if view not in exam.chosen]
        if not cls_views:
            warnings.append(
                f"Exam {exam.case} has none of the views {models.classification.views} of the diagnosis model, "
                f"so diagnosis is skipped."
            )
        elif missing:
            warnings.append(f"Exam {exam.case} has no {', '.join(missing)} series; diagnosis uses {', '.join(cls_views)}.")
    return seg_views, cls_views, warnings


def prepare_exam(exam: Exam, models: ModelSet) -> PreparedExam:
    """Read the exam's used series and preprocess them exactly as for training.

    Raises ExamError when grouping found errors, when no view is usable, or when a series cannot
    be read or fails the preprocessing checks.
    """
    if exam.errors:
        raise ExamError(f"Exam {exam.case} is invalid: " + " ".join(exam.errors))

    seg_views, cls_views, warnings = plan_exam_views(exam, models)
    if not seg_views and not cls_views:
        raise ExamError(
            f"Exam {exam.case} has the views {sorted(exam.chosen)}, but the models need "
            f"{sorted(set(models.segmentation) | set(models.classification.views if models.classification else []))}. "
            f"Check the view detection of its series or name them {{case}}_{{view}}."
        )

    prepared = PreparedExam(exam=exam, seg_views=seg_views, cls_views=cls_views, warnings=warnings)
    for view in sorted(set(seg_views) | set(cls_views)):
        series = exam.chosen[view]
        try:
            image = io.read_image(series.path, series.series_uid)
        except io.ImageReadError as error:
            raise ExamError(f"Exam {exam.case}: {error}") from error
        prepared.images[view] = image

        for view_plans in _plans_needed(models, view, seg_views, cls_views):
            try:
                scan = preprocess_scan(
                    image, view_plans, view, exam.case, source=PREDICTION_SOURCE, image_name=series.label
                )
            except ValueError as error:
                raise ExamError(f"Exam {exam.case}: {error}") from error
            prepared.preprocessed[preprocessing_key(view, view_plans)] = scan
    return prepared
