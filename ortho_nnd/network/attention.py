"""Multi-head self-attention over all voxels of a 3D feature map, with a residual connection."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ortho_nnd.network.residual import make_norm


class SelfAttention3d(nn.Module):
    """out = x + proj(attention(qkv(norm(x)))), with every voxel a token.

    The output projection is zero-initialised, so the block starts as the identity.
    """

    def __init__(self, channels: int, heads: int, norm: str):
        super().__init__()
        if channels % heads != 0:
            raise ValueError(f"heads={heads} must divide channels={channels}.")
        self.heads = heads
        self.norm = make_norm(norm, channels)
        self.qkv = nn.Conv3d(channels, 3 * channels, kernel_size=1)
        self.proj = nn.Conv3d(channels, channels, kernel_size=1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, *spatial = x.shape
        head_dim = channels // self.heads

        # (B, 3C, Z, Y, X) -> three (B, heads, N, head_dim) tensors.
        qkv = self.qkv(self.norm(x)).reshape(batch, 3, self.heads, head_dim, -1)
        query, key, value = qkv.permute(1, 0, 2, 4, 3).unbind(0)

        attended = F.scaled_dot_product_attention(query, key, value)
        attended = attended.permute(0, 1, 3, 2).reshape(batch, channels, *spatial)
        return x + self.proj(attended)
