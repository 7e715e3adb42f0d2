"""Noise schedules and the DDPM forward process q(x_t | x_0).

Timesteps are integer indices t in [0, T). alpha_bar[t] is the fraction of signal variance
left at step t, so x_t = sqrt(alpha_bar[t]) * x_0 + sqrt(1 - alpha_bar[t]) * noise.

Schedules:
- "cosine" (Nichol and Dhariwal 2021, "Improved DDPM", eq. 17):
  alpha_bar(t) = f(t) / f(0) with f(t) = cos^2(((t / T + s) / (1 + s)) * pi / 2), s = 0.008;
  the betas derived from consecutive ratios are clipped at 0.999.
- "linear" (Ho et al. 2020): betas from 1e-4 to 0.02 for T = 1000, both scaled by 1000 / T
  for other T (the scaling of Nichol and Dhariwal 2021) so the total noise stays comparable.

Prediction targets:
- "epsilon": the noise.
- "v" (Salimans and Ho 2022): v = sqrt(alpha_bar) * noise - sqrt(1 - alpha_bar) * x_0.
"""
from __future__ import annotations

import math

import torch

SUPPORTED_SCHEDULES = ("cosine", "linear")
SUPPORTED_PREDICTIONS = ("epsilon", "v")

# Offset s of the cosine schedule, which keeps beta_0 from being vanishingly small.
COSINE_OFFSET = 0.008
# Upper clip of beta_t in the cosine schedule, which prevents a singular last step.
MAX_BETA = 0.999
# Linear schedule end points for T = LINEAR_REFERENCE_STEPS.
LINEAR_BETA_START = 1e-4
LINEAR_BETA_END = 0.02
LINEAR_REFERENCE_STEPS = 1000


def cosine_betas(num_timesteps: int) -> torch.Tensor:
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64)
    f = torch.cos(((steps / num_timesteps + COSINE_OFFSET) / (1 + COSINE_OFFSET)) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(max=MAX_BETA)


def linear_betas(num_timesteps: int) -> torch.Tensor:
    scale = LINEAR_REFERENCE_STEPS / num_timesteps
    return torch.linspace(
        scale * LINEAR_BETA_START, scale * LINEAR_BETA_END, num_timesteps, dtype=torch.float64
    )


def _check_prediction(prediction: str) -> None:
    if prediction not in SUPPORTED_PREDICTIONS:
        raise ValueError(f"Unknown prediction type {prediction!r}; use one of {SUPPORTED_PREDICTIONS}.")


class DiffusionSchedule:
    """Betas and alpha_bar of a schedule, and the forward-process helpers that use them.

    The tables are float64 on the CPU, and lookups copy the needed values to the device and dtype
    of the data.
    """

    def __init__(self, num_timesteps: int = 1000, schedule: str = "cosine"):
        if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 1:
            raise ValueError(f"num_timesteps must be a positive integer, got {num_timesteps!r}.")
        if schedule not in SUPPORTED_SCHEDULES:
            raise ValueError(f"Unknown noise schedule {schedule!r}; use one of {SUPPORTED_SCHEDULES}.")
        self.num_timesteps = num_timesteps
        self.schedule = schedule

        self.betas = cosine_betas(num_timesteps) if schedule == "cosine" else linear_betas(num_timesteps)
        self.alphas_cumprod = torch.cumprod(1 - self.betas, dim=0)
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1 - self.alphas_cumprod).sqrt()

    @classmethod
    def from_plans(cls, diffusion_plans: dict) -> "DiffusionSchedule":
        """Build the schedule from the ``diffusion`` entry of a view's plans."""
        return cls(int(diffusion_plans.get("num_timesteps", 1000)), diffusion_plans.get("schedule", "cosine"))

    def _lookup(self, table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Return table[t] shaped (B, 1, ..., 1) to broadcast against ``like``."""
        if t.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) or t.ndim != 1:
            raise ValueError(f"Timesteps must be an integer tensor of shape (B,), got {t.dtype} {tuple(t.shape)}.")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
            raise ValueError(
                f"Timesteps must lie in [0, {self.num_timesteps}), got min {int(t.min())} max {int(t.max())}."
            )
        values = table[t.cpu()].to(device=like.device, dtype=like.dtype if like.is_floating_point() else torch.float32)
        return values.reshape(-1, *([1] * (like.ndim - 1)))

    def sample_timesteps(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """Draw ``batch`` timesteps uniformly from [0, T) as a LongTensor on ``device``."""
        sample_device = generator.device if generator is not None else device
        t = torch.randint(0, self.num_timesteps, (batch,), generator=generator, device=sample_device)
        return t.to(device)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Return x_t = sqrt(alpha_bar[t]) * x0 + sqrt(1 - alpha_bar[t]) * noise."""
        return self._lookup(self.sqrt_alphas_cumprod, t, x0) * x0 + self._lookup(
            self.sqrt_one_minus_alphas_cumprod, t, x0
        ) * noise

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, prediction: str) -> torch.Tensor:
        """Return the regression target of the network for ``prediction`` ("epsilon" or "v")."""
        _check_prediction(prediction)
        if prediction == "epsilon":
            return noise
        return self._lookup(self.sqrt_alphas_cumprod, t, x0) * noise - self._lookup(
            self.sqrt_one_minus_alphas_cumprod, t, x0
        ) * x0

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, model_output: torch.Tensor, prediction: str) -> torch.Tensor:
        """Return the estimate of x0 implied by the network output at x_t.

        epsilon: x0 = (x_t - sqrt(1 - alpha_bar) * eps) / sqrt(alpha_bar)
        v:       x0 = sqrt(alpha_bar) * x_t - sqrt(1 - alpha_bar) * v
        NOTE: for epsilon prediction the division amplifies errors near t = T - 1, where
        alpha_bar is close to 0 (cosine schedule: about 2e-9 at the last step for T = 1000).
        """
        _check_prediction(prediction)
        signal = self._lookup(self.sqrt_alphas_cumprod, t, x_t)
        noise_level = self._lookup(self.sqrt_one_minus_alphas_cumprod, t, x_t)
        if prediction == "epsilon":
            return (x_t - noise_level * model_output) / signal
        return signal * x_t - noise_level * model_output

    def predict_epsilon(self, x_t: torch.Tensor, t: torch.Tensor, model_output: torch.Tensor, prediction: str) -> torch.Tensor:
        """Return the noise estimate implied by the network output at x_t."""
        _check_prediction(prediction)
        if prediction == "epsilon":
            return model_output
        signal = self._lookup(self.sqrt_alphas_cumprod, t, x_t)
        noise_level = self._lookup(self.sqrt_one_minus_alphas_cumprod, t, x_t)
        return noise_level * x_t + signal * model_output
