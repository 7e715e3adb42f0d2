"""Pooling of a 3D feature map to a vector: attention pooling and global average pooling."""
from __future__ import annotations

import math

import torch
from torch import nn


class AttentionPooling3d(nn.Module):
    """Softmax-weighted voxel average with a learned query.

    score(v) = <query, W x(v)> / sqrt(C) per voxel v, weights = softmax over all voxels,
    output = sum_v weights(v) * x(v). The query starts at zero, so pooling starts as the mean.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.key = nn.Conv3d(channels, channels, kernel_size=1)
        self.query = nn.Parameter(torch.zeros(channels))
        self.scale = 1.0 / math.sqrt(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keys = self.key(x).flatten(2)                                   # (B, C, N)
        scores = torch.einsum("bcn,c->bn", keys, self.query) * self.scale
        weights = scores.softmax(dim=1)
        return torch.einsum("bcn,bn->bc", x.flatten(2), weights)


class AttentionAndAveragePooling3d(nn.Module):
    """Concatenation of attention pooling and global average pooling: (B, C, ...) -> (B, 2C)."""

    def __init__(self, channels: int):
        super().__init__()
        self.attention = AttentionPooling3d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.attention(x), x.flatten(2).mean(dim=2)], dim=1)
