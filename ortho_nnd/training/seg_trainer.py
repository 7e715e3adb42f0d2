"""Segmentation fine-tuning: ``ortho_train DATASET seg FOLD [--view VIEW]``.

Public API:

- ``run_segmentation_training(args) -> Path`` runs the command from the argparse namespace of
  ``ortho_nnd.cli.train`` and returns the last checkpoint written.
- ``SegmentationTrainer(settings, ...)``: a ``BaseTrainer`` for use from Python.
- ``dice_ce_loss(logits, target, num_classes) -> Tensor`` and
  ``deep_supervision_weights(count) -> list[float]``.

The network is a ``SegmentationNetwork`` around the view's pretrained ``DiffusionUNet`` (EMA
weights preferred) evaluated at the plans' ``segmentation_timestep``, with a new 1x1x1 head per
decoder scale. The loss is cross-entropy plus soft Dice (batch Dice over the foreground
classes) at every scale, weighted 1, 1/2, 1/4, ... and normalised to sum 1. Patches are drawn
with foreground oversampling (plans ``training.foreground_oversampling``) and augmented by
``ortho_nnd.training.augmentation``. Backbone parameters of a pretrained run train at
``--backbone_lr_factor`` times the head learning rate.

At the end of a fold the validation cases are predicted whole with Gaussian-weighted sliding
windows and test-time mirroring along the plans' ``mirror_axes``. Predictions go back to the
raw scan's geometry (``validation/{case}_{view}.nii.gz``) and are compared with the raw
``labelsTr`` file. ``validation/summary.json`` has the evaluation package's format (per-class
Dice, HD95, ...). Without the raw dataset (or without mapping-back properties) the comparison
falls back to the preprocessed arrays, which the summary's ``settings.evaluation_space`` states.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ortho_nnd import paths
from ortho_nnd.evaluation import compute_segmentation_metrics, summarize_case_metrics, write_json_atomic
from ortho_nnd.evaluation.segmentation import check_same_geometry
from ortho_nnd.labels import channel_values, channels_to_values
from ortho_nnd.network import build_network_from_spec
from ortho_nnd.network.segmentation import SegmentationNetwork
from ortho_nnd.training.augmentation import SegmentationBatchAugmentation, deep_supervision_scales, sampling_patch_size
from ortho_nnd.training.base_trainer import BaseTrainer, TrainerSettings
from ortho_nnd.training.checkpoint import load_checkpoint
from ortho_nnd.training.data import PatchDataLoader, PreprocessedDataset, make_batch_iterator
from ortho_nnd.training.finetune_setup import (
    backbone_lr_factor,
    finetune_settings,
    iterations_from_args,
    load_finetune_context,
    run_output_folder,
    select_fold_cases,
)
from ortho_nnd.training.label_fraction import LABEL_SUBSET_FILE, run_folder_name
from ortho_nnd.training.transfer import check_transfer, initialise_from_checkpoint, resolve_pretrained_checkpoint_for

logger = logging.getLogger(__name__)

DEFAULT_FOREGROUND_OVERSAMPLING = 0.33
# Smoothing term of the soft Dice (nnU-Net's value); it keeps the ratio defined for empty classes.
DICE_SMOOTH = 1e-5
# Distance between sliding-window starts as a fraction of the patch size at validation.
VALIDATION_STEP_SIZE = 0.5
LOAD_REPORT_FILE = "load_report.json"
VAL_METRIC_NAME = "foreground_dice"


def deep_supervision_weights(count: int) -> list[float]:
    """Return weights 1, 1/2, 1/4, ... for ``count`` outputs (full resolution first), normalised to sum 1."""
    raw = [0.5**index for index in range(count)]
    total = sum(raw)
    return [value / total for value in raw]


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Cross-entropy plus (1 - mean foreground soft Dice) for logits (B, C, ...) and labels (B, 1, ...)."""
    logits = logits.float()
    labels = target[:, 0].long()
    cross_entropy = F.cross_entropy(logits, labels)

    probabilities = torch.softmax(logits, dim=1)
    one_hot = F.one_hot(labels, num_classes).movedim(-1, 1).to(probabilities.dtype)
    # Batch Dice: sums over the batch and all voxels, one value per class.
    axes = [0] + list(range(2, logits.ndim))
    intersection = (probabilities * one_hot).sum(axes)
    denominator = probabilities.sum(axes) + one_hot.sum(axes)
    dice = (2.0 * intersection + DICE_SMOOTH) / (denominator + DICE_SMOOTH)
    return cross_entropy + (1.0 - dice[1:].mean())


