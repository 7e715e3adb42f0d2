"""Loading pretrained diffusion UNet weights into a (task) network's backbone.

``load_pretrained_backbone(network, checkpoint, source_name)`` accepts a DiffusionUNet or a
network with a ``backbone`` attribute (SegmentationNetwork, ViewEncoder). For a
MultiViewClassifier, call it once per ``network.encoders[view]``. ``checkpoint`` is either a
checkpoint dictionary (``network_weights``, optional ``ema_weights`` and ``architecture``) or
a plain state dict. The EMA weights are used when present, unless ``prefer_ema=False``.

Checks, in order, all before any weight changes:
1. the checkpoint's ``architecture`` spec against the backbone's spec (topology keys of
   ``architecture_kwargs.TOPOLOGY_KEYS``);
2. every backbone tensor against the checkpoint tensor of the same name and shape.
A mismatch raises ``IncompatibleCheckpointError`` listing what differs and how to fix it.

Tolerated differences:
- ``in_channels``: the first conv (``encoder.0.input_conv.weight``) is adapted. For 1 target
  channel the source channels are summed. Otherwise the source channels are tiled to the
  target count and scaled by (source channels / target channels). Both rules keep the
  response unchanged when every channel of the input contains the same image.
- ``out_channels``: the diffusion output head stays at its initialisation (fresh) and its
  checkpoint tensors are ignored.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ortho_nnd.network.architecture_kwargs import TOPOLOGY_KEYS
from ortho_nnd.network.diffusion_unet import DIFFUSION_UNET_CLASS, DiffusionUNet

logger = logging.getLogger(__name__)

FIRST_CONV_WEIGHT = "encoder.0.input_conv.weight"
OUTPUT_HEAD_PREFIX = "output_head."
# Prefixes that DDP and torch.compile add to parameter names.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Task-network classes whose checkpoints contain a DiffusionUNet under "backbone.".
BACKBONE_HOLDER_CLASSES = (
    "ortho_nnd.network.segmentation.SegmentationNetwork",
    "ortho_nnd.network.classification.ViewEncoder",
)
# Number of differing tensors listed in an error message.
MAX_LISTED_DIFFERENCES = 10

FIX_HINT = (
    "Re-plan the target dataset with the source plans (ortho_plan_and_preprocess "
    "--pretrained_from SOURCE_DATASET) so both use the same architecture, or train from scratch "
    "without pretrained weights."
)


class IncompatibleCheckpointError(ValueError):
    """The checkpoint's network topology differs from the network it should be loaded into."""


