"""Training loop shared by pretraining, segmentation and classification.

``BaseTrainer(settings: TrainerSettings)`` runs ``settings.total_iterations`` optimizer steps
with AdamW, a warm-up + cosine/poly learning-rate schedule, gradient clipping, bf16 autocast on
CUDA, a non-finite guard, periodic ``checkpoint_latest.pth`` and a final
``checkpoint_final.pth``, and DDP when launched by torchrun. Call ``trainer.run()``; it returns
the path of the final checkpoint (or of the latest one when ``stop_at_iteration`` ended the run).

Subclasses implement:

- ``build_network() -> nn.Module`` (on the CPU; the trainer moves it to the device),
- ``build_batch_iterator(start_iteration) -> Iterator[dict]``: batches from iteration
  ``start_iteration`` on, each a dict with at least ``keys`` (case ids) for logging,
- ``compute_loss(batch) -> (loss, info)``, called inside autocast. Use ``self.model`` (the
  DDP/compiled wrapper) for forward passes and ``self.network`` (the plain module) for anything
  else. ``info`` is a dict for the subclass's own use (the base loop ignores it),

and may override:

- ``parameter_groups(network) -> list[dict]`` (default: one group with all trainable
  parameters at ``settings.learning_rate``; add ``"lr"`` to a group for its own base rate),
- ``initialize_weights()`` (fresh runs only, before DDP wrapping, e.g. from a pretrained checkpoint),
- ``after_network_built()`` (after ``initialize_weights``, before a checkpoint is restored; e.g. create the EMA),
- ``after_optimizer_step(iteration)`` (e.g. EMA update),
- ``extra_checkpoint_entries() -> dict`` and ``restore_extra_checkpoint_entries(payload)``,
- ``validate(iteration) -> float | None`` (called every ``validate_every`` iterations and at the end).

Continuing (``settings.continue_training``) restores network, optimizer, grad scaler, iteration,
progress record, RNG state and the extra entries from ``checkpoint_latest.pth`` and restarts the
batch iterator at the stored iteration. With ``deterministic=True`` and ordered data loading, a
run continued from iteration N reaches the same weights as an uninterrupted run.
"""
from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ortho_nnd.training import distributed
from ortho_nnd.training.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from ortho_nnd.training.data import close_batch_iterator
from ortho_nnd.training.device import autocast_context, maybe_compile, resolve_device, set_deterministic
from ortho_nnd.training.logs import ProgressTracker, add_log_file, remove_log_file
from ortho_nnd.training.lr_schedule import WarmupDecaySchedule
from ortho_nnd.training.nonfinite import DEFAULT_MAX_CONSECUTIVE_NONFINITE, NonFiniteGuard

logger = logging.getLogger(__name__)

LATEST_CHECKPOINT = "checkpoint_latest.pth"
FINAL_CHECKPOINT = "checkpoint_final.pth"
PROGRESS_JSON = "training_log.json"
PROGRESS_PLOT = "progress.png"



@dataclass
class TrainerSettings:
    output_folder: Path
    total_iterations: int
    learning_rate: float
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    warmup_iterations: int = 0
    decay: str = "cosine"
    # Maximum global L2 norm of the gradients; None disables clipping.
    grad_clip: float | None = 1.0
    checkpoint_every: int = 500
    validate_every: int | None = None
    # Iterations between log lines with the mean loss.
    log_every: int = 50
    seed: int = 12345
    deterministic: bool = False
    device: str = "auto"
    compile: bool = False
    num_workers: int = 0
    continue_training: bool = False
    max_consecutive_nonfinite: int = DEFAULT_MAX_CONSECUTIVE_NONFINITE
    # Stop after this many completed iterations and write only checkpoint_latest.pth, as a
    # time-limited job would; a later run with continue_training=True finishes the schedule.
    stop_at_iteration: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        if self.total_iterations < 1:
            raise ValueError(f"Invalid number of iterations {self.total_iterations}: must be at least 1.")
        if self.learning_rate <= 0:
            raise ValueError(f"Invalid learning rate {self.learning_rate}: must be positive.")
        if self.checkpoint_every < 1:
            raise ValueError(f"Invalid --checkpoint_every {self.checkpoint_every}: must be at least 1.")
        if self.num_workers < 0:
            raise ValueError(f"Invalid --num_workers {self.num_workers}: must be 0 (in-process) or more.")
        if self.seed < 0:
            raise ValueError(f"Invalid --seed {self.seed}: must be 0 or more.")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"Invalid grad_clip {self.grad_clip}: must be positive or None.")


