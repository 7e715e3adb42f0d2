"""Self-supervised diffusion pretraining of one view's DiffusionUNet.

Public API:

- ``run_pretraining(args) -> Path`` runs ``ortho_train DATASET pretrain VIEW`` from the argparse
  namespace built by ``ortho_nnd.cli.train`` and returns the path of the last checkpoint written.
- ``PretrainTrainer(settings, view_plans=..., view=..., dataset_name=..., data_folder=...,
  case_ids=..., pretrained_from=None)``: a ``BaseTrainer`` for use from Python.
- ``resolve_pretrained_checkpoint(value, view) -> Path`` turns ``--pretrained_from`` (a dataset
  id or name, a results folder or a checkpoint file) into a checkpoint path.

Training data are all preprocessed cases of the view whose properties ``source`` is
``imagesTr`` or ``imagesUnlabeled``. Each step draws random patches (mirrored along the plans'
``mirror_axes`` only), noises them at uniform timesteps of the plans' cosine or linear schedule,
and regresses epsilon or v with an MSE loss. An EMA of the weights is kept for downstream use.

Checkpoint entries besides those of ``BaseTrainer``: ``ema_weights`` (a full network state dict
with averaged parameters, loadable with ``load_state_dict``), ``ema_state`` (decay, warm-up flag,
update count), ``view_plans``, ``architecture`` (the network's ``to_spec()``), ``diffusion``,
``dataset_name``, ``view``, ``plans_name``.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from ortho_nnd import paths
from ortho_nnd.diffusion import DiffusionSchedule, ExponentialMovingAverage, diffusion_loss
from ortho_nnd.network import build_network_from_spec, load_pretrained_backbone
from ortho_nnd.planning.plans import DEFAULT_PLANS_NAME, load_plans, plans_path, view_plans as select_view_plans
from ortho_nnd.training.base_trainer import FINAL_CHECKPOINT, BaseTrainer, TrainerSettings
from ortho_nnd.training.checkpoint import load_checkpoint
from ortho_nnd.training.data import (
    MirrorAugmentation,
    PatchDataLoader,
    PreprocessedDataset,
    list_preprocessed_cases,
    make_batch_iterator,
)
from ortho_nnd.training.distributed import get_world_size

logger = logging.getLogger(__name__)

PRETRAIN_SOURCES = ("imagesTr", "imagesUnlabeled")
VIEWS = ("sagittal", "coronal", "axial")

# Fallbacks for training settings that a plans file may lack (the default preset sets them all).
DEFAULT_PRETRAIN_ITERATIONS = 100_000
DEFAULT_LEARNING_RATE = 1e-4
DEFAULT_WEIGHT_DECAY = 0.01
DEFAULT_WARMUP_ITERATIONS = 1000
DEFAULT_EMA_DECAY = 0.9999
DEFAULT_GRAD_CLIP = 1.0
DEFAULT_CHECKPOINT_EVERY = 1000
DEFAULT_SEED = 12345


def pretrain_output_folder(dataset_name: str, view: str, plans_name: str = DEFAULT_PLANS_NAME) -> Path:
    """Return ``ORTHO_results/{dataset}/pretrain_{view}`` (with ``__{plans_name}`` for non-default plans)."""
    suffix = "" if plans_name == DEFAULT_PLANS_NAME else f"__{plans_name}"
    return paths.results_folder() / dataset_name / f"pretrain_{view}{suffix}"


def resolve_pretrained_checkpoint(value: str, view: str) -> Path:
    """Turn ``--pretrained_from`` into a checkpoint file path."""
    candidate = Path(value).expanduser()
    if candidate.is_file():
        return candidate
    if candidate.is_dir():
        path = candidate / FINAL_CHECKPOINT
        if not path.is_file():
            raise FileNotFoundError(f"--pretrained_from {value}: folder has no {FINAL_CHECKPOINT}. Finish that pretraining first.")
        return path

    try:
        dataset_name = paths.dataset_name_from_id(value, search_in=paths.results_folder())
    except (FileNotFoundError, ValueError) as error:
        raise FileNotFoundError(
            f"--pretrained_from {value!r} is neither a checkpoint file, a folder nor a dataset with results: {error}"
        ) from error
    path = pretrain_output_folder(dataset_name, view) / FINAL_CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(
            f"--pretrained_from {value}: {path} does not exist. Run `ortho_train {value} pretrain {view}` first."
        )
    return path


class PretrainTrainer(BaseTrainer):
    task = "pretrain"

    def __init__(
        self,
        settings: TrainerSettings,
        *,
        view_plans: dict,
        view: str,
        dataset_name: str,
        data_folder: Path,
        case_ids: Sequence[str],
        plans_name: str = DEFAULT_PLANS_NAME,
        pretrained_from: Path | None = None,
    ) -> None:
        super().__init__(settings)
        self.view_plans = view_plans
        self.view = view
        self.dataset_name = dataset_name
        self.plans_name = plans_name
        self.dataset = PreprocessedDataset(data_folder, case_ids)
        self.pretrained_from = pretrained_from

        self.diffusion_settings = dict(view_plans["diffusion"])
        self.prediction = self.diffusion_settings.get("prediction", "epsilon")
        self.schedule = DiffusionSchedule.from_plans(self.diffusion_settings)
        self.ema_decay = float(view_plans.get("training", {}).get("ema_decay", DEFAULT_EMA_DECAY))
        self.ema: ExponentialMovingAverage | None = None

    def build_network(self) -> nn.Module:
        return build_network_from_spec(self.view_plans["architecture"])

    def initialize_weights(self) -> None:
        if self.pretrained_from is None:
            return
        payload = load_checkpoint(self.pretrained_from)
        # Prefers the EMA weights, the better denoiser, and raises before changing any weight
        # when the stored architecture differs from this view's plans.
        report = load_pretrained_backbone(self.network, payload, str(self.pretrained_from))
        logger.info("Initialised from %s: %s", self.pretrained_from, report)

    def after_network_built(self) -> None:
        self.ema = ExponentialMovingAverage(self.network, decay=self.ema_decay)

    def build_batch_iterator(self, start_iteration: int) -> Iterator[dict[str, Any]]:
        loader = PatchDataLoader(
            self.dataset,
            self.view_plans["patch_size"],
            int(self.view_plans["batch_size"]),
            augment=MirrorAugmentation(self.view_plans.get("mirror_axes", [])),
            seed=self.settings.seed,
            rank=self.rank,
            world_size=self.world_size,
            start_iteration=start_iteration,
            num_workers=self.settings.num_workers,
        )
        return make_batch_iterator(
            loader,
            self.settings.num_workers,
            seed=self.settings.seed,
            deterministic=self.settings.deterministic,
            pin_memory=self.device.type == "cuda",
        )

    def compute_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        x0 = batch["data"].to(self.device, non_blocking=True)
        generator = self.iteration_generator(device=self.device)
        return diffusion_loss(self.model, x0, self.schedule, self.prediction, generator=generator)

    def after_optimizer_step(self, iteration: int) -> None:
        self.ema.update(self.network)

    def extra_checkpoint_entries(self) -> dict[str, Any]:
        ema_state = self.ema.state_dict()
        return {
            "ema_weights": ema_state.pop("weights"),
            "ema_state": ema_state,
            "view_plans": self.view_plans,
            "architecture": self.network.to_spec(),
            "diffusion": self.diffusion_settings,
            "dataset_name": self.dataset_name,
            "view": self.view,
            "plans_name": self.plans_name,
        }

    def restore_extra_checkpoint_entries(self, payload: dict[str, Any]) -> None:
        self.ema.load_state_dict({**payload["ema_state"], "weights": payload["ema_weights"]})


def iterations_per_epoch(num_cases: int, batch_size: int, world_size: int) -> int:
    """Return ceil(num_cases / (batch_size * world_size)): one epoch shows each case once on average."""
    return max(math.ceil(num_cases / (batch_size * world_size)), 1)


def settings_from_args(args: argparse.Namespace, training_plans: dict, output_folder: Path, iterations: int) -> TrainerSettings:
    """Combine the plans' ``training`` entry with command-line overrides."""
    learning_rate = getattr(args, "lr", None) or training_plans.get("learning_rate", DEFAULT_LEARNING_RATE)
    checkpoint_every = args.checkpoint_every or training_plans.get("checkpoint_every", DEFAULT_CHECKPOINT_EVERY)
    num_workers = args.num_workers if args.num_workers is not None else training_plans.get("num_workers", 0)
    return TrainerSettings(
        output_folder=output_folder,
        total_iterations=iterations,
        learning_rate=float(learning_rate),
        weight_decay=float(training_plans.get("weight_decay", DEFAULT_WEIGHT_DECAY)),
        warmup_iterations=int(training_plans.get("warmup_iterations", DEFAULT_WARMUP_ITERATIONS)),
        decay=getattr(args, "decay", None) or "cosine",
        grad_clip=training_plans.get("grad_clip", DEFAULT_GRAD_CLIP),
        checkpoint_every=int(checkpoint_every),
        seed=args.seed if args.seed is not None else DEFAULT_SEED,
        deterministic=bool(args.deterministic),
        device=args.device,
        compile=bool(args.compile),
        num_workers=int(num_workers),
        continue_training=bool(args.c),
    )


