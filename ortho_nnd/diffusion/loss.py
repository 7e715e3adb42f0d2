"""Denoising training loss: mean squared error between the network output and its target."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ortho_nnd.diffusion.schedule import DiffusionSchedule


def diffusion_loss(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    schedule: DiffusionSchedule,
    prediction: str,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict]:
    """Noise ``x0`` at uniform random timesteps and return the MSE of ``model(x_t, t)``.

    ``generator`` (optional) draws the timesteps and the noise on its own device, and both are
    then moved to ``x0.device``. The loss is computed in float32 so autocast outputs do not lose
    precision in the reduction.

    Returns ``(loss, info)`` with info keys ``timesteps`` (B,) and ``loss_per_sample`` (B,),
    both detached, for logging the loss per timestep range.
    """
    batch = x0.shape[0]
    t = schedule.sample_timesteps(batch, generator=generator, device=x0.device)
    noise_device = generator.device if generator is not None else x0.device
    noise = torch.randn(x0.shape, generator=generator, device=noise_device, dtype=x0.dtype).to(x0.device)

    x_t = schedule.q_sample(x0, t, noise)
    output = model(x_t, t)
    target = schedule.training_target(x0, noise, t, prediction)
    if output.shape != target.shape:
        raise ValueError(
            f"The model output has shape {tuple(output.shape)} but the diffusion target has "
            f"{tuple(target.shape)}; the network's out_channels must equal its in_channels."
        )

    squared_error = F.mse_loss(output.float(), target.float(), reduction="none")
    loss_per_sample = squared_error.reshape(batch, -1).mean(dim=1)
    info = {"timesteps": t.detach(), "loss_per_sample": loss_per_sample.detach()}
    return loss_per_sample.mean(), info
