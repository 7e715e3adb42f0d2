"""Segmentation network: a pretrained diffusion UNet run at a fixed timestep, with new heads.

The clean image goes in without added noise, because the timestep only conditions the
network: it gets the features the diffusion model computes at that noise level. With
``learn_timestep=True`` the timestep is a trainable float parameter initialised at
``timestep``.

Each decoder stage output ``dec{s}`` gets its own 1x1x1 conv head to ``num_classes`` logits.
With deep supervision the forward pass returns the list [dec0 logits, dec1 logits, ...] from
full resolution downwards (the nnU-Net convention), otherwise the full-resolution logits tensor.
The backbone's diffusion output head is removed (its weights are not part of this network).

NOTE: the heads of all decoder stages exist whatever ``deep_supervision`` is, so the state
dict does not depend on it. Training with ``deep_supervision=False`` leaves the coarse heads
without gradient, which DDP only accepts with ``find_unused_parameters=True``.
"""
from __future__ import annotations

import torch
from torch import nn

from ortho_nnd.network.diffusion_unet import DiffusionUNet

SEGMENTATION_NETWORK_CLASS = "ortho_nnd.network.segmentation.SegmentationNetwork"


class SegmentationNetwork(nn.Module):
    """DiffusionUNet backbone at a fixed (or learned) timestep plus per-stage segmentation heads."""

    def __init__(
        self,
        backbone: DiffusionUNet,
        num_classes: int,
        timestep: int | float,
        learn_timestep: bool = False,
        deep_supervision: bool = True,
    ):
        super().__init__()
        if not isinstance(backbone, DiffusionUNet):
            raise ValueError(f"backbone must be a DiffusionUNet, got {type(backbone).__name__}.")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2 (background included), got {num_classes!r}.")
        if not 0 <= timestep:
            raise ValueError(f"timestep must be >= 0, got {timestep!r}.")

        self.num_classes = num_classes
        self.initial_timestep = float(timestep)
        self.learn_timestep = bool(learn_timestep)
        self.deep_supervision = bool(deep_supervision)

        # Decoder feature names from full resolution downwards: dec0, dec1, ...
        self.decoder_feature_names = [f"dec{s}" for s in range(backbone.n_stages - 1)]
        backbone.restrict_to_features(self.decoder_feature_names)
        self.backbone = backbone

        channels = backbone.feature_channels()
        self.heads = nn.ModuleList(
            nn.Conv3d(channels[name], num_classes, kernel_size=1) for name in self.decoder_feature_names
        )

        if self.learn_timestep:
            self.timestep = nn.Parameter(torch.tensor(self.initial_timestep))
        else:
            self.register_buffer("timestep", torch.tensor(self.initial_timestep), persistent=False)

    def output_strides(self) -> list[tuple[int, ...]]:
        """Return the downsampling per axis of each deep supervision output (dec0 first)."""
        strides = self.backbone.feature_strides()
        return [strides[name] for name in self.decoder_feature_names]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Return the logits list (dec0 first) with deep supervision, else the dec0 logits."""
        timesteps = self.timestep.expand(x.shape[0])
        # dec0 needs every coarser decoder stage anyway, so all of them are computed.
        features = self.backbone.forward_features(x, timesteps, self.decoder_feature_names)

        if not self.deep_supervision:
            return self.heads[0](features["dec0"])
        return [head(features[name]) for head, name in zip(self.heads, self.decoder_feature_names)]

    def to_spec(self) -> dict:
        """Return the JSON-compatible spec that ``build_network_from_spec`` rebuilds."""
        return {
            "network_class": SEGMENTATION_NETWORK_CLASS,
            "kwargs": {
                "backbone": self.backbone.to_spec(),
                "num_classes": self.num_classes,
                "timestep": self.initial_timestep,
                "learn_timestep": self.learn_timestep,
                "deep_supervision": self.deep_supervision,
            },
        }

    @classmethod
    def from_spec_kwargs(cls, kwargs: dict) -> "SegmentationNetwork":
        from ortho_nnd.network.registry import build_network_from_spec

        kwargs = dict(kwargs)
        if "backbone" not in kwargs:
            raise ValueError("A SegmentationNetwork spec needs a 'backbone' entry (a DiffusionUNet spec).")
        kwargs["backbone"] = build_network_from_spec(kwargs["backbone"])
        return cls(**kwargs)
