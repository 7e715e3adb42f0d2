"""Choosing the pretrained checkpoint of a fine-tuning run and checking it against the target plans.

Public API:

- ``resolve_pretrained_checkpoint_for(pretrained, pretrained_from, dataset_name, view, plans_name)``
  returns the checkpoint path, or None for ``--pretrained none`` (training from scratch).
  ``pretrained`` is ``auto`` (this dataset's ``pretrain_{view}/checkpoint_final.pth``, or the
  one of ``--pretrained_from``), ``none`` or a file path.
- ``check_transfer(payload, target_view_plans, view, source) -> dict``: the adaptation report.
  The network topology (``architecture_kwargs.TOPOLOGY_KEYS``: channels, kernels, strides, blocks,
  attention, time embedding, ...)
  must match, otherwise ``IncompatibleTransferError`` names the view and parameter. Other plan
  differences (patch size, target spacing, normalisation, diffusion schedule) are allowed: the
  fine-tuning run uses the target plans, and the report lists each difference with what happens.
- ``initialise_from_checkpoint(network, payload, target_view_plans, view, source) -> dict``: runs
  ``check_transfer`` and then ``ortho_nnd.network.load_pretrained_backbone`` (EMA weights
  preferred), and returns both reports for ``load_report.json``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from ortho_nnd.network.architecture_kwargs import TOPOLOGY_KEYS as ARCHITECTURE_TOPOLOGY_KEYS
from ortho_nnd.network.loading import load_pretrained_backbone
from ortho_nnd.training.base_trainer import FINAL_CHECKPOINT

logger = logging.getLogger(__name__)

# Architecture kwargs that change the weights' names or shapes must match exactly. The network
# package defines them. in_channels is not among them because its loader adapts the first conv.
TOPOLOGY_KEYS = tuple(ARCHITECTURE_TOPOLOGY_KEYS)

# Plan entries that may differ between source and target, with what the fine-tuning run does about it.
ADAPTABLE_PLAN_KEYS = {
    "patch_size": "the network is fully convolutional, so it trains on the target patch size",
    "target_spacing": "the target data keep their own spacing; features see structures at a different scale",
    "median_shape_after_resampling": "used only for the classification input size, taken from the target plans",
    "normalization": "the target data keep their own intensity normalisation",
}
ADAPTABLE_DIFFUSION_KEYS = {
    "num_timesteps": "the target plans' feature and segmentation timesteps are used as they are",
    "schedule": "the target plans' feature and segmentation timesteps are used as they are",
    "prediction": "irrelevant for fine-tuning, because the diffusion output head is not used",
}


class IncompatibleTransferError(ValueError):
    """A pretrained checkpoint cannot initialise the target network."""


def resolve_pretrained_checkpoint_for(
    pretrained: str | None,
    pretrained_from: str | None,
    dataset_name: str,
    view: str,
    plans_name: str,
) -> Path | None:
    """Return the checkpoint to initialise ``view`` from, or None for random initialisation."""
    from ortho_nnd.training.pretrain import pretrain_output_folder, resolve_pretrained_checkpoint

    value = (pretrained or "auto").strip()
    if value.lower() == "none":
        if pretrained_from:
            raise ValueError("--pretrained none and --pretrained_from contradict each other; pass only one of them.")
        return None

    if value.lower() != "auto":
        path = Path(value).expanduser()
        if path.is_dir():
            path = path / FINAL_CHECKPOINT
        if not path.is_file():
            raise FileNotFoundError(f"--pretrained {value}: checkpoint {path} not found. Pass an existing .pth file, 'auto' or 'none'.")
        return path

    if pretrained_from:
        try:
            return resolve_pretrained_checkpoint(pretrained_from, view)
        except FileNotFoundError as error:
            raise FileNotFoundError(
                f"View {view!r} has no pretrained model in --pretrained_from {pretrained_from}: {error} "
                "Only views pretrained on the source dataset can be transferred."
            ) from error

    path = pretrain_output_folder(dataset_name, view, plans_name) / FINAL_CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(
            f"No pretrained {view} model for {dataset_name}: {path} does not exist. Run "
            f"`ortho_train {dataset_name} pretrain {view}` first, or pass --pretrained none to train from scratch "
            "(the baseline)."
        )
    return path


def _architecture_kwargs(payload: dict, source: str) -> dict:
    architecture = payload.get("architecture") or (payload.get("view_plans") or {}).get("architecture")
    if not isinstance(architecture, dict) or "kwargs" not in architecture:
        raise IncompatibleTransferError(f"{source} stores no architecture; it is not a pretraining checkpoint of ortho_nnd.")
    return architecture["kwargs"]


def check_transfer(payload: dict, target_view_plans: dict, view: str, source: str) -> dict[str, Any]:
    """Compare a pretraining checkpoint with the target view plans and return the adaptation report."""
    source_view = payload.get("view")
    if source_view is not None and source_view != view:
        raise IncompatibleTransferError(
            f"{source} was pretrained on the {source_view} view, not {view}. Use the pretrain_{view} checkpoint."
        )

    source_kwargs = _architecture_kwargs(payload, source)
    target_kwargs = target_view_plans["architecture"]["kwargs"]
    mismatches = [
        f"{key}: source {source_kwargs.get(key)!r}, target {target_kwargs.get(key)!r}"
        for key in TOPOLOGY_KEYS
        if source_kwargs.get(key) != target_kwargs.get(key)
    ]
    if mismatches:
        raise IncompatibleTransferError(
            f"The network topology of view {view} differs between {source} and the target plans ("
            + "; ".join(mismatches)
            + "). Re-plan the target dataset with the source's architecture, for example by copying the "
            f"source plans.json 'views.{view}.architecture' into the target plans and preprocessing again, "
            "or train from scratch with --pretrained none."
        )

    source_plans = payload.get("view_plans") or {}
    adapted = []
    for key, action in ADAPTABLE_PLAN_KEYS.items():
        if key in source_plans and source_plans[key] != target_view_plans.get(key):
            adapted.append({"parameter": key, "source": source_plans[key], "target": target_view_plans.get(key), "action": action})
    source_diffusion = payload.get("diffusion") or source_plans.get("diffusion") or {}
    target_diffusion = target_view_plans.get("diffusion", {})
    for key, action in ADAPTABLE_DIFFUSION_KEYS.items():
        if key in source_diffusion and source_diffusion[key] != target_diffusion.get(key):
            adapted.append({"parameter": f"diffusion.{key}", "source": source_diffusion[key], "target": target_diffusion.get(key), "action": action})
    if source_kwargs.get("dropout") != target_kwargs.get("dropout"):
        adapted.append({
            "parameter": "dropout", "source": source_kwargs.get("dropout"), "target": target_kwargs.get("dropout"),
            "action": "the target plans' dropout is used (it has no weights)",
        })

    report = {
        "checkpoint": str(source),
        "source_dataset": payload.get("dataset_name"),
        "view": view,
        "compatible": True,
        "topology_checked": list(TOPOLOGY_KEYS),
        "adapted": adapted,
    }
    for item in adapted:
        logger.info("Transfer %s: %s differs (source %s, target %s): %s", view, item["parameter"], item["source"], item["target"], item["action"])
    return report


def initialise_from_checkpoint(network: nn.Module, payload: dict, target_view_plans: dict, view: str, source: str) -> dict[str, Any]:
    """Check the transfer, then load the backbone of ``network`` (a SegmentationNetwork or ViewEncoder).

    Returns ``{"adaptation": check_transfer's report, "loading": the network package's LoadReport as a dict}``.
    """
    adaptation = check_transfer(payload, target_view_plans, view, source)
    # load_pretrained_backbone raises IncompatibleCheckpointError before changing any weight.
    # load_pretrained_backbone logs the report's summary; the full lists go to load_report.json.
    loaded = load_pretrained_backbone(network, payload, source)
    return {"adaptation": adaptation, "loading": loaded.to_dict()}
