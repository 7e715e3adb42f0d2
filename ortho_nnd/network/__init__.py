"""Networks: the time-conditioned diffusion UNet and the task networks built on it.

Public API:
- ``DiffusionUNet(**architecture_kwargs)``: ``forward(x, t)``, ``forward_features(x, t, names)``,
  ``feature_channels()``, ``feature_strides()``, ``to_spec()``, ``restrict_to_features(names)``.
- ``validate_architecture_kwargs(kwargs)``: checked, normalised copy of the plans' kwargs.
- ``build_network_from_spec(spec)``: rebuild any ortho_nnd network from its ``to_spec()``.
- ``estimate_training_memory_bytes(arch_kwargs, patch_size, batch_size, dtype_bytes=2)``.
- ``SegmentationNetwork``, ``ViewEncoder``, ``MultiViewClassifier``: task networks.
- ``load_pretrained_backbone(network, checkpoint, source_name) -> LoadReport``.

"""
from ortho_nnd.network.architecture_kwargs import validate_architecture_kwargs
from ortho_nnd.network.classification import MultiViewClassifier, ViewEncoder
from ortho_nnd.network.diffusion_unet import DiffusionUNet
from ortho_nnd.network.loading import IncompatibleCheckpointError, LoadReport, load_pretrained_backbone
from ortho_nnd.network.memory import estimate_training_memory, estimate_training_memory_bytes
from ortho_nnd.network.registry import build_network_from_spec
from ortho_nnd.network.segmentation import SegmentationNetwork

__all__ = [
    "DiffusionUNet",
    "IncompatibleCheckpointError",
    "LoadReport",
    "MultiViewClassifier",
    "SegmentationNetwork",
    "ViewEncoder",
    "load_pretrained_backbone",
    "build_network_from_spec",
    "estimate_training_memory",
    "estimate_training_memory_bytes",
    "validate_architecture_kwargs",
]
