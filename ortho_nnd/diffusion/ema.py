"""Exponential moving average (EMA) of network weights for diffusion pretraining.

shadow <- decay_n * shadow + (1 - decay_n) * weight after each optimiser step, with the
warm-up decay_n = min(decay, (1 + n) / (10 + n)) for update number n (the warm-up of the
TensorFlow ExponentialMovingAverage with num_updates), so early shadows are not dominated by
the random initialisation. Buffers (norm running statistics, if any) are copied, not averaged.

The shadow is float32 on the device of the model. ``state_dict`` contains only tensors and
JSON-compatible values, so ``torch.load(weights_only=True)`` reads a checkpoint with it.
"""
from __future__ import annotations

import torch
from torch import nn

# Denominator offset of the warm-up: decay_n = (1 + n) / (WARMUP_OFFSET + n).
WARMUP_OFFSET = 10.0


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the plain module inside a DistributedDataParallel / DataParallel or torch.compile wrapper."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


class ExponentialMovingAverage:
    """EMA of the floating-point parameters of ``model`` (unwrapped from DDP first)."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay!r}.")
        self.model = unwrap_model(model)
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.shadow = {
            name: param.detach().float().clone()
            for name, param in self.model.named_parameters()
            if param.dtype.is_floating_point
        }

    def current_decay(self) -> float:
        """Return the decay the next update uses."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.num_updates) / (WARMUP_OFFSET + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module | None = None) -> None:
        """Move the shadow towards the current weights of ``model`` (default: the tracked one)."""
        model = unwrap_model(model) if model is not None else self.model
        decay = self.current_decay()
        for name, param in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(param.detach().float(), 1.0 - decay)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module | None = None) -> None:
        """Write the averaged weights into ``model`` (default: the tracked one)."""
        model = unwrap_model(model) if model is not None else self.model
        for name, param in model.named_parameters():
            if name in self.shadow:
                param.copy_(self.shadow[name].to(param.dtype))

    def averaged_state_dict(self) -> dict[str, torch.Tensor]:
        """Return the tracked model's state_dict with the parameters replaced by their averages.

        ``network.load_state_dict`` accepts it, so it is what downstream tasks load.
        """
        state = {name: value.detach().clone() for name, value in self.model.state_dict().items()}
        for name, shadow in self.shadow.items():
            state[name] = shadow.clone()
        return state

    def state_dict(self) -> dict:
        """Return {"decay", "warmup", "num_updates", "weights": averaged_state_dict()}."""
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "weights": self.averaged_state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from ``state_dict()`` (ValueError when parameter names or shapes differ)."""
        weights = state["weights"]
        missing = sorted(set(self.shadow) - set(weights))
        if missing:
            raise ValueError(f"EMA state is missing parameters {missing[:5]} (of {len(missing)}), so it belongs to another network.")
        for name, shadow in self.shadow.items():
            if tuple(weights[name].shape) != tuple(shadow.shape):
                raise ValueError(
                    f"EMA state parameter {name} has shape {tuple(weights[name].shape)}, "
                    f"expected {tuple(shadow.shape)}."
                )
            shadow.copy_(weights[name].float())
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
