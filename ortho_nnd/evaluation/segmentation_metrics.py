"""Per-class segmentation metrics on label arrays: Dice, IoU, HD95, NSD and volume difference.

All distances are in millimetres. ``spacing`` is given in array axis order, so for an array
from ``SimpleITK.GetArrayFromImage`` it is ``image.GetSpacing()[::-1]``.

Rules for empty masks (documented in documentation/evaluation.md):

- class absent in prediction and reference: Dice, IoU, NSD and HD95 are NaN, the case is
  excluded from that class's mean and counted as ``absent_in_both``;
- class present in only one of the two: Dice, IoU and NSD are 0 (they enter the means), HD95
  is NaN (excluded from the HD95 mean) and ``hd95_undefined`` names the empty side.
"""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

# Default tolerance of the normalised surface distance, in mm.
DEFAULT_NSD_TOLERANCE_MM = 1.0

# Percentile of the surface distances reported as the robust Hausdorff distance.
HAUSDORFF_PERCENTILE = 95.0

# Cubic millimetres per millilitre.
MM3_PER_ML = 1000.0

# Metrics whose per-class mean is reported. The flags and counts stay per case.
MEAN_METRICS = ("dice", "iou", "hd95", "nsd", "volume_difference_ml", "relative_volume_difference")

# The surface of a mask is the set of its voxels with a face neighbour outside the mask,
# so erosion uses the 6-neighbourhood.
_FACE_CONNECTIVITY = ndimage.generate_binary_structure(3, 1)


def foreground_labels(labels: Mapping[str, int]) -> dict[str, int]:
    """Return the labels without background (value 0), checking that every value is an integer."""
    result: dict[str, int] = {}
    for name, value in labels.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(
                f"Invalid label value {value!r} for {name!r}: expected an integer. "
                "Region labels (lists of values) are not supported by the evaluation."
            )
        if int(value) != 0:
            result[str(name)] = int(value)
    if not result:
        raise ValueError(f"No foreground label in {dict(labels)}: give at least one label with a value other than 0.")
    return result


