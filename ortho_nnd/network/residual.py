"""Time-conditioned residual block with adaptive normalisation, and the norm layer factory."""
from __future__ import annotations

import torch
from torch import nn

# Upper bound on the number of groups of GroupNorm (Wu and He 2018 use 32).
MAX_NORM_GROUPS = 32


def make_norm(norm: str, channels: int) -> nn.Module:
    """Build an affine InstanceNorm3d or GroupNorm layer for ``channels`` channels.

    GroupNorm uses the largest divisor of ``channels`` that is at most MAX_NORM_GROUPS.
    """
    if norm == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if norm == "group":
        groups = max(g for g in range(1, min(MAX_NORM_GROUPS, channels) + 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    raise ValueError(f"Unknown norm {norm!r}; use 'instance' or 'group'.")


def same_padding(kernel_size: list[int]) -> list[int]:
    """Return the padding that keeps the size for an odd kernel at stride 1."""
    return [size // 2 for size in kernel_size]


class TimeResidualBlock(nn.Module):
    """Pre-activation residual block conditioned on the timestep embedding.

    h = conv1(SiLU(norm1(x)))
    h = norm2(h) * (1 + scale) + shift      # scale, shift = Linear(SiLU(time embedding))
    h = conv2(dropout(SiLU(h)))
    out = skip(x) + h                       # skip is a 1x1x1 conv when the channels change

    The scale and shift act after normalisation, so instance norm cannot remove them.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: list[int],
        time_embed_dim: int,
        norm: str,
        dropout: float,
    ):
        super().__init__()
        padding = same_padding(kernel_size)

        self.norm1 = make_norm(norm, in_channels)
        self.conv1 = nn.Conv3d(in_channels, out_channels, kernel_size, padding=padding)
        self.norm2 = make_norm(norm, out_channels)
        self.time_modulation = nn.Sequential(nn.SiLU(), nn.Linear(time_embed_dim, 2 * out_channels))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv3d(out_channels, out_channels, kernel_size, padding=padding)
        self.activation = nn.SiLU()

        if in_channels != out_channels:
            self.skip = nn.Conv3d(in_channels, out_channels, kernel_size=1)
        else:
            self.skip = nn.Identity()

    def forward(self, x: torch.Tensor, time_embedding: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.activation(self.norm1(x)))

        # Adaptive normalisation: (B, 2C) -> two (B, C, 1, 1, 1) tensors.
        scale, shift = self.time_modulation(time_embedding)[:, :, None, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift

        h = self.conv2(self.dropout(self.activation(h)))
        return self.skip(x) + h