def run_pretraining(args: argparse.Namespace) -> Path:
    """Run diffusion pretraining for ``args.dataset`` and ``args.task_arg`` (the view)."""
    view = args.task_arg
    if view not in VIEWS:
        raise ValueError(f"Invalid view {view!r} for pretraining: choose one of {', '.join(VIEWS)}.")

    preprocessed = paths.preprocessed_folder()
    dataset_name = paths.dataset_name_from_id(args.dataset, search_in=preprocessed)
    dataset_folder = preprocessed / dataset_name
    plans = load_plans(plans_path(dataset_folder))
    if plans.get("plans_name", DEFAULT_PLANS_NAME) != args.plans_name:
        raise ValueError(
            f"{plans_path(dataset_folder)} contains plans {plans.get('plans_name')!r}, not {args.plans_name!r}. "
            "Pass -p with that name or plan again with the requested name."
        )
    view_plans = select_view_plans(plans, view, str(plans_path(dataset_folder)))

    data_folder = dataset_folder / view_plans.get("data_identifier", f"{args.plans_name}_{view}")
    case_ids = list_preprocessed_cases(data_folder, sources=PRETRAIN_SOURCES)
    if not case_ids:
        raise FileNotFoundError(
            f"No preprocessed cases from {' or '.join(PRETRAIN_SOURCES)} in {data_folder}. Run ortho_plan_and_preprocess first."
        )

    training_plans = view_plans.get("training", {})
    # The process group is joined later by the trainer, so read torchrun's variable directly.
    world_size = int(os.environ.get("WORLD_SIZE", get_world_size()))
    if args.epochs is not None:
        iterations = args.epochs * iterations_per_epoch(len(case_ids), int(view_plans["batch_size"]), world_size)
    else:
        iterations = args.iterations or int(training_plans.get("pretrain_iterations", DEFAULT_PRETRAIN_ITERATIONS))

    pretrained_from = resolve_pretrained_checkpoint(args.pretrained_from, view) if args.pretrained_from else None
    output_folder = pretrain_output_folder(dataset_name, view, args.plans_name)
    settings = settings_from_args(args, training_plans, output_folder, iterations)
    logger.info("Pretraining %s %s on %d cases for %d iterations", dataset_name, view, len(case_ids), iterations)

    trainer = PretrainTrainer(
        settings,
        view_plans=view_plans,
        view=view,
        dataset_name=dataset_name,
        data_folder=data_folder,
        case_ids=case_ids,
        plans_name=args.plans_name,
        pretrained_from=pretrained_from,
    )
    return trainer.run()
