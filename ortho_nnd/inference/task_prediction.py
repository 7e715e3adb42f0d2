"""Fold-ensembled segmentation and diagnosis of one prepared exam."""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from ortho_nnd.inference.model_loading import ClassificationModel, SegmentationModel, preprocessing_key
from ortho_nnd.inference.preparation import PreparedExam
from ortho_nnd.inference.sliding_window import predict_sliding_window
from ortho_nnd.labels import channels_to_values
from ortho_nnd.preprocessing.export import probabilities_to_original_array

logger = logging.getLogger(__name__)


def segment_view(
    model: SegmentationModel,
    prepared: PreparedExam,
    device: torch.device,
    step_size: float,
    use_mirroring: bool,
    progress: bool = False,
) -> np.ndarray:
    """Return fold-averaged probabilities (C, z, y, x) on the original grid of the view's scan.

    Folds that share preprocessing are averaged in preprocessed space and mapped back once.
    Folds with other plans are mapped back separately, and all folds weigh the same.
    """
    groups: dict[tuple[str, str], list] = {}
    for fold in model.folds:
        groups.setdefault(preprocessing_key(model.view, fold.view_plans), []).append(fold)

    total = None
    for key, folds in groups.items():
        scan = prepared.preprocessed[key]
        data = torch.from_numpy(scan.data)
        summed = None
        for fold in folds:
            mirror_axes = fold.view_plans["mirror_axes"] if use_mirroring else ()
            probabilities = predict_sliding_window(
                fold.network,
                data,
                fold.view_plans["patch_size"],
                model.num_classes,
                step_size=step_size,
                mirror_axes=mirror_axes,
                gaussian=True,
                device=device,
                progress=progress,
            )
            summed = probabilities if summed is None else summed + probabilities

        original = probabilities_to_original_array(summed.numpy(), scan.properties)
        total = original if total is None else total + original
    return total / len(model.folds)


def labels_from_probabilities(probabilities: np.ndarray, label_values: list[int] | None = None) -> np.ndarray:
    """Return the argmax label map with channel indices replaced by the declared ``label_values``."""
    values = label_values if label_values is not None else list(range(probabilities.shape[0]))
    return channels_to_values(np.argmax(probabilities, axis=0), values)


def center_crop_or_pad(data: np.ndarray, patch_size: Sequence[int]) -> np.ndarray:
    """Return the centre ``patch_size`` block of ``data`` (C, Z, Y, X), padded with 0 outside the scan.

    This is the crop that the classification trainer uses for validation, so a scan gets the
    same classifier input at training and at prediction time.
    """
    from ortho_nnd.training.cls_data import PAD_VALUE, centre_crop_start
    from ortho_nnd.training.data import crop_with_padding

    start = centre_crop_start(data.shape[1:], patch_size)
    return crop_with_padding(data, start, patch_size, PAD_VALUE).astype(np.float32)


def predict_findings(model: ClassificationModel, prepared: PreparedExam, device: torch.device) -> dict:
    """Return the fold-averaged finding probabilities, thresholds, decisions and view weights.

    Each view's preprocessed scan is centre-cropped or padded to the classifier's input patch
    size. The probability is the mean of the folds' sigmoid outputs, the threshold the mean of
    the folds' thresholds, and the decision is ``probability >= threshold``.
    """
    from ortho_nnd.training.device import autocast_context

    probabilities = []
    weights = []
    for fold in model.folds:
        images = {}
        for view in model.views:
            if view not in prepared.cls_views:
                images[view] = None
                continue
            scan = prepared.preprocessed[preprocessing_key(view, fold.view_plans[view])]
            block = center_crop_or_pad(scan.data, model.input_patch_size[view])
            images[view] = torch.from_numpy(block)[None].to(device)

        with torch.no_grad(), autocast_context(device):
            logits, view_weights = fold.network(images)
        probabilities.append(torch.sigmoid(logits.float())[0].cpu().numpy())
        if view_weights is not None:
            weights.append(view_weights.float()[0].cpu().numpy())

    mean_probabilities = np.mean(probabilities, axis=0)
    findings = {}
    for index, name in enumerate(model.findings):
        threshold = float(np.mean([fold.thresholds[name] for fold in model.folds]))
        probability = float(mean_probabilities[index])
        findings[name] = {
            "probability": probability,
            "threshold": threshold,
            "decision": int(probability >= threshold),
            "fold_probabilities": [float(p[index]) for p in probabilities],
        }

    result = {"findings": findings, "fusion": model.fusion, "views_used": list(prepared.cls_views)}
    if weights:
        mean_weights = np.mean(weights, axis=0)
        result["view_weights"] = {
            name: {view: float(mean_weights[index, view_index]) for view_index, view in enumerate(model.views)}
            for index, name in enumerate(model.findings)
        }
    return result
