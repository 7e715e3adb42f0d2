"""Multi-view, multi-label classification from diffusion features.

``ViewEncoder`` runs one view's pretrained diffusion UNet on the clean image at each of the
plans' ``feature_timesteps``. The timestep only conditions the network, and no noise is added.
It pools each requested feature map (for example ``bottleneck`` and ``dec1``) with attention
pooling and global average pooling, and concatenates everything into a view embedding of
``embedding_dim`` values.

``MultiViewClassifier`` projects each view embedding to ``embed_dim`` and fuses the views:

- ``"concat"``: a missing view is replaced by a learned placeholder embedding. The fused vector
  is [view embeddings..., presence mask], and an MLP maps it to the K finding logits.
- ``"gated"``: each view has its own logit head and gate head. Per finding, the gate scores
  of the present views go through a softmax (missing views get weight 0), and the logits are
  the weighted sum of the view logits. The weights (B, K, V) are returned for inspection.

``forward(images, present=None)`` takes ``images: dict[view, Tensor | None]`` and an optional
``present: dict[view, BoolTensor(B)]`` for batches in which only some samples have a view
(their rows of the image tensor are ignored). It returns ``(logits, weights)`` where
``weights`` is None for concat fusion. Every sample needs at least one present view.

NOTE: the encoder of a view that no sample in the batch has does not run, so its parameters
get no gradient in that step. DDP then needs ``find_unused_parameters=True``.
"""
from __future__ import annotations

import torch
from torch import nn

from ortho_nnd.network.diffusion_unet import DiffusionUNet
from ortho_nnd.network.pooling import AttentionAndAveragePooling3d

VIEW_ENCODER_CLASS = "ortho_nnd.network.classification.ViewEncoder"
MULTI_VIEW_CLASSIFIER_CLASS = "ortho_nnd.network.classification.MultiViewClassifier"
SUPPORTED_FUSIONS = ("concat", "gated")


def _build_nested(spec: dict):
    from ortho_nnd.network.registry import build_network_from_spec

    return build_network_from_spec(spec)


class ViewEncoder(nn.Module):
    """One view's diffusion backbone plus pooling of its features at several timesteps."""

    def __init__(self, backbone: DiffusionUNet, feature_names: list[str], timesteps: list[int]):
        super().__init__()
        if not isinstance(backbone, DiffusionUNet):
            raise ValueError(f"backbone must be a DiffusionUNet, got {type(backbone).__name__}.")
        if isinstance(feature_names, str) or not feature_names:
            raise ValueError(f"feature_names must be a non-empty list such as ['bottleneck', 'dec1'], got {feature_names!r}.")
        if not timesteps or any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in timesteps):
            raise ValueError(f"timesteps must be a non-empty list of integers >= 0, got {timesteps!r}.")

        self.feature_names = list(feature_names)
        self.timesteps = list(timesteps)
        backbone.restrict_to_features(self.feature_names)
        self.backbone = backbone

        channels = backbone.feature_channels()
        self.pools = nn.ModuleDict(
            {
                self._pool_key(t, name): AttentionAndAveragePooling3d(channels[name])
                for t in self.timesteps
                for name in self.feature_names
            }
        )
        # Attention pooling and average pooling each give C values per feature map and timestep.
        self.embedding_dim = 2 * len(self.timesteps) * sum(channels[name] for name in self.feature_names)

    @staticmethod
    def _pool_key(timestep: int, name: str) -> str:
        return f"t{timestep}_{name}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the view embedding (B, embedding_dim)."""
        pooled = []
        for t in self.timesteps:
            features = self.backbone.forward_features(x, t, self.feature_names)
            for name in self.feature_names:
                pooled.append(self.pools[self._pool_key(t, name)](features[name]))
        return torch.cat(pooled, dim=1)

    def to_spec(self) -> dict:
        return {
            "network_class": VIEW_ENCODER_CLASS,
            "kwargs": {
                "backbone": self.backbone.to_spec(),
                "feature_names": list(self.feature_names),
                "timesteps": list(self.timesteps),
            },
        }

    @classmethod
    def from_spec_kwargs(cls, kwargs: dict) -> "ViewEncoder":
        kwargs = dict(kwargs)
        if "backbone" not in kwargs:
            raise ValueError("A ViewEncoder spec needs a 'backbone' entry (a DiffusionUNet spec).")
        kwargs["backbone"] = _build_nested(kwargs["backbone"])
        return cls(**kwargs)


