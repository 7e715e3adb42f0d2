"""Tiny preprocessed datasets and plans for training tests (reusable by any test module).

``make_preprocessed_dataset(root, ...)`` writes, under ``root``, the layout of
``ORTHO_preprocessed/DatasetXXX_Name/`` described in documentation/architecture.md:
``dataset.json``, ``plans.json`` and one ``{plans_name}_{view}/`` folder per view with
``{case}.npy`` (float32, (1, Z, Y, X)), ``{case}_seg.npy`` (int16, labelled view only) and
``{case}.json`` properties including ``source`` and ``class_locations``.

The images are smooth random blobs plus noise, z-scored, so a denoising network can learn them
quickly; labels are thresholded blobs with ``num_labels`` foreground classes.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

VIEWS = ("sagittal", "coronal", "axial")
PLANS_NAME = "orthoPlans"

# Smallest architecture that still has two resolution stages and a skip connection.
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

TINY_PATCH_SIZE = [8, 16, 16]
TINY_SHAPE = [10, 20, 18]

# Voxel indices stored per label in class_locations (preprocessing stores up to a few thousand).
CLASS_LOCATION_SAMPLES = 50


def tiny_view_plans(
    view: str,
    patch_size: Sequence[int] = TINY_PATCH_SIZE,
    batch_size: int = 2,
    prediction: str = "epsilon",
    num_timesteps: int = 100,
) -> dict:
    """Return plans for one view with the tiny architecture and a short schedule."""
    # Mirror along left-right only, as the planner does: sagittal 0, coronal and axial 2.
    left_right_axis = {"sagittal": 0, "coronal": 2, "axial": 2}[view]
    return {
        "view": view,
        "data_identifier": f"{PLANS_NAME}_{view}",
        "target_spacing": [1.0, 1.0, 1.0],
        "median_shape_after_resampling": list(TINY_SHAPE),
        "normalization": "zscore",
        "resampling": {"in_plane_order": 3, "through_plane_order": 0, "label_order": 1},
        "patch_size": list(patch_size),
        "batch_size": batch_size,
        "mirror_axes": [left_right_axis],
        "architecture": copy.deepcopy(TINY_ARCHITECTURE),
        "diffusion": {
            "num_timesteps": num_timesteps,
            "schedule": "cosine",
            "prediction": prediction,
            "feature_timesteps": [5, 15],
            "segmentation_timestep": 5,
        },
        "training": {
            "pretrain_iterations": 20,
            "finetune_iterations": 20,
            "learning_rate": 1e-3,
            "warmup_iterations": 2,
            "weight_decay": 0.0,
            "grad_clip": 1.0,
            "ema_decay": 0.99,
            "checkpoint_every": 10,
            "num_workers": 0,
        },
        "memory_estimate_gb": 0.01,
    }


def tiny_plans(dataset_name: str = "Dataset999_Tiny", views: Sequence[str] = ("sagittal",), **view_kwargs) -> dict:
    """Return a plans dict with ``tiny_view_plans`` for each of ``views``."""
    return {
        "dataset_name": dataset_name,
        "plans_name": PLANS_NAME,
        "preset": "test",
        "planner_version": 1,
        "views": {view: tiny_view_plans(view, **view_kwargs) for view in views},
        "user_configurations": {},
    }


def _random_volume(shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(shape)
    smooth = ndimage.gaussian_filter(noise, sigma=2.0)
    volume = smooth + 0.1 * rng.standard_normal(shape)
    return ((volume - volume.mean()) / volume.std()).astype(np.float32)


def _class_locations(seg: np.ndarray, num_labels: int, rng: np.random.Generator) -> dict[str, list[list[int]]]:
    locations = {}
    for label in range(1, num_labels + 1):
        voxels = np.argwhere(seg == label)
        if len(voxels) > CLASS_LOCATION_SAMPLES:
            voxels = voxels[rng.choice(len(voxels), CLASS_LOCATION_SAMPLES, replace=False)]
        locations[str(label)] = voxels.tolist()
    return locations


def make_preprocessed_dataset(
    root: str | Path,
    dataset_name: str = "Dataset999_Tiny",
    num_cases: int = 4,
    views: Sequence[str] = ("sagittal",),
    labelled_views: Sequence[str] = ("sagittal",),
    num_labels: int = 2,
    num_unlabeled: int = 0,
    shapes: Sequence[Sequence[int]] | None = None,
    seed: int = 0,
    plans: dict | None = None,
) -> Path:
    """Write a tiny preprocessed dataset to ``root / dataset_name`` and return that folder.

    shapes: one (Z, Y, X) per case (labelled cases first, then unlabeled); default TINY_SHAPE.
    Unlabeled cases get ``source = "imagesUnlabeled"`` and no segmentation.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / dataset_name
    folder.mkdir(parents=True, exist_ok=True)
    plans = plans if plans is not None else tiny_plans(dataset_name, views)

    labels = {"background": 0, **{f"structure_{i}": i for i in range(1, num_labels + 1)}}
    dataset_json = {
        "name": dataset_name,
        "description": "synthetic test data",
        "views": list(views),
        "labelled_views": list(labelled_views),
        "labels": labels,
        "findings": [],
        "file_ending": ".nii.gz",
        "numTraining": num_cases,
    }
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=1), encoding="utf-8")
    (folder / "plans.json").write_text(json.dumps(plans, indent=1), encoding="utf-8")

    total = num_cases + num_unlabeled
    shapes = list(shapes) if shapes is not None else [TINY_SHAPE] * total
    if len(shapes) != total:
        raise ValueError(f"shapes has {len(shapes)} entries, expected num_cases + num_unlabeled = {total}.")

    for view in views:
        view_folder = folder / f"{PLANS_NAME}_{view}"
        view_folder.mkdir(exist_ok=True)
        for index in range(total):
            case_id = f"case_{index:03d}"
            labelled = index < num_cases
            image = _random_volume(shapes[index], rng)
            np.save(view_folder / f"{case_id}.npy", image[None])

            has_label = labelled and view in labelled_views
            locations: dict = {}
            if has_label:
                # Quantiles of the smooth image give num_labels contiguous structures.
                thresholds = np.quantile(image, np.linspace(0.6, 0.95, num_labels + 1))
                seg = np.digitize(image, thresholds[:-1]).astype(np.int16)
                seg[image > thresholds[-1]] = 0
                np.save(view_folder / f"{case_id}_seg.npy", seg[None])
                locations = _class_locations(seg, num_labels, rng)

            properties = {
                "case": case_id,
                "view": view,
                "source": "imagesTr" if labelled else "imagesUnlabeled",
                "has_label": has_label,
                "shape_after_resampling": list(shapes[index]),
                "spacing_canonical": [1.0, 1.0, 1.0],
                "target_spacing": [1.0, 1.0, 1.0],
                "normalization": {"scheme": "zscore"},
                "class_locations": locations,
                "plans_identifier": "test",
            }
            (view_folder / f"{case_id}.json").write_text(json.dumps(properties), encoding="utf-8")
    return folder
