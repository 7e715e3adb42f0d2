"""Tiny trained-model folders, scans and DICOM series for the ortho_predict tests.

``make_results(root, ...)`` writes ``root/Dataset101_Knee/seg_{view}/fold_{k}/checkpoint_final.pth``
and ``cls[_gated]/fold_{k}/checkpoint_final.pth`` (+ ``thresholds.json``) with random weights, in
the checkpoint format of the fine-tuning trainers. The plans use a patch that
covers a whole preprocessed test scan, so every scan is predicted with one window.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from ortho_nnd.io import preserved_locale
import torch

from ortho_nnd.network import DiffusionUNet, MultiViewClassifier, SegmentationNetwork, ViewEncoder
from ortho_nnd.training.checkpoint import save_checkpoint

DATASET_NAME = "Dataset101_Knee"
VIEWS = ("sagittal", "coronal", "axial")
LABELS = {"background": 0, "femur": 1, "tibia": 2}
FINDINGS = ["effusion", "acl_tear"]
THRESHOLDS = {"effusion": 0.4, "acl_tear": 0.6}

TINY_ARCHITECTURE = {
    "network_class": "ortho_nnd.network.diffusion_unet.DiffusionUNet",
    "kwargs": {
        "in_channels": 1,
        "out_channels": 1,
        "features_per_stage": [4, 8],
        "kernel_sizes": [[3, 3, 3], [3, 3, 3]],
        "strides": [[1, 1, 1], [2, 2, 2]],
        "n_blocks_per_stage": [1, 1],
        "n_blocks_per_stage_decoder": [1],
        "attention_stages": [False, False],
        "attention_heads": 1,
        "time_embed_dim": 16,
        "norm": "instance",
        "dropout": 0.0,
    },
}

# Test scans: SCAN_SLICES slices of SCAN_SLICE_MM mm, SCAN_IN_PLANE voxels of SCAN_PIXEL_MM mm.
SCAN_SLICES = 10
SCAN_SLICE_MM = 3.0
SCAN_IN_PLANE = 24
SCAN_PIXEL_MM = 1.0
# Target spacing (canonical z, y, x) in mm: a test scan becomes 10 x 12 x 12 voxels.
TARGET_SPACING = [3.0, 2.0, 2.0]
PATCH_SIZE = [16, 16, 16]


def tiny_view_plans(view: str, target_spacing: Sequence[float] = TARGET_SPACING, patch_size: Sequence[int] = PATCH_SIZE) -> dict:
    left_right_axis = {"sagittal": 0, "coronal": 2, "axial": 2}[view]
    return {
        "view": view,
        "data_identifier": f"orthoPlans_{view}",
        "target_spacing": list(target_spacing),
        "median_shape_after_resampling": [10, 12, 12],
        "normalization": "zscore",
        "resampling": {"in_plane_order": 3, "through_plane_order": 0, "label_order": 1},
        "patch_size": list(patch_size),
        "batch_size": 2,
        "mirror_axes": [left_right_axis],
        "architecture": copy.deepcopy(TINY_ARCHITECTURE),
        "diffusion": {"num_timesteps": 100, "schedule": "cosine", "prediction": "epsilon",
                      "feature_timesteps": [5], "segmentation_timestep": 5},
        "training": {},
        "memory_estimate_gb": 0.1,
    }


def make_results(
    root: Path,
    seg_views: Sequence[str] = ("sagittal",),
    cls_views: Sequence[str] | None = VIEWS,
    folds: Sequence[int] = (0,),
    fusion: str = "gated",
    seed: int = 0,
    **plans_options,
) -> Path:
    """Write random-weight checkpoints for ``seg_views`` and a classifier over ``cls_views``."""
    torch.manual_seed(seed)
    dataset_folder = Path(root) / DATASET_NAME
    for fold in folds:
        for view in seg_views:
            plans = tiny_view_plans(view, **plans_options)
            network = SegmentationNetwork(DiffusionUNet(**plans["architecture"]["kwargs"]), num_classes=len(LABELS), timestep=5)
            save_checkpoint(
                dataset_folder / f"seg_{view}" / f"fold_{fold}" / "checkpoint_final.pth",
                {"network_weights": network.state_dict(), "architecture": network.to_spec(), "view_plans": plans,
                 "task": f"seg_{view}", "labels": dict(LABELS)},
            )
        if cls_views:
            view_plans = {view: tiny_view_plans(view, **plans_options) for view in cls_views}
            encoders = {
                view: ViewEncoder(DiffusionUNet(**view_plans[view]["architecture"]["kwargs"]), ["bottleneck"], [5])
                for view in cls_views
            }
            network = MultiViewClassifier(encoders, num_findings=len(FINDINGS), fusion=fusion, embed_dim=8)
            # The classification trainer names gated-fusion runs cls_gated.
            fold_folder = dataset_folder / ("cls_gated" if fusion == "gated" else "cls") / f"fold_{fold}"
            save_checkpoint(
                fold_folder / "checkpoint_final.pth",
                {"network_weights": network.state_dict(), "architecture": network.to_spec(),
                 "plans": {"views": view_plans}, "views": list(cls_views), "task": "cls", "findings": list(FINDINGS),
                 "input_sizes": {view: list(view_plans[view]["patch_size"]) for view in cls_views}},
            )
            (fold_folder / "thresholds.json").write_text(json.dumps(THRESHOLDS), encoding="utf-8")
    return dataset_folder


def blob_array(shape_zyx: Sequence[int], seed: int = 0) -> np.ndarray:
    """Return a smooth, asymmetric test volume (float32) with a bright off-centre blob plus noise."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape_zyx], indexing="ij")
    distance = (grids[0] - 0.3) ** 2 + (grids[1] + 0.2) ** 2 + (grids[2] - 0.1) ** 2
    array = 100.0 + 300.0 * np.exp(-distance / 0.3) + rng.normal(0, 5, shape_zyx)
    return array.astype(np.float32)