class BaseTrainer:
    task = "base"
    # Subclasses whose forward pass leaves some trainable parameters without gradient set this.
    ddp_find_unused_parameters = False
    # Name of the validation metric stored in training_log.json (None: no validation metric).
    val_metric_name: str | None = None

    def __init__(self, settings: TrainerSettings) -> None:
        settings.check()
        self.settings = settings
        self.output_folder = Path(settings.output_folder)
        self.progress = ProgressTracker()
        self.guard = NonFiniteGuard(settings.max_consecutive_nonfinite)
        self.iteration = 0
        self.device: torch.device | None = None
        self.network: nn.Module | None = None
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.context: distributed.DistributedContext | None = None
        self.continued_from: Path | None = None
        self.last_validated_iteration: int | None = None
        self.log_file: Path | None = None

    # ------------------------------------------------------------------ subclass hooks

    def build_network(self) -> nn.Module:
        raise NotImplementedError

    def build_batch_iterator(self, start_iteration: int) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def compute_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        raise NotImplementedError

    def parameter_groups(self, network: nn.Module) -> list[dict[str, Any]]:
        return [{"params": [p for p in network.parameters() if p.requires_grad]}]

    def initialize_weights(self) -> None:
        pass

    def after_network_built(self) -> None:
        pass

    def after_optimizer_step(self, iteration: int) -> None:
        pass

    def extra_checkpoint_entries(self) -> dict[str, Any]:
        return {}

    def restore_extra_checkpoint_entries(self, payload: dict[str, Any]) -> None:
        pass

    def validate(self, iteration: int) -> float | None:
        return None

    # ------------------------------------------------------------------ helpers for subclasses

    @property
    def rank(self) -> int:
        return self.context.rank if self.context is not None else 0

    @property
    def world_size(self) -> int:
        return self.context.world_size if self.context is not None else 1

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    def iteration_generator(self, iteration: int | None = None, device: torch.device | str = "cpu") -> torch.Generator:
        """Return a generator on ``device`` seeded from (seed, rank, iteration), for noise that must be resumable."""
        iteration = self.iteration if iteration is None else iteration
        # SeedSequence hashes the triple, so different triples give unrelated seeds.
        seed = np.random.SeedSequence([self.settings.seed, self.rank, iteration]).generate_state(1, np.uint64)[0]
        return torch.Generator(device=device).manual_seed(int(seed) % 2**63)

    # ------------------------------------------------------------------ set-up

    def _seed_everything(self, rank_offset: int) -> None:
        seed = self.settings.seed + rank_offset
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def setup(self) -> None:
        settings = self.settings
        set_deterministic(settings.deterministic)
        requested_device = resolve_device(settings.device)
        self.context = distributed.init_distributed(requested_device)
        self.device = distributed.local_device(self.context, requested_device)

        if self.is_main_process:
            self.output_folder.mkdir(parents=True, exist_ok=True)
        self.log_file = add_log_file(self.output_folder)
        logger.info(
            "%s training: %d iterations on %s, world size %d, output %s",
            self.task, settings.total_iterations, self.device, self.world_size, self.output_folder,
        )
        if settings.continue_training:
            payload = self.find_continue_checkpoint()
        else:
            payload = None
            self.remove_previous_checkpoints()

        # Same seed on every rank while building, so all ranks start from identical weights
        # (DDP also broadcasts rank 0's weights, but the EMA copy is taken before wrapping).
        self._seed_everything(rank_offset=0)
        self.network = self.build_network().to(self.device)
        if payload is None:
            self.initialize_weights()
        self.after_network_built()
        self._seed_everything(rank_offset=self.rank)

        groups = self.parameter_groups(self.network)
        self.optimizer = torch.optim.AdamW(
            groups, lr=settings.learning_rate, weight_decay=settings.weight_decay, betas=settings.adam_betas
        )
        warmup = min(settings.warmup_iterations, settings.total_iterations - 1)
        self.lr_schedule = WarmupDecaySchedule(self.optimizer, settings.total_iterations, warmup, settings.decay)
        # bf16 autocast needs no loss scaling; the disabled scaler keeps the checkpoint format
        # ready for fp16 (its state_dict is empty while disabled).
        self.grad_scaler = torch.amp.GradScaler(self.device.type if self.device.type == "cuda" else "cpu", enabled=False)

        if payload is not None:
            self.restore_checkpoint(payload)

        wrapped = distributed.wrap_ddp(self.network, self.device, self.ddp_find_unused_parameters)
        self.model = maybe_compile(wrapped, settings.compile)

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_payload(self) -> dict[str, Any]:
        payload = {
            "task": self.task,
            "network_weights": self.network.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict(),
            "iteration": self.iteration,
            "total_iterations": self.settings.total_iterations,
            # NOTE: only rank 0's generator states are stored; other ranks reseed on continue,
            # so DDP runs continue reproducibly but not bitwise like a single-process run.
            "rng_state": capture_rng_state(),
            "dataloader_seed": self.settings.seed,
            "progress": self.progress.state_dict(),
        }
        payload.update(self.extra_checkpoint_entries())
        return payload

    def save_checkpoint(self, name: str) -> Path:
        """Write ``name`` in the output folder on rank 0; all ranks wait until it is written."""
        path = self.output_folder / name
        if self.is_main_process:
            save_checkpoint(path, self.checkpoint_payload())
            self.save_progress_json()
            self.progress.plot(self.output_folder / PROGRESS_PLOT)
            logger.info("Saved %s at iteration %d", path, self.iteration)
        distributed.barrier()
        return path

    def save_progress_json(self) -> None:
        """Write training_log.json in the evaluation package's format, with the metric's name when set."""
        if self.val_metric_name is None:
            self.progress.save_json(self.output_folder / PROGRESS_JSON)
            return
        from ortho_nnd.evaluation.training_log import write_training_log_json

        values = self.progress.state_dict()
        write_training_log_json(
            self.output_folder / PROGRESS_JSON, values["iteration"], values["loss"], values["learning_rate"],
            values["val_metric"], self.val_metric_name,
        )

    def remove_previous_checkpoints(self) -> None:
        """Delete checkpoints of an earlier run in the output folder before a fresh (non --c) run.

        Otherwise a stale ``checkpoint_final.pth`` would be used by fine-tuning and prediction, or
        by ``--c``, after this run is interrupted.
        """
        if not self.is_main_process:
            return
        for name in (FINAL_CHECKPOINT, LATEST_CHECKPOINT):
            path = self.output_folder / name
            if path.is_file():
                logger.warning("Starting a new run: removing %s of the previous run (use --c to continue it instead).", path)
                path.unlink()

    def find_continue_checkpoint(self) -> dict[str, Any] | None:
        """Load the newer of ``checkpoint_final.pth`` and ``checkpoint_latest.pth``; None when neither exists."""
        # Normally the final checkpoint is the newer one, because latest is stale once final is
        # written. Comparing modification times also covers a final file left by an older run.
        candidates = [self.output_folder / name for name in (FINAL_CHECKPOINT, LATEST_CHECKPOINT)]
        existing = [p for p in candidates if p.is_file()]
        path = max(existing, key=lambda p: p.stat().st_mtime_ns) if existing else candidates[1]
        if not path.is_file():
            logger.warning("Continue requested but no %s in %s; starting from scratch.", LATEST_CHECKPOINT, self.output_folder)
            return None

        payload = load_checkpoint(path, map_location=self.device)
        if payload.get("task") != self.task:
            raise ValueError(
                f"Checkpoint {path} belongs to task {payload.get('task')!r}, not {self.task!r}. Use another output folder."
            )
        self.continued_from = path
        return payload

    def restore_checkpoint(self, payload: dict[str, Any]) -> None:
        self.network.load_state_dict(payload["network_weights"])
        self.optimizer.load_state_dict(payload["optimizer_state"])
        self.grad_scaler.load_state_dict(payload["grad_scaler_state"])
        self.iteration = int(payload["iteration"])
        self.progress.load_state_dict(payload["progress"])

        stored_seed = int(payload["dataloader_seed"])
        if stored_seed != self.settings.seed:
            logger.warning("Seed %d differs from the checkpoint's %d; using the checkpoint's seed.", self.settings.seed, stored_seed)
            self.settings.seed = stored_seed
        if self.is_main_process:
            restore_rng_state(payload["rng_state"])
        else:
            self._seed_everything(rank_offset=self.rank)

        self.restore_extra_checkpoint_entries(payload)
        logger.info("Continuing from %s at iteration %d", self.continued_from, self.iteration)

    # ------------------------------------------------------------------ the loop

    def train_step(self, batch: dict[str, Any]) -> float | None:
        """Run one optimizer step; return the loss (mean over ranks) or None when the step was skipped."""
        learning_rates = self.lr_schedule.step(self.iteration)
        self.current_learning_rate = learning_rates[0]
        self.optimizer.zero_grad(set_to_none=True)

        with autocast_context(self.device):
            loss, info = self.compute_loss(batch)

        # Every rank must take the same branch, or DDP's gradient all-reduce would hang.
        loss_value = float(distributed.all_reduce_mean(loss.detach().float()))
        if not math.isfinite(loss_value):
            self.guard.check(self.iteration, loss_value, self._case_ids_of_all_ranks(batch), "loss")
            return None

        self.grad_scaler.scale(loss).backward()
        self.grad_scaler.unscale_(self.optimizer)
        parameters = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        max_norm = self.settings.grad_clip if self.settings.grad_clip is not None else math.inf
        # DDP has already averaged the gradients, so the norm is the same on every rank.
        grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, max_norm))
        if not math.isfinite(grad_norm):
            self.guard.check(self.iteration, grad_norm, self._case_ids_of_all_ranks(batch), "gradient norm")
            self.optimizer.zero_grad(set_to_none=True)
            return None

        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        self.after_optimizer_step(self.iteration)
        self.guard.reset()
        return loss_value

    def _case_ids_of_all_ranks(self, batch: dict[str, Any]) -> list[str]:
        # Called on every rank together, because a collective needs all of them.
        gathered = distributed.all_gather_object(list(batch.get("keys", [])))
        return [case_id for keys in gathered for case_id in keys]

    def run(self) -> Path:
        """Train until ``total_iterations`` (or ``stop_at_iteration``); return the last checkpoint written."""
        settings = self.settings
        try:
            self.setup()
            if self.iteration >= settings.total_iterations:
                logger.info("Training already finished (%d iterations); nothing to do.", self.iteration)
                if not (self.output_folder / FINAL_CHECKPOINT).is_file():
                    return self.save_checkpoint(FINAL_CHECKPOINT)
                return self.output_folder / FINAL_CHECKPOINT
            return self._train_loop()
        finally:
            remove_log_file(self.log_file)
            distributed.cleanup_distributed()

    def _train_loop(self) -> Path:
        settings = self.settings
        end = settings.total_iterations
        if settings.stop_at_iteration is not None:
            end = min(end, settings.stop_at_iteration)

        batches = self.build_batch_iterator(self.iteration)
        self.network.train()
        window: list[float] = []
        progress_bar = tqdm(
            total=end, initial=self.iteration, disable=not self.is_main_process, desc=f"{self.task}", unit="it"
        )
        try:
            while self.iteration < end:
                batch = next(batches)
                loss_value = self.train_step(batch)
                self.iteration += 1
                progress_bar.update(1)

                val_metric = None
                if settings.validate_every and self.iteration % settings.validate_every == 0:
                    val_metric = self.validate(self.iteration)
                    self.last_validated_iteration = self.iteration
                    self.network.train()
                if loss_value is not None:
                    self.progress.record(self.iteration, loss_value, self.current_learning_rate, val_metric)
                    window.append(loss_value)
                    progress_bar.set_postfix(loss=f"{loss_value:.4f}")

                if window and self.iteration % settings.log_every == 0:
                    logger.info(
                        "iteration %d: mean loss %.5f over %d steps, lr %.3g",
                        self.iteration, sum(window) / len(window), len(window), self.current_learning_rate,
                    )
                    window = []
                if self.iteration % settings.checkpoint_every == 0 and self.iteration < settings.total_iterations:
                    self.save_checkpoint(LATEST_CHECKPOINT)
        finally:
            progress_bar.close()
            close_batch_iterator(batches)

        if self.iteration < settings.total_iterations:
            logger.info("Stopped at iteration %d of %d; continue with --c.", self.iteration, settings.total_iterations)
            return self.save_checkpoint(LATEST_CHECKPOINT)

        val_metric = None
        if self.last_validated_iteration != self.iteration:
            val_metric = self.validate(self.iteration)
        if val_metric is not None and len(self.progress):
            self.progress.values["val_metric"][-1] = float(val_metric)
        return self.save_checkpoint(FINAL_CHECKPOINT)
