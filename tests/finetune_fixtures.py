"""Small preprocessed datasets with an easy signal for the fine-tuning tests.

``make_segmentation_dataset(root)``: one foreground class that is a band of image intensities, so
a network separates it from the intensity alone. ``make_classification_dataset(root)``: two
views and two findings. Finding 0 ("cube") is positive when a bright cube sits in the scans.
Finding 1 ("bright") is positive when the whole scans are brighter. Some cases lack the coronal
view, and some "bright" cells are blank.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from training_fixtures import PLANS_NAME, make_preprocessed_dataset, tiny_plans

# Intensity added inside the cube of finding 0 and to the whole scan for finding 1 (z-score units).
CUBE_INTENSITY = 3.0
BRIGHTNESS_SHIFT = 1.5


def train_args(dataset: str, task: str, fold: str, *extra: str):
    """Parse an ortho_train command line into the namespace the trainers receive."""
    from ortho_nnd.cli.train import build_parser

    return build_parser().parse_args([dataset, task, fold, "--device", "cpu", "--seed", "0", *extra])


def make_segmentation_dataset(root: Path, num_cases: int = 10, augmentation: bool = False) -> Path:
    plans = tiny_plans("Dataset998_Seg", ("sagittal",))
    plans["views"]["sagittal"]["training"].update({"augmentation": augmentation, "learning_rate": 1e-2, "finetune_learning_rate": 1e-2})
    return make_preprocessed_dataset(root, "Dataset998_Seg", num_cases=num_cases, num_labels=1, plans=plans)


def make_classification_dataset(root: Path, num_cases: int = 16, views=("sagittal", "coronal"), missing_coronal=(1, 6, 11)) -> Path:
    dataset_name = "Dataset997_Cls"
    plans = tiny_plans(dataset_name, views)
    for view in views:
        plans["views"][view]["training"].update({"finetune_learning_rate": 3e-3, "cls_embed_dim": 16, "cls_batch_size": 4})
    folder = make_preprocessed_dataset(root, dataset_name, num_cases=num_cases, views=views, labelled_views=(), plans=plans)

    rng = np.random.default_rng(1)
    rows = []
    for index in range(num_cases):
        case = f"case_{index:03d}"
        cube, bright = index % 2, (index // 2) % 2
        for view in views:
            path = folder / f"{PLANS_NAME}_{view}" / f"{case}.npy"
            if view == "coronal" and index in missing_coronal:
                path.unlink()
                (path.parent / f"{case}.json").unlink()
                continue
            image = np.load(path)
            if cube:
                z, y, x = (int(rng.integers(0, s - 4)) for s in image.shape[1:])
                image[:, z:z + 4, y:y + 6, x:x + 6] += CUBE_INTENSITY
            if bright:
                image += BRIGHTNESS_SHIFT
            np.save(path, image)
        # Every fifth case leaves finding 1 blank (not annotated).
        rows.append({"case": case, "subject": f"subject_{index // 2}", "cube": cube, "bright": "" if index % 5 == 4 else bright})

    with open(folder / "findings.csv", "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, ["case", "subject", "cube", "bright"])
        writer.writeheader()
        writer.writerows(rows)
    dataset_json = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    dataset_json["findings"] = ["cube", "bright"]
    (folder / "dataset.json").write_text(json.dumps(dataset_json), encoding="utf-8")
    return folder