def make_scan(view: str, orientation: str, seed: int = 0, origin=(10.0, -20.0, 5.0)) -> sitk.Image:
    """Return a scan of ``view`` (thick slices along its normal) stored in ``orientation`` order."""
    normal_axis = {"sagittal": 0, "coronal": 1, "axial": 2}[view]
    size = [SCAN_IN_PLANE] * 3
    spacing = [SCAN_PIXEL_MM] * 3
    size[normal_axis] = SCAN_SLICES
    spacing[normal_axis] = SCAN_SLICE_MM

    image = sitk.GetImageFromArray(blob_array(size[::-1], seed))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return sitk.DICOMOrient(image, orientation)


def rotate_direction(image: sitk.Image, degrees: float, world_axis: int) -> sitk.Image:
    """Return a copy of ``image`` whose direction is rotated about ``world_axis`` (an oblique scan)."""
    angle = np.deg2rad(degrees)
    cosine, sine = np.cos(angle), np.sin(angle)
    others = [axis for axis in range(3) if axis != world_axis]
    rotation = np.eye(3)
    rotation[others[0], others[0]] = cosine
    rotation[others[0], others[1]] = -sine
    rotation[others[1], others[0]] = sine
    rotation[others[1], others[1]] = cosine

    direction = rotation @ np.asarray(image.GetDirection()).reshape(3, 3)
    rotated = sitk.Image(image)
    rotated.SetDirection(direction.flatten().tolist())
    return rotated


def write_dicom_series(
    folder: Path,
    image: sitk.Image,
    series_uid: str,
    study_uid: str = "1.2.826.0.1.3680043.2.1125.1",
    patient_id: str = "PATIENT1",
    description: str = "test series",
) -> Path:
    """Write ``image`` (slices along index axis 2) as one DICOM file per slice with position tags."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.Cast(image, sitk.sitkInt16)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    orientation = "\\".join(f"{v:.10f}" for v in list(direction[:, 0]) + list(direction[:, 1]))

    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for index in range(image.GetSize()[2]):
        slice_image = image[:, :, index]
        position = image.TransformIndexToPhysicalPoint((0, 0, index))
        tags = {
            "0008|0060": "MR",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.4",
            "0008|0018": f"{series_uid}.{index + 1}",
            "0008|103e": description,
            "0010|0020": patient_id,
            "0020|000d": study_uid,
            "0020|000e": series_uid,
            "0020|0013": str(index + 1),
            "0020|0032": "\\".join(f"{v:.10f}" for v in position),
            "0020|0037": orientation,
            "0028|0030": f"{image.GetSpacing()[1]:.10f}\\{image.GetSpacing()[0]:.10f}",
            "0018|0050": f"{image.GetSpacing()[2]:.10f}",
        }
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"IM{index + 1:04d}.dcm"))
        # GDCM switches the process locale to "C"; restore it so later tests keep UTF-8 text files.
        with preserved_locale():
            writer.Execute(slice_image)
    return folder