class MultiViewClassifier(nn.Module):
    """Fusion of per-view embeddings into multi-label finding logits (see the module docstring)."""

    def __init__(
        self,
        encoders: dict[str, ViewEncoder],
        num_findings: int,
        fusion: str = "concat",
        embed_dim: int = 256,
        dropout: float = 0.0,
    ):
        super().__init__()
        if not encoders or not all(isinstance(encoder, ViewEncoder) for encoder in encoders.values()):
            raise ValueError("encoders must be a non-empty dict of view name to ViewEncoder.")
        if isinstance(num_findings, bool) or not isinstance(num_findings, int) or num_findings < 1:
            raise ValueError(f"num_findings must be a positive integer, got {num_findings!r}.")
        if fusion not in SUPPORTED_FUSIONS:
            raise ValueError(f"Unknown fusion {fusion!r}; use one of {SUPPORTED_FUSIONS}.")
        if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 1:
            raise ValueError(f"embed_dim must be a positive integer, got {embed_dim!r}.")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}.")

        self.views = list(encoders)
        self.num_findings = num_findings
        self.fusion = fusion
        self.embed_dim = embed_dim
        self.dropout_rate = float(dropout)

        self.encoders = nn.ModuleDict(encoders)
        self.projections = nn.ModuleDict(
            {
                view: nn.Sequential(nn.Linear(encoder.embedding_dim, embed_dim), nn.LayerNorm(embed_dim), nn.SiLU())
                for view, encoder in encoders.items()
            }
        )
        self.dropout = nn.Dropout(dropout)

        n_views = len(self.views)
        if fusion == "concat":
            self.placeholders = nn.ParameterDict({view: nn.Parameter(torch.zeros(embed_dim)) for view in self.views})
            self.head = nn.Sequential(
                nn.Linear(n_views * embed_dim + n_views, embed_dim),
                nn.SiLU(),
                nn.Dropout(dropout),
                nn.Linear(embed_dim, num_findings),
            )
        else:
            self.view_heads = nn.ModuleDict({view: nn.Linear(embed_dim, num_findings) for view in self.views})
            self.gates = nn.ModuleDict({view: nn.Linear(embed_dim, num_findings) for view in self.views})

    # ------------------------------------------------------------------ inputs

    def _presence(
        self, images: dict[str, torch.Tensor | None], present: dict[str, torch.Tensor] | None
    ) -> tuple[int, torch.device, dict[str, torch.Tensor]]:
        """Check the inputs and return the batch size, device and a (B,) bool mask per view."""
        unknown = sorted(set(images) - set(self.views))
        if unknown:
            raise ValueError(f"Unknown views {unknown}; this classifier has views {self.views}.")
        present = dict(present or {})
        unknown = sorted(set(present) - set(self.views))
        if unknown:
            raise ValueError(f"present contains unknown views {unknown}; this classifier has views {self.views}.")

        given = {view: image for view, image in images.items() if image is not None}
        if not given:
            raise ValueError("At least one view must have an image tensor; all views are None.")
        batch_sizes = {view: image.shape[0] for view, image in given.items()}
        if len(set(batch_sizes.values())) != 1:
            raise ValueError(f"All view tensors need the same batch size, got {batch_sizes}.")
        batch = next(iter(batch_sizes.values()))
        device = next(iter(given.values())).device

        masks = {}
        for view in self.views:
            image = images.get(view)
            mask = present.get(view)
            if mask is None:
                mask = torch.full((batch,), image is not None, dtype=torch.bool, device=device)
            else:
                mask = torch.as_tensor(mask, device=device)
                if mask.dtype != torch.bool or mask.shape != (batch,):
                    raise ValueError(
                        f"present[{view!r}] must be a bool tensor of shape ({batch},), "
                        f"got {mask.dtype} {tuple(mask.shape)}."
                    )
                if image is None and bool(mask.any()):
                    raise ValueError(f"present[{view!r}] marks samples as present but images[{view!r}] is None.")
            masks[view] = mask

        no_view = ~torch.stack(list(masks.values())).any(dim=0)
        if bool(no_view.any()):
            raise ValueError(
                f"Samples {no_view.nonzero().flatten().tolist()} have no present view; "
                "every sample needs at least one view."
            )
        return batch, device, masks

    def _embed(self, view: str, image: torch.Tensor | None, mask: torch.Tensor, batch: int, device) -> torch.Tensor:
        """Return (B, embed_dim) embeddings, with zero rows for absent samples (encoder not run)."""
        embeddings = torch.zeros(batch, self.embed_dim, device=device)
        if bool(mask.any()):
            projected = self.projections[view](self.encoders[view](image[mask]))
            embeddings = embeddings.to(projected.dtype).index_put((mask.nonzero().flatten(),), projected)
        return self.dropout(embeddings)

    # ------------------------------------------------------------------ forward

    def forward(
        self, images: dict[str, torch.Tensor | None], present: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return logits (B, K) and, for gated fusion, view weights (B, K, V) in ``self.views`` order."""
        batch, device, masks = self._presence(images, present)
        embeddings = {view: self._embed(view, images.get(view), masks[view], batch, device) for view in self.views}

        if self.fusion == "concat":
            parts = [
                torch.where(masks[view][:, None], embeddings[view], self.placeholders[view].to(embeddings[view].dtype))
                for view in self.views
            ]
            presence = torch.stack([masks[view] for view in self.views], dim=1).to(parts[0].dtype)
            return self.head(torch.cat(parts + [presence], dim=1)), None

        view_logits = torch.stack([self.view_heads[view](embeddings[view]) for view in self.views], dim=2)
        gate_scores = torch.stack([self.gates[view](embeddings[view]) for view in self.views], dim=2)
        absent = ~torch.stack([masks[view] for view in self.views], dim=1)[:, None, :]  # (B, 1, V)
        weights = gate_scores.masked_fill(absent, float("-inf")).softmax(dim=2)
        return (weights * view_logits).sum(dim=2), weights

    # ------------------------------------------------------------------ spec

    def to_spec(self) -> dict:
        return {
            "network_class": MULTI_VIEW_CLASSIFIER_CLASS,
            "kwargs": {
                "encoders": {view: self.encoders[view].to_spec() for view in self.views},
                "num_findings": self.num_findings,
                "fusion": self.fusion,
                "embed_dim": self.embed_dim,
                "dropout": self.dropout_rate,
            },
        }

    @classmethod
    def from_spec_kwargs(cls, kwargs: dict) -> "MultiViewClassifier":
        kwargs = dict(kwargs)
        encoders = kwargs.get("encoders")
        if not isinstance(encoders, dict) or not encoders:
            raise ValueError("A MultiViewClassifier spec needs 'encoders': a dict of view name to ViewEncoder spec.")
        kwargs["encoders"] = {view: _build_nested(spec) for view, spec in encoders.items()}
        return cls(**kwargs)
