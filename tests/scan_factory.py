"""Small synthetic scans with chosen geometry for the dataset, geometry and preprocessing tests."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk

# Orientation codes of the canonical layouts and of common scanner layouts.
ORIENTATION_LETTERS = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}


def direction_from_code(code: str) -> np.ndarray:
    """Return the direction matrix whose index axis k increases towards letter k of ``code``."""
    direction = np.zeros((3, 3))
    for k, letter in enumerate(code):
        axis, sign = ORIENTATION_LETTERS[letter]
        direction[axis, k] = sign
    return direction


def rotation_about(axis: int, degrees: float) -> np.ndarray:
    angle = math.radians(degrees)
    c, s = math.cos(angle), math.sin(angle)
    i, j = [a for a in range(3) if a != axis]
    rotation = np.eye(3)
    rotation[i, i], rotation[i, j], rotation[j, i], rotation[j, j] = c, -s, s, c
    return rotation


def make_scan(shape_xyz=(20, 18, 6), spacing=(0.5, 0.5, 3.0), code="PIR", oblique_degrees=0.0, oblique_axis=2, seed=0, origin=(10.0, -20.0, 5.0)) -> sitk.Image:
    """Make a float32 scan with a bright ellipsoid, the given size (x, y, z), spacing and orientation."""
    rng = np.random.default_rng(seed)
    direction = rotation_about(oblique_axis, oblique_degrees) @ direction_from_code(code)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in reversed(shape_xyz)], indexing="ij")
    array = 100.0 * ((x / 0.7) ** 2 + (y / 0.6) ** 2 + (z / 0.8) ** 2 < 1) + 20.0 + rng.normal(0, 2.0, x.shape)
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction.flatten().tolist())
    return image


def make_label(image: sitk.Image, num_classes: int = 3, seed: int = 0) -> sitk.Image:
    """Make a label map on ``image``'s grid with blocks of values 0..num_classes-1."""
    rng = np.random.default_rng(seed)
    shape = tuple(reversed(image.GetSize()))
    label = np.zeros(shape, dtype=np.uint8)
    for value in range(1, num_classes):
        corner = [int(rng.integers(0, max(1, s - 3))) for s in shape]
        size = [max(1, s // 3) for s in shape]
        label[tuple(slice(c, c + n) for c, n in zip(corner, size))] = value
    result = sitk.GetImageFromArray(label)
    result.CopyInformation(image)
    return result


def write_multiview_dataset(raw_folder: Path, name: str = "Dataset101_Knee", num_cases: int = 4, views=("sagittal", "coronal", "axial"), labels: dict | None = None, with_findings: bool = True) -> Path:
    """Write a small multi-view raw dataset with labels on the sagittal view and a findings table."""
    import csv
    import json

    from ortho_nnd.io import write_image

    codes = {"sagittal": "PIR", "coronal": "LIP", "axial": "LPS"}
    spacings = {"sagittal": (0.6, 0.6, 3.0), "coronal": (0.6, 0.6, 3.5), "axial": (0.6, 0.6, 4.0)}
    labels = labels or {"background": 0, "femur": 1, "tibia": 2}
    folder = raw_folder / name
    for case_index in range(num_cases):
        case = f"knee_{case_index:03d}"
        for view_index, view in enumerate(views):
            image = make_scan((24, 20, 8), spacings[view], codes[view], seed=case_index * 10 + view_index)
            write_image(image, folder / "imagesTr" / f"{case}_{view}.nii.gz")
            if view == "sagittal":
                write_image(make_label(image, len(labels), seed=case_index), folder / "labelsTr" / f"{case}_{view}.nii.gz")
    dataset_json = {
        "name": name.split("_", 1)[1], "views": list(views), "labelled_views": ["sagittal"], "labels": labels,
        "findings": ["acl_tear", "joint_effusion"] if with_findings else [], "file_ending": ".nii.gz", "numTraining": num_cases,
    }
    with open(folder / "dataset.json", "w", encoding="utf-8") as handle:
        json.dump(dataset_json, handle)
    if with_findings:
        with open(folder / "findings.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["case", "subject", "acl_tear", "joint_effusion"])
            for case_index in range(num_cases):
                writer.writerow([f"knee_{case_index:03d}", f"s{case_index // 2}", case_index % 2, "" if case_index == 0 else 1 - case_index % 2])
    return folder
