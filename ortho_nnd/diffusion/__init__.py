"""Diffusion core: noise schedules and forward process, denoising loss, weight EMA.

Public API:
- ``DiffusionSchedule(num_timesteps, schedule)``: ``q_sample``, ``training_target``,
  ``predict_x0``, ``predict_epsilon``, ``sample_timesteps``; ``DiffusionSchedule.from_plans``.
- ``diffusion_loss(model, x0, schedule, prediction, generator=None) -> (loss, info)``.
- ``ExponentialMovingAverage(model, decay, warmup=True)``: ``update``, ``copy_to``,
  ``state_dict``, ``load_state_dict``, ``averaged_state_dict``; ``unwrap_model``.
"""
from ortho_nnd.diffusion.ema import ExponentialMovingAverage, unwrap_model
from ortho_nnd.diffusion.loss import diffusion_loss
from ortho_nnd.diffusion.schedule import SUPPORTED_PREDICTIONS, SUPPORTED_SCHEDULES, DiffusionSchedule

__all__ = [
    "DiffusionSchedule",
    "ExponentialMovingAverage",
    "SUPPORTED_PREDICTIONS",
    "SUPPORTED_SCHEDULES",
    "diffusion_loss",
    "unwrap_model",
]
