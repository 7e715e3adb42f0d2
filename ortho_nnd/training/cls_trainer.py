"""Multi-view diagnosis fine-tuning: ``ortho_train DATASET cls FOLD [--mode M] [--fusion F]``.

Public API:

- ``run_classification_training(args) -> Path`` runs the command from the argparse namespace of
  ``ortho_nnd.cli.train`` and returns the last checkpoint written.
- ``ClassificationTrainer(settings, ...)``: a ``BaseTrainer`` for use from Python.
- ``masked_bce_loss(logits, labels, pos_weight) -> Tensor``.

One ``ViewEncoder`` per planned view wraps that view's pretrained diffusion UNet (or a random
one with ``--pretrained none``). It pools the bottleneck and the decoder stages at the plans'
``feature_timesteps``, leaving out the full-resolution ``dec0`` unless it is the only decoder stage. A ``MultiViewClassifier`` fuses the views (``concat`` or ``gated``) and
predicts one logit per finding. The loss is binary cross-entropy with per-finding positive
weights (negatives / positives over the training cases); blank cells (not annotated) are left
out. ``linear_probe`` freezes the diffusion backbones, ``finetune`` trains them at
``--backbone_lr_factor`` times the learning rate. Input sizes: see ``cls_data``.

At the end, the training cases are predicted to choose one threshold per finding
(``choose_threshold``, Youden), saved as ``thresholds.json`` beside the checkpoint. The
validation cases are predicted and evaluated with ``compute_findings_metrics``:
``validation/probabilities.csv`` and ``validation/summary.json`` (and, for gated fusion,
``validation/view_weights.json`` with the per-case, per-finding view weights).
"""
from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ortho_nnd.evaluation import choose_threshold, compute_findings_metrics, write_json_atomic, write_validation_probabilities
from ortho_nnd.network import build_network_from_spec
from ortho_nnd.network.classification import MultiViewClassifier, ViewEncoder
from ortho_nnd.training.base_trainer import BaseTrainer, TrainerSettings
from ortho_nnd.training.checkpoint import load_checkpoint
from ortho_nnd.training.cls_data import ExamBatchIterator, ExamDataset, collate_exams, has_annotation, positive_weights
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

THRESHOLDS_FILE = "thresholds.json"
LOAD_REPORT_FILE = "load_report.json"
VAL_METRIC_NAME = "macro_auc"
DEFAULT_EMBED_DIM = 256
DEFAULT_CLS_BATCH_SIZE = 2
# Exams per forward pass when predicting whole scans at the end of training.
PREDICTION_BATCH_SIZE = 2


def masked_bce_loss(logits: torch.Tensor, labels: torch.Tensor, pos_weight: torch.Tensor) -> torch.Tensor:
    """Mean BCE-with-logits over annotated (non-NaN) entries; 0 when a batch has none."""
    annotated = torch.isfinite(labels)
    targets = torch.nan_to_num(labels, nan=0.0)
    losses = F.binary_cross_entropy_with_logits(logits.float(), targets, pos_weight=pos_weight, reduction="none")
    losses = losses * annotated
    return losses.sum() / annotated.sum().clamp(min=1)


def encoder_feature_names(n_stages: int) -> list[str]:
    """Return ``bottleneck`` plus the decoder stages dec{n-2} ... dec1 (dec0 too for a two-stage network)."""
    decoder = [f"dec{stage}" for stage in range(n_stages - 2, 0, -1)] or ["dec0"]
    return ["bottleneck", *decoder]