@dataclass
class LoadReport:
    """Outcome per tensor of loading a pretrained backbone.

    Names are in the target network's ``state_dict`` namespace, except ``ignored``, which
    lists checkpoint keys.
    """

    source_name: str
    loaded: list[str] = field(default_factory=list)
    adapted: list[dict] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """Return a human-readable multi-line summary."""
        lines = [
            f"Pretrained weights from {self.source_name}: {len(self.loaded)} loaded, "
            f"{len(self.adapted)} adapted, {len(self.fresh)} fresh, {len(self.ignored)} ignored."
        ]
        for entry in self.adapted:
            lines.append(
                f"  adapted {entry['name']}: {entry['checkpoint_shape']} -> {entry['network_shape']} ({entry['rule']})"
            )
        if self.fresh:
            lines.append(f"  fresh (left at initialisation): {', '.join(self.fresh)}")
        if self.ignored:
            lines.append(f"  ignored checkpoint keys: {', '.join(self.ignored)}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        """Return the report as a JSON string."""
        return json.dumps(self.to_dict(), indent=2)


def _find_backbone(network: nn.Module) -> tuple[DiffusionUNet, str]:
    if isinstance(network, DiffusionUNet):
        return network, ""
    backbone = getattr(network, "backbone", None)
    if isinstance(backbone, DiffusionUNet):
        return backbone, "backbone."
    raise ValueError(
        f"Cannot find a DiffusionUNet backbone in {type(network).__name__}; pass a DiffusionUNet, "
        "a SegmentationNetwork or a ViewEncoder (for a MultiViewClassifier, each of network.encoders[view])."
    )


def _strip_prefix(state: dict, prefix: str) -> dict:
    if state and all(key.startswith(prefix) for key in state):
        return {key[len(prefix):]: value for key, value in state.items()}
    return state


def _extract_weights(checkpoint: dict, prefer_ema: bool, source_name: str) -> dict[str, torch.Tensor]:
    if "network_weights" not in checkpoint and "ema_weights" not in checkpoint:
        if not all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
            raise ValueError(
                f"Checkpoint {source_name} has neither 'network_weights' nor 'ema_weights' and is not a "
                f"state dict of tensors (keys: {sorted(checkpoint)[:10]})."
            )
        return dict(checkpoint)

    if prefer_ema and checkpoint.get("ema_weights") is not None:
        weights = checkpoint["ema_weights"]
        # ExponentialMovingAverage.state_dict() nests the averaged state dict under "weights".
        if isinstance(weights, dict) and isinstance(weights.get("weights"), dict):
            weights = weights["weights"]
        logger.info("Using the EMA weights of %s", source_name)
    elif checkpoint.get("network_weights") is not None:
        weights = checkpoint["network_weights"]
    else:
        raise ValueError(f"Checkpoint {source_name} has no 'network_weights'; set prefer_ema=True to use its EMA weights.")
    return dict(weights)


def _source_backbone_spec(architecture: dict | None, source_name: str) -> tuple[dict | None, bool]:
    """Return the checkpoint's DiffusionUNet spec and whether its weights sit under 'backbone.'."""
    if architecture is None:
        return None, False
    class_name = architecture.get("network_class")
    if class_name == DIFFUSION_UNET_CLASS:
        return architecture, False
    if class_name in BACKBONE_HOLDER_CLASSES:
        return architecture["kwargs"]["backbone"], True
    raise IncompatibleCheckpointError(
        f"Checkpoint {source_name} contains a {class_name}, which has no single DiffusionUNet backbone "
        f"to load; use a pretraining, segmentation or view-encoder checkpoint."
    )


def _compare_specs(source_spec: dict, target_spec: dict, source_name: str) -> None:
    source_kwargs, target_kwargs = source_spec.get("kwargs", {}), target_spec["kwargs"]
    differences = [
        f"{key}: checkpoint {source_kwargs.get(key)!r}, network {target_kwargs.get(key)!r}"
        for key in TOPOLOGY_KEYS
        if source_kwargs.get(key) != target_kwargs.get(key)
    ]
    if differences:
        raise IncompatibleCheckpointError(
            f"The architecture of checkpoint {source_name} differs from the network:\n  "
            + "\n  ".join(differences)
            + f"\n{FIX_HINT}"
        )


def adapt_first_conv(weight: torch.Tensor, target_in_channels: int) -> tuple[torch.Tensor, str]:
    """Adapt a conv weight (O, C_source, ...) to C_target input channels (rule in the module docstring)."""
    source_in_channels = weight.shape[1]
    if target_in_channels == 1:
        return weight.sum(dim=1, keepdim=True), "summed over input channels"
    index = [channel % source_in_channels for channel in range(target_in_channels)]
    scale = source_in_channels / target_in_channels
    return weight[:, index] * scale, f"input channels tiled and scaled by {source_in_channels}/{target_in_channels}"


def load_pretrained_backbone(
    network: nn.Module, checkpoint_state: dict, source_name: str, prefer_ema: bool = True
) -> LoadReport:
    """Load a pretrained DiffusionUNet into ``network``'s backbone and return what was done.

    Raises IncompatibleCheckpointError (a ValueError) before changing any weight when the
    topology differs.
    """
    backbone, target_prefix = _find_backbone(network)
    source_spec, source_nested = _source_backbone_spec(checkpoint_state.get("architecture"), source_name)
    if source_spec is not None:
        _compare_specs(source_spec, backbone.to_spec(), source_name)

    weights = _extract_weights(checkpoint_state, prefer_ema, source_name)
    for prefix in WRAPPER_PREFIXES:
        weights = _strip_prefix(weights, prefix)
    if source_nested or (weights and all(key.startswith("backbone.") for key in weights)):
        ignored = [key for key in weights if not key.startswith("backbone.")]
        weights = {key[len("backbone."):]: value for key, value in weights.items() if key.startswith("backbone.")}
    else:
        ignored = []

    # Match every backbone tensor against the checkpoint.
    target_state = backbone.state_dict()
    report = LoadReport(source_name=source_name)
    new_state = {}
    problems = []
    for name, tensor in target_state.items():
        source = weights.get(name)
        if source is not None and tuple(source.shape) == tuple(tensor.shape):
            new_state[name] = source
            report.loaded.append(target_prefix + name)
        elif source is not None and name == FIRST_CONV_WEIGHT and source.shape[0] == tensor.shape[0] \
                and source.shape[2:] == tensor.shape[2:]:
            adapted, rule = adapt_first_conv(source, tensor.shape[1])
            new_state[name] = adapted
            report.adapted.append(
                {"name": target_prefix + name, "rule": rule,
                 "checkpoint_shape": list(source.shape), "network_shape": list(tensor.shape)}
            )
        elif name.startswith(OUTPUT_HEAD_PREFIX):
            # The diffusion output head differs (out_channels) or is absent, so it stays fresh.
            continue
        elif source is None:
            problems.append(f"{name}: missing in the checkpoint (network shape {list(tensor.shape)})")
        else:
            problems.append(f"{name}: checkpoint shape {list(source.shape)}, network shape {list(tensor.shape)}")

    # Checkpoint tensors that no DiffusionUNet of this topology has (more blocks or stages).
    # Tensors of modules that restrict_to_features removed are expected and only ignored.
    with torch.device("meta"):
        full_names = set(DiffusionUNet(**backbone.kwargs).state_dict())
    problems += [
        f"{name}: unexpected in the checkpoint (shape {list(weights[name].shape)})"
        for name in sorted(weights)
        if name not in full_names and not name.startswith(OUTPUT_HEAD_PREFIX)
    ]

    if problems:
        listed = problems[:MAX_LISTED_DIFFERENCES]
        more = len(problems) - len(listed)
        raise IncompatibleCheckpointError(
            f"Checkpoint {source_name} does not fit the network ({len(problems)} tensors differ):\n  "
            + "\n  ".join(listed)
            + (f"\n  ... and {more} more" if more else "")
            + f"\n{FIX_HINT}"
        )

    # Apply, then classify the rest.
    target_state.update({name: value.to(dtype=target_state[name].dtype) for name, value in new_state.items()})
    backbone.load_state_dict(target_state)

    used = set(new_state)
    report.ignored = ignored + sorted(key for key in weights if key not in used)
    done = set(report.loaded) | {entry["name"] for entry in report.adapted}
    report.fresh = [name for name in network.state_dict() if name not in done]
    logger.info(report.summary())
    return report
