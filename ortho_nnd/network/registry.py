"""Rebuild networks from their JSON spec ({"network_class": ..., "kwargs": {...}}).

Only the ortho_nnd classes in ALLOWED_NETWORK_CLASSES can be built, so a spec read from a
checkpoint or plans file cannot import arbitrary code. Each class provides
``from_spec_kwargs(kwargs)``, which rebuilds nested specs (a task network's backbone).
"""
from __future__ import annotations

import importlib

from torch import nn

ALLOWED_NETWORK_CLASSES = (
    "ortho_nnd.network.diffusion_unet.DiffusionUNet",
    "ortho_nnd.network.segmentation.SegmentationNetwork",
    "ortho_nnd.network.classification.ViewEncoder",
    "ortho_nnd.network.classification.MultiViewClassifier",
)


def build_network_from_spec(spec: dict) -> nn.Module:
    """Build the network that ``spec`` describes (ValueError for an invalid spec)."""
    if not isinstance(spec, dict) or set(spec) != {"network_class", "kwargs"}:
        keys = sorted(spec) if isinstance(spec, dict) else type(spec).__name__
        raise ValueError(
            f"A network spec must be a dict with exactly the keys 'network_class' and 'kwargs', got {keys}."
        )
    class_name = spec["network_class"]
    if class_name not in ALLOWED_NETWORK_CLASSES:
        raise ValueError(
            f"Network class {class_name!r} is not allowed; use one of {list(ALLOWED_NETWORK_CLASSES)}."
        )
    if not isinstance(spec["kwargs"], dict):
        raise ValueError(f"The 'kwargs' of a {class_name} spec must be a dict, got {spec['kwargs']!r}.")

    module_name, _, attribute = class_name.rpartition(".")
    network_class = getattr(importlib.import_module(module_name), attribute)
    return network_class.from_spec_kwargs(spec["kwargs"])