class SegmentationTrainer(BaseTrainer):
    task = "seg"
    val_metric_name = VAL_METRIC_NAME

    def __init__(
        self,
        settings: TrainerSettings,
        *,
        view_plans: dict,
        view: str,
        dataset_name: str,
        data_folder: Path,
        train_cases: Sequence[str],
        val_cases: Sequence[str],
        labels: dict[str, int],
        plans_name: str,
        pretrained_checkpoint: Path | None = None,
        backbone_lr_factor: float = 1.0,
        raw_references: dict[str, Path] | None = None,
        run_info: dict | None = None,
    ) -> None:
        super().__init__(settings)
        self.view_plans = view_plans
        self.view = view
        self.dataset_name = dataset_name
        self.plans_name = plans_name
        self.dataset = PreprocessedDataset(data_folder, train_cases)
        self.val_dataset = PreprocessedDataset(data_folder, val_cases) if val_cases else None
        self.val_cases = list(val_cases)
        self.labels = {name: int(value) for name, value in labels.items()}
        # One output channel per declared label, in ascending order of value (see ortho_nnd.labels).
        self.label_values = channel_values(self.labels.values())
        self.num_classes = len(self.label_values)
        self.pretrained_checkpoint = pretrained_checkpoint
        self.backbone_lr_factor = backbone_lr_factor if pretrained_checkpoint is not None else 1.0
        self.raw_references = raw_references or {}
        self.run_info = dict(run_info or {})
        self.training_plans = view_plans.get("training", {})
        self.load_report: dict | None = None

    # ------------------------------------------------------------------ network

    def build_network(self) -> nn.Module:
        backbone = build_network_from_spec(self.view_plans["architecture"])
        timestep = self.view_plans["diffusion"]["segmentation_timestep"]
        learn_timestep = bool(self.training_plans.get("learn_segmentation_timestep", False))
        return SegmentationNetwork(backbone, self.num_classes, timestep, learn_timestep=learn_timestep, deep_supervision=True)

    def initialize_weights(self) -> None:
        if self.pretrained_checkpoint is None:
            logger.info("Training %s segmentation from random initialisation (--pretrained none).", self.view)
            return
        payload = load_checkpoint(self.pretrained_checkpoint)
        report = initialise_from_checkpoint(self.network, payload, self.view_plans, self.view, str(self.pretrained_checkpoint))
        self.load_report = report
        if self.is_main_process:
            write_json_atomic(report, self.output_folder / LOAD_REPORT_FILE)

    def parameter_groups(self, network: nn.Module) -> list[dict[str, Any]]:
        backbone_ids = {id(p) for p in network.backbone.parameters()}
        backbone = [p for p in network.parameters() if p.requires_grad and id(p) in backbone_ids]
        heads = [p for p in network.parameters() if p.requires_grad and id(p) not in backbone_ids]
        return [
            {"params": backbone, "lr": self.settings.learning_rate * self.backbone_lr_factor, "name": "backbone"},
            {"params": heads, "lr": self.settings.learning_rate, "name": "heads"},
        ]

    # ------------------------------------------------------------------ data and loss

    def build_batch_iterator(self, start_iteration: int) -> Iterator[dict[str, Any]]:
        patch_size = self.view_plans["patch_size"]
        augment = bool(self.training_plans.get("augmentation", True))
        # With augmentation, a larger patch is cropped and the spatial transform cuts the final one from its centre.
        loaded_patch_size = sampling_patch_size(patch_size, self.view_plans["target_spacing"]) if augment else patch_size
        loader = PatchDataLoader(
            self.dataset,
            loaded_patch_size,
            int(self.view_plans["batch_size"]),
            foreground_probability=float(self.training_plans.get("foreground_oversampling", DEFAULT_FOREGROUND_OVERSAMPLING)),
            load_target=True,
            seed=self.settings.seed,
            rank=self.rank,
            world_size=self.world_size,
            start_iteration=start_iteration,
            num_workers=self.settings.num_workers,
        )
        augmentation = SegmentationBatchAugmentation(
            patch_size,
            self.view_plans["target_spacing"],
            self.view_plans.get("mirror_axes", []),
            deep_supervision_scales(self.network.output_strides()),
            enabled=augment,
        )
        return make_batch_iterator(
            loader,
            self.settings.num_workers,
            transform=augmentation,
            seed=self.settings.seed,
            deterministic=self.settings.deterministic,
            pin_memory=self.device.type == "cuda",
        )

    def compute_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        data = batch["data"].to(self.device, non_blocking=True)
        targets = [target.to(self.device, non_blocking=True) for target in batch["target"]]
        outputs = self.model(data)
        weights = deep_supervision_weights(len(outputs))
        losses = [dice_ce_loss(output, target, self.num_classes) for output, target in zip(outputs, targets)]
        loss = sum(weight * value for weight, value in zip(weights, losses))
        return loss, {"full_resolution_loss": losses[0].detach()}

    # ------------------------------------------------------------------ checkpoints

    def extra_checkpoint_entries(self) -> dict[str, Any]:
        return {
            "view_plans": self.view_plans,
            "architecture": self.network.to_spec(),
            "diffusion": dict(self.view_plans["diffusion"]),
            "dataset_name": self.dataset_name,
            "view": self.view,
            "plans_name": self.plans_name,
            "labels": self.labels,
            "pretrained_checkpoint": None if self.pretrained_checkpoint is None else str(self.pretrained_checkpoint),
            "run_info": self.run_info,
        }

    # ------------------------------------------------------------------ validation

    def predict_case_probabilities(self, data: np.ndarray) -> np.ndarray:
        """Return (num_classes, Z, Y, X) softmax probabilities of a preprocessed (1, Z, Y, X) scan."""
        from ortho_nnd.inference.sliding_window import predict_sliding_window

        self.network.eval()
        with torch.no_grad():
            probabilities = predict_sliding_window(
                self.network,
                torch.from_numpy(np.array(data, dtype=np.float32)),
                self.view_plans["patch_size"],
                self.num_classes,
                step_size=VALIDATION_STEP_SIZE,
                mirror_axes=self.view_plans.get("mirror_axes", []),
                device=self.device,
            )
        return probabilities.numpy()

    def validate(self, iteration: int) -> float | None:
        if self.val_dataset is None or not self.is_main_process:
            return None
        from ortho_nnd import io
        from ortho_nnd.preprocessing.export import map_to_original

        validation_folder = self.output_folder / "validation"
        validation_folder.mkdir(parents=True, exist_ok=True)
        metric_per_case = []
        spaces = set()
        for case in tqdm(self.val_cases, desc=f"Validating {self.view}"):
            data, seg, properties = self.val_dataset.load_case(case)
            probabilities = self.predict_case_probabilities(data)
            reference_file = self.raw_references.get(case)

            if reference_file is not None and "original_geometry" in properties:
                image = map_to_original(probabilities, properties, is_label=False, label_values=self.label_values)
                prediction_file = validation_folder / f"{case}_{self.view}.nii.gz"
                io.write_image(image, prediction_file)
                reference_image = io.read_image(reference_file)
                # Mapping back must reproduce the raw grid exactly; a mismatch is a bug worth stopping for.
                check_same_geometry(image, reference_image, str(prediction_file), str(reference_file))
                prediction_array = _array_of(image)
                reference_array = _array_of(reference_image)
                # SimpleITK spacing is (x, y, z); arrays are (z, y, x).
                spacing = list(reference_image.GetSpacing())[::-1]
                entry = {"case": case, "prediction_file": str(prediction_file), "reference_file": str(reference_file)}
                spaces.add("original")
            else:
                if seg is None:
                    raise FileNotFoundError(f"Validation case {case!r} has neither a raw reference nor a preprocessed segmentation.")
                prediction_array = channels_to_values(np.argmax(probabilities, axis=0), self.label_values)
                np.save(validation_folder / f"{case}_{self.view}_preprocessed.npy", prediction_array)
                reference_array = channels_to_values(np.asarray(seg[0]), self.label_values)
                spacing = list(properties.get("target_spacing") or self.view_plans["target_spacing"])
                entry = {"case": case}
                spaces.add("preprocessed")

            entry["metrics"] = compute_segmentation_metrics(prediction_array, reference_array, spacing, self.labels)
            metric_per_case.append(entry)

        if "preprocessed" in spaces:
            logger.warning(
                "Validation of %s compared preprocessed arrays for some cases: the raw labelsTr files or the "
                "mapping-back properties were not available.", self.output_folder,
            )
        summary = summarize_case_metrics(
            metric_per_case, self.labels,
            {"evaluation_space": sorted(spaces), "view": self.view, "iteration": iteration, "step_size": VALIDATION_STEP_SIZE},
        )
        write_json_atomic(summary, validation_folder / "summary.json")
        foreground_dice = _foreground_dice(summary)
        logger.info("Validation %s fold: mean foreground Dice %.4f over %d cases", self.view, foreground_dice, len(self.val_cases))
        return foreground_dice


