"""Timestep embedding of the diffusion UNet: sinusoidal features followed by an MLP."""
from __future__ import annotations

import math

import torch
from torch import nn

# Maximum period of the sinusoidal embedding, in timesteps (Vaswani et al. 2017; Ho et al. 2020).
MAX_PERIOD = 10000.0


def sinusoidal_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """Embed timesteps (B,) of any numeric dtype as (B, dim) float32 sine and cosine features.

    Float timesteps are allowed, so a learned continuous timestep gets a smooth embedding.
    """
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must have shape (B,), got {tuple(timesteps.shape)}.")

    half = dim // 2
    exponents = torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    frequencies = torch.exp(-math.log(MAX_PERIOD) * exponents)
    angles = timesteps.float()[:, None] * frequencies[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class TimestepEmbedding(nn.Module):
    """Sinusoidal embedding of size ``dim`` followed by Linear-SiLU-Linear (output size ``dim``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(timesteps, self.dim))
