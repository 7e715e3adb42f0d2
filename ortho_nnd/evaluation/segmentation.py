"""Evaluate a folder of predicted label images against a folder of reference label images."""
from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from ortho_nnd.evaluation.json_io import read_json, write_json_atomic
from ortho_nnd.evaluation.segmentation_metrics import (
    DEFAULT_NSD_TOLERANCE_MM,
    aggregate_metrics,
    compute_segmentation_metrics,
    foreground_labels,
)

logger = logging.getLogger(__name__)

# Largest difference accepted between prediction and reference spacing and origin (mm) and
# direction cosines (unitless). Resampling round trips leave differences far below this.
GEOMETRY_TOLERANCE = 1e-3

# Suffix that ortho_predict may add to a prediction name: {case}_{view}_seg{file_ending}.
PREDICTION_SUFFIX = "_seg"


class GeometryMismatchError(ValueError):
    """A prediction and its reference differ in size, spacing, origin or direction."""


def _geometry(image: sitk.Image) -> dict:
    return {
        "size": list(image.GetSize()),
        "spacing": list(image.GetSpacing()),
        "origin": list(image.GetOrigin()),
        "direction": list(image.GetDirection()),
    }


def check_same_geometry(prediction: sitk.Image, reference: sitk.Image, prediction_file: str, reference_file: str) -> None:
    """Raise GeometryMismatchError naming both files and geometries when they differ beyond GEOMETRY_TOLERANCE."""
    prediction_geometry = _geometry(prediction)
    reference_geometry = _geometry(reference)

    same_size = prediction_geometry["size"] == reference_geometry["size"]
    same_rest = all(
        len(prediction_geometry[key]) == len(reference_geometry[key])
        and np.allclose(prediction_geometry[key], reference_geometry[key], rtol=0.0, atol=GEOMETRY_TOLERANCE)
        for key in ("spacing", "origin", "direction")
    )
    if same_size and same_rest:
        return

    raise GeometryMismatchError(
        f"Geometry mismatch between prediction {prediction_file} {prediction_geometry} and reference "
        f"{reference_file} {reference_geometry}. Export the prediction on the reference grid "
        "(ortho_predict does this) before evaluating."
    )


def _strip_ending(name: str, file_ending: str) -> str | None:
    return name[: -len(file_ending)] if name.endswith(file_ending) else None


def match_prediction_files(
    predictions_folder: Path, references_folder: Path, file_ending: str
) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """Pair reference files with prediction files.

    A reference ``{name}{file_ending}`` matches a prediction with the same name or with the
    name ``{name}_seg{file_ending}``. Returns the matched ``(name, prediction, reference)``
    triples and the reference names without a prediction.
    """
    reference_names = sorted(
        stem for stem in (_strip_ending(path.name, file_ending) for path in references_folder.iterdir() if path.is_file())
        if stem is not None
    )
    if not reference_names:
        raise FileNotFoundError(
            f"No reference files ending in {file_ending!r} in {references_folder}. "
            "Check the folder or pass the file ending of the references."
        )

    prediction_files = {path.name: path for path in predictions_folder.iterdir() if path.is_file()}
    matched: list[tuple[str, Path, Path]] = []
    missing: list[str] = []
    used: set[str] = set()
    for name in reference_names:
        candidates = [name + PREDICTION_SUFFIX + file_ending, name + file_ending]
        found = next((candidate for candidate in candidates if candidate in prediction_files), None)
        if found is None:
            missing.append(name)
            continue
        used.add(found)
        matched.append((name, prediction_files[found], references_folder / (name + file_ending)))

    unused = sorted(name for name in prediction_files if name.endswith(file_ending) and name not in used)
    if unused:
        logger.warning("%d prediction files have no reference and are ignored: %s", len(unused), unused[:10])
    return matched, missing


def evaluate_case(
    prediction_file: str | os.PathLike,
    reference_file: str | os.PathLike,
    labels: Mapping[str, int],
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
) -> dict:
    """Read one prediction and its reference, check their geometry and compute the per-class metrics."""
    prediction_image = sitk.ReadImage(str(prediction_file))
    reference_image = sitk.ReadImage(str(reference_file))
    check_same_geometry(prediction_image, reference_image, str(prediction_file), str(reference_file))

    prediction = sitk.GetArrayFromImage(prediction_image)
    reference = sitk.GetArrayFromImage(reference_image)
    if prediction.ndim != 3:
        raise ValueError(f"Expected a 3D label image, got {prediction.ndim} dimensions in {prediction_file}.")

    known_values = set(foreground_labels(labels).values()) | {0}
    unknown = sorted(set(np.unique(prediction).tolist()) - known_values)
    if unknown:
        logger.warning("Prediction %s contains label values %s that are not in the labels, so they are ignored.", prediction_file, unknown)

    # SimpleITK spacing is (x, y, z) but the array axes are (z, y, x).
    spacing = reference_image.GetSpacing()[::-1]
    metrics = compute_segmentation_metrics(prediction, reference, spacing, labels, nsd_tolerance_mm)
    return {"prediction_file": str(prediction_file), "reference_file": str(reference_file), "metrics": metrics}