class ClassificationTrainer(BaseTrainer):
    task = "cls"
    val_metric_name = VAL_METRIC_NAME

    def __init__(
        self,
        settings: TrainerSettings,
        *,
        plans: dict,
        views: Sequence[str],
        dataset_name: str,
        exam_dataset: ExamDataset,
        train_cases: Sequence[str],
        val_cases: Sequence[str],
        finding_names: Sequence[str],
        plans_name: str,
        mode: str = "finetune",
        fusion: str = "concat",
        pretrained_checkpoints: dict[str, Path | None] | None = None,
        backbone_lr_factor: float = 0.1,
        run_info: dict | None = None,
    ) -> None:
        super().__init__(settings)
        if mode not in ("linear_probe", "finetune"):
            raise ValueError(f"Invalid --mode {mode!r}: choose linear_probe or finetune.")
        self.plans = plans
        self.views = list(views)
        self.dataset_name = dataset_name
        self.exams = exam_dataset
        self.train_cases = list(train_cases)
        self.val_cases = list(val_cases)
        self.finding_names = list(finding_names)
        self.plans_name = plans_name
        self.mode = mode
        self.fusion = fusion
        self.pretrained_checkpoints = dict(pretrained_checkpoints or {})
        self.pretrained = any(path is not None for path in self.pretrained_checkpoints.values())
        self.backbone_lr_factor = backbone_lr_factor if self.pretrained else 1.0
        self.run_info = dict(run_info or {})
        first_training = plans["views"][self.views[0]].get("training", {})
        self.embed_dim = int(first_training.get("cls_embed_dim", DEFAULT_EMBED_DIM))
        self.batch_size = int(first_training.get("cls_batch_size", DEFAULT_CLS_BATCH_SIZE))
        self.pos_weight = torch.from_numpy(positive_weights(self.exams.labels(self.train_cases)))

    # ------------------------------------------------------------------ network

    def build_network(self) -> nn.Module:
        encoders = {}
        for view in self.views:
            view_plans = self.plans["views"][view]
            backbone = build_network_from_spec(view_plans["architecture"])
            names = encoder_feature_names(backbone.n_stages)
            timesteps = [int(t) for t in view_plans["diffusion"]["feature_timesteps"]]
            encoders[view] = ViewEncoder(backbone, names, timesteps)
        return MultiViewClassifier(encoders, len(self.finding_names), fusion=self.fusion, embed_dim=self.embed_dim)

    def initialize_weights(self) -> None:
        reports = {}
        for view in self.views:
            path = self.pretrained_checkpoints.get(view)
            if path is None:
                continue
            reports[view] = initialise_from_checkpoint(
                self.network.encoders[view], load_checkpoint(path), self.plans["views"][view], view, str(path)
            )
        if reports and self.is_main_process:
            write_json_atomic(reports, self.output_folder / LOAD_REPORT_FILE)

    def after_network_built(self) -> None:
        if self.mode == "linear_probe":
            for encoder in self.network.encoders.values():
                for parameter in encoder.backbone.parameters():
                    parameter.requires_grad_(False)

    def parameter_groups(self, network: nn.Module) -> list[dict[str, Any]]:
        backbone_ids = {id(p) for encoder in network.encoders.values() for p in encoder.backbone.parameters()}
        backbone = [p for p in network.parameters() if p.requires_grad and id(p) in backbone_ids]
        heads = [p for p in network.parameters() if p.requires_grad and id(p) not in backbone_ids]
        groups = [{"params": heads, "lr": self.settings.learning_rate, "name": "heads"}]
        if backbone:
            groups.insert(0, {"params": backbone, "lr": self.settings.learning_rate * self.backbone_lr_factor, "name": "backbones"})
        return groups

    # ------------------------------------------------------------------ data and loss

    def _mirror_axes(self) -> dict[str, list[int]]:
        return {view: list(self.plans["views"][view].get("mirror_axes", [])) for view in self.views}

    def build_batch_iterator(self, start_iteration: int) -> Iterator[dict[str, Any]]:
        # Every rank draws from all training cases with its own generator instead of a shard.
        return ExamBatchIterator(
            self.exams, self.train_cases, self.batch_size, self.settings.seed, self.rank, start_iteration, self._mirror_axes()
        )

    def _to_device(self, images: dict, present: dict) -> tuple[dict, dict]:
        images = {view: None if image is None else image.to(self.device, non_blocking=True) for view, image in images.items()}
        present = {view: mask.to(self.device) for view, mask in present.items()}
        return images, present

    def compute_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        images, present = self._to_device(batch["images"], batch["present"])
        logits, _ = self.model(images, present)
        labels = batch["labels"].to(self.device)
        loss = masked_bce_loss(logits, labels, self.pos_weight.to(self.device))
        if self.world_size > 1:
            loss = loss + self._absent_view_anchor(images, present)
        return loss, {}

    def _absent_view_anchor(self, images: dict, present: dict) -> torch.Tensor:
        """Return 0 x the output of each view absent from the whole batch, run on a blank input.

        DDP (without find_unused_parameters) expects a gradient for every trainable parameter in
        every step. Adding this zero term gives the encoder and projection of an absent view zero
        gradients, at the cost of one extra forward pass for that view.
        """
        anchor = torch.zeros((), device=self.device)
        for view in self.views:
            if images[view] is not None and bool(present[view].any()):
                continue
            blank = torch.zeros((1, 1, *self.exams.input_sizes[view]), device=self.device)
            embedding = self.network.projections[view](self.network.encoders[view](blank))
            anchor = anchor + 0.0 * embedding.float().sum()
        return anchor

    # ------------------------------------------------------------------ checkpoints

    def extra_checkpoint_entries(self) -> dict[str, Any]:
        return {
            "plans": self.plans,
            "views": self.views,
            "architecture": self.network.to_spec(),
            "dataset_name": self.dataset_name,
            "plans_name": self.plans_name,
            "findings": self.finding_names,
            "input_sizes": self.exams.input_sizes,
            "mode": self.mode,
            "fusion": self.fusion,
            "pretrained_checkpoints": {view: None if path is None else str(path) for view, path in self.pretrained_checkpoints.items()},
            "run_info": self.run_info,
        }

    # ------------------------------------------------------------------ prediction and validation

    def predict_cases(self, cases: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """Return probabilities (N, K) and, for gated fusion, view weights (N, K, V) of whole centre-cropped scans."""
        self.network.eval()
        probabilities, weights = [], []
        with torch.no_grad():
            for start in tqdm(range(0, len(cases), PREDICTION_BATCH_SIZE), desc="Predicting exams", disable=len(cases) < 10):
                chunk = cases[start:start + PREDICTION_BATCH_SIZE]
                images, present = collate_exams([self.exams.load_exam(case) for case in chunk], self.views, self.exams.input_sizes)
                images, present = self._to_device(images, present)
                logits, view_weights = self.network(images, present)
                probabilities.append(torch.sigmoid(logits.float()).cpu().numpy())
                if view_weights is not None:
                    weights.append(view_weights.float().cpu().numpy())
        self.network.train()
        return np.concatenate(probabilities), (np.concatenate(weights) if weights else None)

    def choose_thresholds(self) -> dict[str, float]:
        probabilities, _ = self.predict_cases(self.train_cases)
        labels = self.exams.labels(self.train_cases)
        thresholds = {name: choose_threshold(probabilities[:, k], labels[:, k]) for k, name in enumerate(self.finding_names)}
        write_json_atomic(thresholds, self.output_folder / THRESHOLDS_FILE)
        logger.info("Thresholds chosen on %d training cases: %s", len(self.train_cases), thresholds)
        return thresholds

    def validate(self, iteration: int) -> float | None:
        if not self.is_main_process:
            return None
        thresholds = self.choose_thresholds()
        if not self.val_cases:
            return None

        probabilities, view_weights = self.predict_cases(self.val_cases)
        labels = self.exams.labels(self.val_cases)
        validation_folder = self.output_folder / "validation"
        write_validation_probabilities(validation_folder / "probabilities.csv", self.val_cases, probabilities, labels, self.finding_names)
        summary = compute_findings_metrics(probabilities, labels, self.finding_names, thresholds)
        summary["settings"].update({
            "iteration": iteration, "mode": self.mode, "fusion": self.fusion, "views": self.views,
            "threshold_source": "training cases of this fold (Youden)",
            "missing_views": {case: [view for view in self.views if not self.exams.has_view(case, view)] for case in self.val_cases},
        })
        write_json_atomic(summary, validation_folder / "summary.json")
        if view_weights is not None:
            weights = {
                case: {finding: dict(zip(self.views, map(float, view_weights[i, k]))) for k, finding in enumerate(self.finding_names)}
                for i, case in enumerate(self.val_cases)
            }
            write_json_atomic(weights, validation_folder / "view_weights.json")

        macro_auc = summary["macro"]["auc"]
        logger.info("Validation: macro AUC %.4f over %d cases", macro_auc, len(self.val_cases))
        return None if macro_auc is None or not math.isfinite(macro_auc) else float(macro_auc)


# ---------------------------------------------------------------------- command


def run_classification_training(args: argparse.Namespace) -> Path:
    """Run ``ortho_train DATASET cls FOLD``: prepare splits, subset and weights, then train."""
    context = load_finetune_context(args.dataset, args.plans_name)
    if context.findings is None:
        raise FileNotFoundError(
            f"{context.dataset_folder / 'findings.csv'} not found. Classification needs findings.csv in the raw dataset; "
            "add it and run ortho_plan_and_preprocess again (it copies the file)."
        )
    finding_names = list(context.findings.findings)
    views = list(context.plans["views"])
    view_folders = {view: context.view_data_folder(view) for view in views}

    training_set = set(context.training_cases)
    cases = [case for case, values in context.findings.values.items() if case in training_set and has_annotation(values)]
    skipped = sorted(set(context.findings.values) - training_set)
    if skipped:
        logger.warning("%d cases of findings.csv have no preprocessed imagesTr scan and are not used: %s", len(skipped), skipped[:10])
    if not cases:
        raise ValueError(f"No imagesTr case of {context.dataset_name} has an annotated finding in findings.csv.")

    def finding_strata(train: list[str]) -> dict:
        # -1 marks a finding that is not annotated for the case.
        return {case: tuple(int(v > 0.5) if v == v else -1 for v in context.findings.values[case]) for case in train}

    selection = select_fold_cases(context, args, cases, finding_strata, "findings")
    fold, train_cases, val_cases, seed = selection.fold, selection.train_cases, selection.val_cases, selection.seed
    label_fraction = getattr(args, "label_fraction", None)

    pretrained = {
        view: resolve_pretrained_checkpoint_for(getattr(args, "pretrained", "auto"), args.pretrained_from, context.dataset_name, view, args.plans_name)
        for view in views
    }
    for view, path in pretrained.items():
        if path is not None:
            check_transfer(load_checkpoint(path), context.plans["views"][view], view, str(path))

    input_sizes = {view: context.plans["views"][view]["patch_size"] for view in views}
    exam_dataset = ExamDataset(view_folders, input_sizes, {case: context.findings.values[case] for case in cases}, cases)

    mode = getattr(args, "mode", "finetune") or "finetune"
    fusion = getattr(args, "fusion", "concat") or "concat"
    task_name = "cls"
    if mode == "linear_probe":
        task_name += "_linear_probe"
    if fusion == "gated":
        task_name += "_gated"
    scratch = all(path is None for path in pretrained.values())
    output_folder = run_output_folder(context.dataset_name, run_folder_name(task_name, label_fraction, scratch), fold, args.plans_name)

    training_plans = context.plans["views"][views[0]].get("training", {})
    batch_size = int(training_plans.get("cls_batch_size", DEFAULT_CLS_BATCH_SIZE))
    iterations = iterations_from_args(args, training_plans, "cls_iterations", len(train_cases), batch_size)
    settings = finetune_settings(args, training_plans, output_folder, iterations)

    output_folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        {"fold": fold, "label_fraction": label_fraction if label_fraction is not None else 1.0, "seed": seed, "cases": list(train_cases)},
        output_folder / LABEL_SUBSET_FILE,
    )
    missing = {view: sum(not exam_dataset.has_view(case, view) for case in cases) for view in views}
    logger.info(
        "Classification %s fold %s (%s, %s fusion): %d training and %d validation cases, %d iterations; cases without view: %s",
        context.dataset_name, "all" if fold is None else fold, mode, fusion, len(train_cases), len(val_cases), iterations, missing,
    )

    trainer = ClassificationTrainer(
        settings,
        plans=context.plans,
        views=views,
        dataset_name=context.dataset_name,
        exam_dataset=exam_dataset,
        train_cases=train_cases,
        val_cases=val_cases,
        finding_names=finding_names,
        plans_name=args.plans_name,
        mode=mode,
        fusion=fusion,
        pretrained_checkpoints=pretrained,
        backbone_lr_factor=backbone_lr_factor(args, training_plans),
        run_info={"fold": fold, "label_fraction": label_fraction, "train_cases": train_cases, "val_cases": val_cases, "seed": seed},
    )
    return trainer.run()
