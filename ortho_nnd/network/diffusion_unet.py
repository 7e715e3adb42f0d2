"""Time-conditioned 3D residual UNet for diffusion pretraining and feature extraction.

Built from the ``architecture.kwargs`` of a view's plans (see ``architecture_kwargs``):

- encoder stage s: an input conv with kernel ``kernel_sizes[s]`` and stride ``strides[s]``
  (the stem at stride 1 for stage 0), ``n_blocks_per_stage[s]`` residual blocks, and
  self-attention when ``attention_stages[s]`` is set. The deepest stage is the bottleneck.
- decoder stage s (for s = S-2 .. 0): a transposed conv (kernel = stride = ``strides[s+1]``),
  concatenation with the encoder skip, and ``n_blocks_per_stage_decoder[s]`` residual blocks.
- output head: norm, SiLU and a zero-initialised conv to ``out_channels``.

Every residual block receives the timestep embedding as scale and shift after normalisation.

Feature names: ``enc0`` .. ``enc{S-2}``, ``bottleneck``, ``dec{S-2}`` .. ``dec0``. ``dec{s}``
has the resolution and channels of ``enc{s}`` (``dec0`` is full resolution). Use
``forward_features`` to get them. Decoder stages are computed only as far as requested.

Task networks that use only some features call ``restrict_to_features`` to drop the modules
they never run (for DDP without ``find_unused_parameters``). The spec stays the full kwargs.
"""
from __future__ import annotations

import copy
import logging
from typing import Sequence

import torch
from torch import nn
from dynamic_network_architectures.building_blocks.helper import get_matching_convtransp

from ortho_nnd.network.architecture_kwargs import cumulative_strides, validate_architecture_kwargs
from ortho_nnd.network.attention import SelfAttention3d
from ortho_nnd.network.residual import TimeResidualBlock, make_norm, same_padding
from ortho_nnd.network.time_embedding import TimestepEmbedding

logger = logging.getLogger(__name__)

DIFFUSION_UNET_CLASS = "ortho_nnd.network.diffusion_unet.DiffusionUNet"