def _evaluate_case_star(arguments: tuple) -> dict:
    return evaluate_case(*arguments)


def labels_from_dataset_json(dataset_json: str | os.PathLike) -> dict[str, int]:
    """Return the ``labels`` entry of a dataset.json, raising a clear error when it is missing."""
    dataset = read_json(dataset_json)
    labels = dataset.get("labels") if isinstance(dataset, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise ValueError(f"{dataset_json} has no 'labels' mapping (name to integer). Add it or pass the labels directly.")
    return {str(name): value for name, value in labels.items()}


def labels_from_references(reference_files: Sequence[Path]) -> dict[str, int]:
    """Build ``{"label_<value>": value}`` from the values found in the reference images."""
    values: set[int] = set()
    for path in reference_files:
        values.update(int(value) for value in np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))))
    values.discard(0)
    return {f"label_{value}": value for value in sorted(values)}


def evaluate_segmentation_folder(
    predictions_folder: str | os.PathLike,
    references_folder: str | os.PathLike,
    labels: Mapping[str, int] | None,
    file_ending: str = ".nii.gz",
    num_processes: int = 1,
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
    output_json: str | os.PathLike | None = None,
    allow_missing: bool = False,
) -> dict:
    """Evaluate every reference in ``references_folder`` against its prediction.

    Returns (and writes to ``output_json`` when given) a summary with ``metric_per_case``,
    ``mean`` (per class), ``foreground_mean``, ``counts``, ``missing_predictions`` and
    ``settings``. ``labels=None`` takes the label values found in the references. A reference
    without prediction raises FileNotFoundError unless ``allow_missing`` is set, in which case
    it is skipped and listed.
    """
    predictions_folder = Path(predictions_folder)
    references_folder = Path(references_folder)
    for folder, role in ((predictions_folder, "predictions"), (references_folder, "references")):
        if not folder.is_dir():
            raise FileNotFoundError(f"The {role} folder {folder} does not exist.")
    if num_processes < 1:
        raise ValueError(f"Invalid number of processes {num_processes}: expected 1 or more.")

    matched, missing = match_prediction_files(predictions_folder, references_folder, file_ending)
    if missing and not allow_missing:
        raise FileNotFoundError(
            f"{len(missing)} references in {references_folder} have no prediction in {predictions_folder} "
            f"(expected {{name}}{PREDICTION_SUFFIX}{file_ending} or {{name}}{file_ending}): {missing}. "
            "Predict them, or pass allow_missing (--allow_missing) to evaluate the others."
        )
    if missing:
        logger.warning("Skipping %d references without prediction: %s", len(missing), missing)
    if not matched:
        raise FileNotFoundError(f"No prediction in {predictions_folder} matches a reference in {references_folder}.")

    if labels is None:
        labels = labels_from_references([reference for _, _, reference in matched])
        logger.info("No labels given, so using the values found in the references: %s", labels)
    class_names = list(foreground_labels(labels))

    arguments = [(prediction, reference, dict(labels), nsd_tolerance_mm) for _, prediction, reference in matched]
    if num_processes == 1:
        results = [_evaluate_case_star(item) for item in tqdm(arguments, desc="Evaluating cases")]
    else:
        with ProcessPoolExecutor(max_workers=num_processes) as executor:
            results = list(tqdm(executor.map(_evaluate_case_star, arguments), total=len(arguments), desc="Evaluating cases"))

    metric_per_case = [{"case": name, **result} for (name, _, _), result in zip(matched, results)]
    summary = {
        "metric_per_case": metric_per_case,
        **aggregate_metrics(metric_per_case, class_names),
        "missing_predictions": missing,
        "settings": {
            "labels": {name: int(value) for name, value in labels.items()},
            "nsd_tolerance_mm": nsd_tolerance_mm,
            "file_ending": file_ending,
            "predictions_folder": str(predictions_folder),
            "references_folder": str(references_folder),
            "geometry_tolerance": GEOMETRY_TOLERANCE,
        },
    }

    if output_json is not None:
        write_json_atomic(summary, output_json)
        logger.info("Wrote segmentation summary to %s", output_json)
    return summary


def summarize_case_metrics(
    metric_per_case: Sequence[Mapping], labels: Mapping[str, int], settings: Mapping | None = None
) -> dict:
    """Build the summary dictionary from in-memory per-case results, for trainers that evaluate arrays.

    Each entry of ``metric_per_case`` needs ``case`` and ``metrics`` (the output of
    compute_segmentation_metrics). Returns the same structure as evaluate_segmentation_folder.
    """
    class_names = list(foreground_labels(labels))
    entries = [dict(entry) for entry in metric_per_case]
    return {
        "metric_per_case": entries,
        **aggregate_metrics(entries, class_names),
        "missing_predictions": [],
        "settings": {"labels": {name: int(value) for name, value in labels.items()}, **dict(settings or {})},
    }