def _array_of(image) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(image)


def _foreground_dice(summary: dict) -> float:
    foreground = summary.get("foreground_mean", {})
    value = foreground.get("dice") if isinstance(foreground, dict) else None
    if value is None:
        dice_values = [metrics.get("dice") for metrics in summary.get("mean", {}).values() if isinstance(metrics, dict)]
        dice_values = [value for value in dice_values if value is not None and np.isfinite(value)]
        value = float(np.mean(dice_values)) if dice_values else float("nan")
    return float(value)


# ---------------------------------------------------------------------- command


def labelled_views_of(dataset_json: dict, plans: dict) -> list[str]:
    """Return the labelled views: the plans' list (set from the fingerprint, which also covers
    nnU-Net-layout datasets whose view was detected from geometry), else dataset.json's, else sagittal."""
    return list(plans.get("labelled_views") or dataset_json.get("labelled_views") or ["sagittal"])


def default_view(dataset_json: dict, plans: dict) -> str:
    """Return the first labelled view that has plans."""
    labelled = labelled_views_of(dataset_json, plans)
    for view in labelled:
        if view in plans["views"]:
            return view
    raise ValueError(f"None of the labelled views {labelled} has plans; planned views: {sorted(plans['views'])}.")


def _raw_references(dataset_name: str, view: str) -> dict[str, Path]:
    """Return {case: labelsTr file} of the raw dataset, or {} when the raw dataset is not available."""
    try:
        from ortho_nnd.dataset import load_raw_dataset

        raw = load_raw_dataset(paths.raw_folder() / dataset_name)
    except (FileNotFoundError, ValueError) as error:
        logger.warning("Raw dataset %s not readable (%s); validation compares preprocessed arrays.", dataset_name, error)
        return {}
    return {scan.case: scan.label for scan in raw.scans_of(view, ("imagesTr",)) if scan.label is not None}