def _check_inputs(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    if prediction.shape != reference.shape:
        raise ValueError(f"Prediction shape {prediction.shape} differs from reference shape {reference.shape}.")
    if prediction.ndim != 3:
        raise ValueError(f"Expected 3D label arrays, got {prediction.ndim} dimensions (shape {prediction.shape}).")

    spacing_array = np.asarray(spacing, dtype=float)
    if spacing_array.shape != (3,) or not np.all(spacing_array > 0):
        raise ValueError(f"Invalid spacing {tuple(spacing)}: expected three positive values in mm, in array axis order.")
    return spacing_array


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Return the voxels of ``mask`` that have a face neighbour outside it (or outside the array)."""
    eroded = ndimage.binary_erosion(mask, structure=_FACE_CONNECTIVITY, border_value=0)
    return mask & ~eroded


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Return the slices of the smallest box around the non-zero voxels, grown by ``margin`` and clipped to the array."""
    box = []
    for axis in range(mask.ndim):
        other_axes = tuple(index for index in range(mask.ndim) if index != axis)
        occupied = np.flatnonzero(mask.any(axis=other_axes))
        box.append(slice(max(int(occupied[0]) - margin, 0), min(int(occupied[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def _distances_to_surface(surface: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Return, for every voxel, the Euclidean distance in mm to the nearest voxel of ``surface``."""
    return ndimage.distance_transform_edt(~surface, sampling=spacing)


def surface_distance_metrics(
    prediction_mask: np.ndarray,
    reference_mask: np.ndarray,
    spacing: np.ndarray,
    nsd_tolerance_mm: float,
) -> tuple[float, float]:
    """Return (HD95, NSD) for two non-empty boolean masks.

    HD95 is the larger of the two directed 95th percentiles of surface-to-surface distances.
    NSD is the fraction of surface voxels of both masks that lie within the tolerance of the
    other surface.
    """
    # Both surfaces lie inside the bounding box of the union, so distances computed in that
    # box are exact. One voxel of margin keeps the box edge from creating surface voxels.
    box = _bounding_box(prediction_mask | reference_mask, margin=1)
    prediction_mask = prediction_mask[box]
    reference_mask = reference_mask[box]

    prediction_surface = surface_voxels(prediction_mask)
    reference_surface = surface_voxels(reference_mask)

    # NOTE: distances are measured between voxel centres, and each surface voxel counts once
    # whatever its face area. With anisotropic spacing this differs from a mesh-based NSD.
    prediction_to_reference = _distances_to_surface(reference_surface, spacing)[prediction_surface]
    reference_to_prediction = _distances_to_surface(prediction_surface, spacing)[reference_surface]

    hd95 = max(
        float(np.percentile(prediction_to_reference, HAUSDORFF_PERCENTILE)),
        float(np.percentile(reference_to_prediction, HAUSDORFF_PERCENTILE)),
    )
    within_tolerance = np.count_nonzero(prediction_to_reference <= nsd_tolerance_mm) + np.count_nonzero(
        reference_to_prediction <= nsd_tolerance_mm
    )
    nsd = within_tolerance / (prediction_to_reference.size + reference_to_prediction.size)
    return hd95, float(nsd)


def compute_class_metrics(
    prediction_mask: np.ndarray,
    reference_mask: np.ndarray,
    spacing: np.ndarray,
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
) -> dict:
    """Compute the metrics of one class from two boolean masks (see the module docstring for empty masks)."""
    voxel_volume_ml = float(np.prod(spacing)) / MM3_PER_ML

    true_positives = int(np.count_nonzero(prediction_mask & reference_mask))
    prediction_voxels = int(np.count_nonzero(prediction_mask))
    reference_voxels = int(np.count_nonzero(reference_mask))
    false_positives = prediction_voxels - true_positives
    false_negatives = reference_voxels - true_positives

    volume_difference_ml = (prediction_voxels - reference_voxels) * voxel_volume_ml
    relative_volume_difference = (
        (prediction_voxels - reference_voxels) / reference_voxels if reference_voxels > 0 else float("nan")
    )

    result = {
        "dice": float("nan"),
        "iou": float("nan"),
        "hd95": float("nan"),
        "nsd": float("nan"),
        "volume_prediction_ml": prediction_voxels * voxel_volume_ml,
        "volume_reference_ml": reference_voxels * voxel_volume_ml,
        "volume_difference_ml": volume_difference_ml,
        "relative_volume_difference": relative_volume_difference,
        "n_true_positive": true_positives,
        "n_false_positive": false_positives,
        "n_false_negative": false_negatives,
        "n_prediction": prediction_voxels,
        "n_reference": reference_voxels,
        "absent_in_both": False,
        "hd95_undefined": None,
    }

    if prediction_voxels == 0 and reference_voxels == 0:
        result["absent_in_both"] = True
        return result

    result["dice"] = 2 * true_positives / (prediction_voxels + reference_voxels)
    result["iou"] = true_positives / (true_positives + false_positives + false_negatives)

    if prediction_voxels == 0 or reference_voxels == 0:
        result["nsd"] = 0.0
        result["hd95_undefined"] = "empty_prediction" if prediction_voxels == 0 else "empty_reference"
        return result

    result["hd95"], result["nsd"] = surface_distance_metrics(prediction_mask, reference_mask, spacing, nsd_tolerance_mm)
    return result


def compute_segmentation_metrics(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing: Sequence[float],
    labels: Mapping[str, int],
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
) -> dict:
    """Compute per-class metrics of one case from two integer label arrays.

    ``spacing`` is in mm, in array axis order. ``labels`` maps names to label values, and the
    background (value 0) is skipped. Returns ``{class_name: {metric: value}}`` as produced by
    :func:`compute_class_metrics`.
    """
    spacing_array = _check_inputs(np.asarray(prediction), np.asarray(reference), spacing)
    if nsd_tolerance_mm < 0:
        raise ValueError(f"Invalid NSD tolerance {nsd_tolerance_mm} mm: expected a value >= 0.")

    prediction = np.asarray(prediction)
    reference = np.asarray(reference)
    return {
        name: compute_class_metrics(prediction == value, reference == value, spacing_array, nsd_tolerance_mm)
        for name, value in foreground_labels(labels).items()
    }


def aggregate_metrics(metric_per_case: Sequence[Mapping[str, Mapping[str, dict]]], class_names: Sequence[str]) -> dict:
    """Average per-case metrics into per-class means, a foreground mean and counts.

    ``metric_per_case`` is a list of ``{"metrics": {class: {metric: value}}}`` entries. NaN
    values are left out of each mean. The foreground mean of a metric is the mean of the
    per-class means that are defined.
    """
    mean: dict[str, dict[str, float]] = {}
    counts: dict[str, dict[str, int]] = {}

    for name in class_names:
        per_metric_values = {metric: [] for metric in MEAN_METRICS}
        absent_in_both = 0
        empty_prediction = 0
        empty_reference = 0
        for case in metric_per_case:
            class_metrics = case["metrics"][name]
            for metric in MEAN_METRICS:
                per_metric_values[metric].append(class_metrics[metric])
            absent_in_both += int(class_metrics["absent_in_both"])
            empty_prediction += int(class_metrics["hd95_undefined"] == "empty_prediction")
            empty_reference += int(class_metrics["hd95_undefined"] == "empty_reference")

        mean[name] = {metric: _nanmean(values) for metric, values in per_metric_values.items()}
        counts[name] = {
            "n_cases": len(metric_per_case),
            "n_evaluated": len(metric_per_case) - absent_in_both,
            "absent_in_both": absent_in_both,
            "empty_prediction_only": empty_prediction,
            "empty_reference_only": empty_reference,
        }

    foreground_mean = {metric: _nanmean([mean[name][metric] for name in class_names]) for metric in MEAN_METRICS}
    return {"mean": mean, "foreground_mean": foreground_mean, "counts": counts}


def _nanmean(values: Sequence[float]) -> float:
    array = np.asarray(values, dtype=float)
    finite = array[np.isfinite(array)]
    return float(finite.mean()) if finite.size else float("nan")