class EncoderStage(nn.Module):
    """Input conv (strided except at stage 0), residual blocks, optional self-attention."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, n_blocks, attention_heads,
                 time_embed_dim, norm, dropout):
        super().__init__()
        self.input_conv = nn.Conv3d(
            in_channels, out_channels, kernel_size, stride=stride, padding=same_padding(kernel_size)
        )
        self.blocks = nn.ModuleList(
            TimeResidualBlock(out_channels, out_channels, kernel_size, time_embed_dim, norm, dropout)
            for _ in range(n_blocks)
        )
        self.attention = SelfAttention3d(out_channels, attention_heads, norm) if attention_heads else None

    def forward(self, x: torch.Tensor, time_embedding: torch.Tensor) -> torch.Tensor:
        h = self.input_conv(x)
        for block in self.blocks:
            h = block(h, time_embedding)
        if self.attention is not None:
            h = self.attention(h)
        return h


class DecoderStage(nn.Module):
    """Transposed-conv upsampling, concatenation with the skip, residual blocks."""

    def __init__(self, coarse_channels, channels, kernel_size, upsample_stride, n_blocks,
                 time_embed_dim, norm, dropout):
        super().__init__()
        transposed_conv = get_matching_convtransp(dimension=3)
        self.upsample = transposed_conv(
            coarse_channels, channels, kernel_size=upsample_stride, stride=upsample_stride
        )
        self.blocks = nn.ModuleList(
            TimeResidualBlock(
                2 * channels if index == 0 else channels, channels, kernel_size, time_embed_dim, norm, dropout
            )
            for index in range(n_blocks)
        )

    def forward(self, coarse: torch.Tensor, skip: torch.Tensor, time_embedding: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.upsample(coarse), skip], dim=1)
        for block in self.blocks:
            h = block(h, time_embedding)
        return h


class OutputHead(nn.Module):
    """Norm, SiLU and a zero-initialised conv, so the untrained network predicts zero."""

    def __init__(self, channels, out_channels, kernel_size, norm):
        super().__init__()
        self.norm = make_norm(norm, channels)
        self.activation = nn.SiLU()
        self.conv = nn.Conv3d(channels, out_channels, kernel_size, padding=same_padding(kernel_size))
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.activation(self.norm(x)))


class DiffusionUNet(nn.Module):
    """Time-conditioned residual 3D UNet (see the module docstring for layout and feature names)."""

    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = validate_architecture_kwargs(kwargs)
        arch = self.kwargs
        features = arch["features_per_stage"]
        self.n_stages = len(features)

        self.time_embedding = TimestepEmbedding(arch["time_embed_dim"])

        self.encoder = nn.ModuleList()
        for stage in range(self.n_stages):
            self.encoder.append(
                EncoderStage(
                    in_channels=arch["in_channels"] if stage == 0 else features[stage - 1],
                    out_channels=features[stage],
                    kernel_size=arch["kernel_sizes"][stage],
                    stride=arch["strides"][stage],
                    n_blocks=arch["n_blocks_per_stage"][stage],
                    attention_heads=arch["attention_heads"] if arch["attention_stages"][stage] else 0,
                    time_embed_dim=arch["time_embed_dim"],
                    norm=arch["norm"],
                    dropout=arch["dropout"],
                )
            )

        # decoder[s] produces dec{s}, so the index follows the resolution, not the execution order.
        self.decoder = nn.ModuleList(
            DecoderStage(
                coarse_channels=features[stage + 1],
                channels=features[stage],
                kernel_size=arch["kernel_sizes"][stage],
                upsample_stride=arch["strides"][stage + 1],
                n_blocks=arch["n_blocks_per_stage_decoder"][stage],
                time_embed_dim=arch["time_embed_dim"],
                norm=arch["norm"],
                dropout=arch["dropout"],
            )
            for stage in range(self.n_stages - 1)
        )

        self.output_head = OutputHead(features[0], arch["out_channels"], arch["kernel_sizes"][0], arch["norm"])

        # Features left after restrict_to_features, or None while the network is complete.
        self._available_features: set[str] | None = None

    # ------------------------------------------------------------------ spec and metadata

    def to_spec(self) -> dict:
        """Return the JSON-compatible spec that ``build_network_from_spec`` rebuilds."""
        return {"network_class": DIFFUSION_UNET_CLASS, "kwargs": copy.deepcopy(self.kwargs)}

    @classmethod
    def from_spec_kwargs(cls, kwargs: dict) -> "DiffusionUNet":
        return cls(**kwargs)

    def feature_names(self) -> list[str]:
        """Return all feature names, from the input side to the output side."""
        last = self.n_stages - 1
        return (
            [f"enc{s}" for s in range(last)]
            + ["bottleneck"]
            + [f"dec{s}" for s in range(last - 1, -1, -1)]
        )

    def _stage_of(self, name: str) -> int:
        if name == "bottleneck":
            return self.n_stages - 1
        return int(name[3:])

    def feature_channels(self) -> dict[str, int]:
        """Return the channel count of every named feature map."""
        features = self.kwargs["features_per_stage"]
        return {name: features[self._stage_of(name)] for name in self.feature_names()}

    def feature_strides(self) -> dict[str, tuple[int, ...]]:
        """Return the cumulative downsampling per canonical axis of every named feature map."""
        totals = cumulative_strides(self.kwargs["strides"])
        return {name: totals[self._stage_of(name)] for name in self.feature_names()}

    def required_input_divisor(self) -> tuple[int, ...]:
        """Return the per-axis divisor that every input spatial size must be a multiple of."""
        return cumulative_strides(self.kwargs["strides"])[-1]

    # ------------------------------------------------------------------ pruning

    def restrict_to_features(self, names: Sequence[str]) -> None:
        """Drop every module not needed to compute ``names`` (and the output head).

        Afterwards ``forward`` raises and ``forward_features`` accepts only features whose
        computation needs no dropped module. Dropped parameters vanish from ``state_dict``.
        """
        names = self._check_feature_names(names)
        deepest_encoder, finest_decoder = self._needed_stages(names)

        for stage in range(deepest_encoder + 1, self.n_stages):
            self.encoder[stage] = nn.Identity()
        for stage in range(self.n_stages - 1):
            if finest_decoder is None or stage < finest_decoder:
                self.decoder[stage] = nn.Identity()
        self.output_head = None

        available = {f"enc{s}" for s in range(min(deepest_encoder + 1, self.n_stages - 1))}
        if deepest_encoder == self.n_stages - 1:
            available.add("bottleneck")
        if finest_decoder is not None:
            available.update(f"dec{s}" for s in range(finest_decoder, self.n_stages - 1))
        self._available_features = available
        logger.debug("DiffusionUNet restricted to features %s", sorted(available))

    # ------------------------------------------------------------------ forward

    def _check_feature_names(self, names: Sequence[str]) -> list[str]:
        if isinstance(names, str):
            names = [names]
        names = list(names)
        valid = self.feature_names()
        unknown = [name for name in names if name not in valid]
        if unknown:
            raise ValueError(f"Unknown feature names {unknown}; this network provides {valid}.")
        if self._available_features is not None:
            dropped = [name for name in names if name not in self._available_features]
            if dropped:
                raise ValueError(
                    f"Features {dropped} were removed by restrict_to_features; available: "
                    f"{sorted(self._available_features)}."
                )
        return names

    def _needed_stages(self, names: list[str]) -> tuple[int, int | None]:
        """Return the deepest encoder stage and the finest decoder stage (None: no decoder)."""
        decoder_stages = [self._stage_of(name) for name in names if name.startswith("dec")]
        if decoder_stages:
            return self.n_stages - 1, min(decoder_stages)
        return max(self._stage_of(name) for name in names), None

    def _check_input(self, x: torch.Tensor) -> None:
        expected_channels = self.kwargs["in_channels"]
        if x.ndim != 5 or x.shape[1] != expected_channels:
            raise ValueError(
                f"Input must have shape (B, {expected_channels}, Z, Y, X), got {tuple(x.shape)}."
            )
        divisor = self.required_input_divisor()
        spatial = tuple(x.shape[2:])
        if any(size % div != 0 for size, div in zip(spatial, divisor)):
            raise ValueError(
                f"Input spatial shape {spatial} is not divisible by the cumulative strides "
                f"{divisor}; pad or crop each axis to a multiple of {divisor}."
            )

    def _embed_time(self, t: torch.Tensor | int | float, batch: int, device: torch.device) -> torch.Tensor:
        t = torch.as_tensor(t, device=device)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"Timesteps must have shape ({batch},) or be a scalar, got {tuple(t.shape)}.")
        return self.time_embedding(t)

    def forward_features(
        self, x: torch.Tensor, t: torch.Tensor | int | float, names: Sequence[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """Return the requested stage outputs (all available ones when ``names`` is None).

        ``t`` is a LongTensor (B,) of timesteps, a float tensor (B,), or a scalar for the whole batch.
        """
        if names is None:
            names = [
                name for name in self.feature_names()
                if self._available_features is None or name in self._available_features
            ]
        names = self._check_feature_names(names)
        self._check_input(x)
        deepest_encoder, finest_decoder = self._needed_stages(names)
        time_embedding = self._embed_time(t, x.shape[0], x.device)

        # Encoder, stopping at the deepest stage that is needed.
        encoder_outputs = []
        h = x
        for stage in range(deepest_encoder + 1):
            h = self.encoder[stage](h, time_embedding)
            encoder_outputs.append(h)

        computed = {f"enc{s}": out for s, out in enumerate(encoder_outputs[: self.n_stages - 1])}
        if deepest_encoder == self.n_stages - 1:
            computed["bottleneck"] = encoder_outputs[-1]

        # Decoder, from the bottleneck up to the finest stage that is needed.
        if finest_decoder is not None:
            h = encoder_outputs[-1]
            for stage in range(self.n_stages - 2, finest_decoder - 1, -1):
                h = self.decoder[stage](h, encoder_outputs[stage], time_embedding)
                computed[f"dec{stage}"] = h

        return {name: computed[name] for name in names}

    def forward(self, x: torch.Tensor, t: torch.Tensor | int | float) -> torch.Tensor:
        """Return the diffusion prediction (epsilon or v, per the plans) with the input's spatial shape."""
        if self.output_head is None:
            raise RuntimeError("This DiffusionUNet was restricted to features; use forward_features.")
        features = self.forward_features(x, t, ["dec0"])
        return self.output_head(features["dec0"])