def _label_strata(dataset: PreprocessedDataset, cases: Sequence[str]) -> dict[str, str]:
    """Stratum per case: the sorted labels present in its class_locations."""
    strata = {}
    for case in cases:
        locations = dataset.properties(case).get("class_locations") or {}
        strata[case] = ",".join(sorted(label for label, voxels in locations.items() if voxels))
    return strata


def run_segmentation_training(args: argparse.Namespace) -> Path:
    """Run ``ortho_train DATASET seg FOLD``: prepare splits, subset and weights, then train."""
    context = load_finetune_context(args.dataset, args.plans_name)
    view = getattr(args, "view", None) or default_view(context.dataset_json, context.plans)
    labelled_views = labelled_views_of(context.dataset_json, context.plans)
    if view not in labelled_views:
        raise ValueError(f"View {view!r} has no labels in {context.dataset_name}; labelled views: {labelled_views}.")
    if view not in context.plans["views"]:
        raise ValueError(f"No plans for view {view!r}; planned views: {sorted(context.plans['views'])}.")
    view_plans = context.plans["views"][view]
    training_plans = view_plans.get("training", {})
    data_folder = context.view_data_folder(view)

    all_cases = PreprocessedDataset(data_folder)
    labelled_cases = [case for case in context.training_cases if case in set(all_cases.case_ids) and all_cases.has_segmentation(case)]
    if not labelled_cases:
        raise FileNotFoundError(f"No case in {data_folder} has a segmentation (_seg.npy). Check labelsTr and preprocess again.")

    selection = select_fold_cases(
        context, args, labelled_cases, lambda train: _label_strata(all_cases, train), f"labels in view {view}"
    )
    fold, train_cases, val_cases, seed = selection.fold, selection.train_cases, selection.val_cases, selection.seed
    label_fraction = getattr(args, "label_fraction", None)

    pretrained = resolve_pretrained_checkpoint_for(
        getattr(args, "pretrained", "auto"), args.pretrained_from, context.dataset_name, view, args.plans_name
    )
    if pretrained is not None:
        # Fail before any set-up work when the checkpoint cannot initialise this network.
        check_transfer(load_checkpoint(pretrained), view_plans, view, str(pretrained))

    run_name = run_folder_name(f"seg_{view}", label_fraction, scratch=pretrained is None)
    output_folder = run_output_folder(context.dataset_name, run_name, fold, args.plans_name)
    iterations = iterations_from_args(args, training_plans, "finetune_iterations", len(train_cases), int(view_plans["batch_size"]))
    settings = finetune_settings(args, training_plans, output_folder, iterations)

    run_info = {
        "fold": fold,
        "label_fraction": label_fraction,
        "train_cases": list(train_cases),
        "val_cases": list(val_cases),
        "seed": seed,
    }
    output_folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        {"fold": fold, "label_fraction": label_fraction if label_fraction is not None else 1.0, "seed": seed, "cases": list(train_cases)},
        output_folder / LABEL_SUBSET_FILE,
    )
    logger.info(
        "Segmentation %s %s fold %s: %d training and %d validation cases, %d iterations, %s",
        context.dataset_name, view, "all" if fold is None else fold, len(train_cases), len(val_cases), iterations,
        f"pretrained from {pretrained}" if pretrained else "from scratch",
    )

    trainer = SegmentationTrainer(
        settings,
        view_plans=view_plans,
        view=view,
        dataset_name=context.dataset_name,
        data_folder=data_folder,
        train_cases=train_cases,
        val_cases=val_cases,
        labels=context.dataset_json.get("labels") or {"background": 0, "foreground": 1},
        plans_name=args.plans_name,
        pretrained_checkpoint=pretrained,
        backbone_lr_factor=backbone_lr_factor(args, training_plans),
        raw_references=_raw_references(context.dataset_name, view) if val_cases else {},
        run_info=run_info,
    )
    return trainer.run()
