"""Per-iteration learning-rate schedule: linear warm-up, then cosine or polynomial decay.

Public API:

- ``lr_factor(iteration, total_iterations, warmup_iterations, decay, poly_exponent, min_factor) -> float``
  is the multiplier of the base learning rate at ``iteration`` (0-based).
- ``WarmupDecaySchedule(optimizer, total_iterations, warmup_iterations=0, decay="cosine",
  poly_exponent=0.9, min_factor=0.0)``; call ``schedule.step(iteration)`` before each optimizer
  step. Each param group keeps its own base learning rate (stored as ``group["base_lr"]`` on
  first use), so groups with different rates, for example a backbone at a tenth of the head's
  rate, decay together. The schedule has no state besides the base rates, which live in the
  optimizer state dict, so resuming only needs the iteration number.

Warm-up ramps linearly from ``base_lr / warmup_iterations`` at iteration 0 to ``base_lr`` at
``warmup_iterations``. The decay then runs over the remaining iterations down to
``min_factor * base_lr`` at the last iteration.
"""
from __future__ import annotations

import math

import torch

DECAY_CHOICES = ("cosine", "poly")

# Exponent of the polynomial decay used by nnU-Net (lr = base * (1 - t)^0.9).
DEFAULT_POLY_EXPONENT = 0.9


def lr_factor(
    iteration: int,
    total_iterations: int,
    warmup_iterations: int = 0,
    decay: str = "cosine",
    poly_exponent: float = DEFAULT_POLY_EXPONENT,
    min_factor: float = 0.0,
) -> float:
    """Return the learning-rate multiplier at ``iteration``."""
    if decay not in DECAY_CHOICES:
        raise ValueError(f"Invalid learning-rate decay {decay!r}: choose one of {', '.join(DECAY_CHOICES)}.")
    if total_iterations < 1:
        raise ValueError(f"Invalid total_iterations={total_iterations}: must be at least 1.")
    if warmup_iterations < 0 or (warmup_iterations > 0 and warmup_iterations >= total_iterations):
        raise ValueError(
            f"Invalid warmup_iterations={warmup_iterations}: must be in [0, total_iterations={total_iterations})."
        )

    if iteration < warmup_iterations:
        return (iteration + 1) / warmup_iterations

    decay_length = max(total_iterations - warmup_iterations - 1, 1)
    progress = min(max((iteration - warmup_iterations) / decay_length, 0.0), 1.0)
    if decay == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        shape = (1.0 - progress) ** poly_exponent
    return min_factor + (1.0 - min_factor) * shape


class WarmupDecaySchedule:
    """Sets each param group's learning rate from its base rate and ``lr_factor``."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_iterations: int,
        warmup_iterations: int = 0,
        decay: str = "cosine",
        poly_exponent: float = DEFAULT_POLY_EXPONENT,
        min_factor: float = 0.0,
    ) -> None:
        self.optimizer = optimizer
        self.total_iterations = total_iterations
        self.warmup_iterations = warmup_iterations
        self.decay = decay
        self.poly_exponent = poly_exponent
        self.min_factor = min_factor

        # Validate the settings once, at construction.
        lr_factor(0, total_iterations, warmup_iterations, decay, poly_exponent, min_factor)

        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])

    def factor(self, iteration: int) -> float:
        return lr_factor(
            iteration, self.total_iterations, self.warmup_iterations, self.decay, self.poly_exponent, self.min_factor
        )

    def step(self, iteration: int) -> list[float]:
        """Set the learning rates for ``iteration`` and return them, one per param group."""
        factor = self.factor(iteration)
        rates = []
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
            rates.append(group["lr"])
        return rates
