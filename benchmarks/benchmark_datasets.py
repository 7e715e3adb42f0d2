"""Write one benchmark dataset in both layouts: ortho_nnd single-view and nnU-Net v2.

Both layouts receive the same image and label files, so both tools see identical voxels:

- ortho_nnd: ``imagesTr/{case}_{view}.nii.gz``, ``labelsTr/{case}_{view}.nii.gz``, ``imagesTs/``
  and ``labelsTs/`` likewise, and a dataset.json with ``views`` and ``labelled_views`` set to the
  one view.
- nnU-Net v2: ``imagesTr/{case}_0000.nii.gz``, ``labelsTr/{case}.nii.gz``, ``imagesTs/{case}_0000.nii.gz``
  and a dataset.json with ``channel_names``, ``labels``, ``numTraining`` and ``file_ending``.
  nnU-Net has no ``labelsTs`` convention, so the test references are read from the ortho_nnd copy.

Two sources are supported: the sagittal view of the knee phantom written by
``ortho_make_demo_dataset``, and the single labelled abdominal MR scan. nnU-Net v2 requires
consecutive label values (its verify_dataset_integrity rejects gaps), so label maps whose values have
gaps are remapped to 1..K for both tools.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

logger = logging.getLogger(__name__)

FILE_ENDING = ".nii.gz"
NNUNET_CHANNEL_SUFFIX = "_0000"
# nnU-Net normalises every channel whose name is not "CT" (or a few CT-like names) with a z-score
# per image, which is what ortho_nnd's planner chooses for MRI.
NNUNET_CHANNEL_NAME = "MRI"

# Intensity augmentation of the synthetic training copies of a single labelled scan. The ranges are
# mild so the copies stay plausible MR images of the same anatomy.
GAMMA_RANGE = (0.7, 1.5)
# Peak-to-peak change of the smooth multiplicative bias field across the field of view (fraction).
BIAS_FIELD_AMPLITUDE = 0.3
# Standard deviation of added Gaussian noise, relative to the image's intensity standard deviation.
NOISE_FRACTION = 0.03


@dataclass(frozen=True)
class BenchmarkCase:
    """One scan of a benchmark dataset: its case id, image and label (``None`` only for unlabelled scans)."""

    case: str
    image: sitk.Image
    label: sitk.Image | None


@dataclass(frozen=True)
class DatasetLayouts:
    """Folders of one benchmark dataset in both layouts and the facts the harness needs about it."""

    name: str
    view: str
    ortho_folder: Path
    nnunet_folder: Path
    labels: dict[str, int]
    train_cases: list[str]
    test_cases: list[str]
    description: str


def consecutive_label_mapping(values: Sequence[int]) -> dict[int, int]:
    """Map the non-zero label values to 1..K in increasing order; background 0 stays 0."""
    foreground = sorted({int(v) for v in values if int(v) != 0})
    if any(v < 0 for v in foreground):
        raise ValueError(f"Invalid label values {foreground}: labels must be non-negative integers.")
    mapping = {0: 0}
    for index, value in enumerate(foreground, start=1):
        mapping[value] = index
    return mapping


def remap_label_array(array: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """Replace every value of ``array`` by ``mapping[value]`` (every value must be in the mapping)."""
    present = {int(v) for v in np.unique(array)}
    missing = sorted(present - set(mapping))
    if missing:
        raise ValueError(f"Label values {missing} have no entry in the mapping {mapping}.")
    lookup = np.zeros(max(present | set(mapping)) + 1, dtype=np.uint8 if max(mapping.values()) < 256 else np.int16)
    for source, target in mapping.items():
        lookup[source] = target
    return lookup[array]


def nnunet_dataset_json(labels: dict[str, int], num_training: int, description: str) -> dict:
    """Build an nnU-Net v2 dataset.json for one MRI channel."""
    return {
        "channel_names": {"0": NNUNET_CHANNEL_NAME},
        "labels": dict(labels),
        "numTraining": int(num_training),
        "file_ending": FILE_ENDING,
        "description": description,
    }


def ortho_dataset_json(name: str, labels: dict[str, int], view: str, num_training: int, num_test: int, description: str) -> dict:
    """Build an ortho_nnd dataset.json for one labelled view."""
    return {
        "name": name,
        "description": description,
        "views": [view],
        "labelled_views": [view],
        "labels": dict(labels),
        "findings": [],
        "file_ending": FILE_ENDING,
        "numTraining": int(num_training),
        "numTest": int(num_test),
    }


def ortho_file_name(case: str, view: str) -> str:
    return f"{case}_{view}{FILE_ENDING}"


def nnunet_image_name(case: str) -> str:
    return f"{case}{NNUNET_CHANNEL_SUFFIX}{FILE_ENDING}"


def nnunet_label_name(case: str) -> str:
    return f"{case}{FILE_ENDING}"


def _write_json(data: dict, path: Path) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def write_dataset_layouts(
    name: str,
    dataset_id: int,
    view: str,
    labels: dict[str, int],
    train: Sequence[BenchmarkCase],
    test: Sequence[BenchmarkCase],
    ortho_raw: Path,
    nnunet_raw: Path,
    description: str,
) -> DatasetLayouts:
    """Write ``train`` and ``test`` cases into ``Dataset{id}_{name}`` under both raw folders.

    Existing folders of that name are replaced. Every training case needs a label; test labels go
    to the ortho_nnd ``labelsTs`` folder, which the harness uses as the reference for both tools.
    """
    if not train:
        raise ValueError(f"Dataset {name} needs at least one training case.")
    unlabelled = [case.case for case in train if case.label is None]
    if unlabelled:
        raise ValueError(f"Training cases {unlabelled} of {name} have no label map; every training case needs one.")
    folder_name = f"Dataset{dataset_id:03d}_{name}"
    ortho_folder = Path(ortho_raw) / folder_name
    nnunet_folder = Path(nnunet_raw) / folder_name
    for folder in (ortho_folder, nnunet_folder):
        if folder.exists():
            shutil.rmtree(folder)

    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (ortho_folder / sub).mkdir(parents=True)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (nnunet_folder / sub).mkdir(parents=True)

    for case in train:
        sitk.WriteImage(case.image, str(ortho_folder / "imagesTr" / ortho_file_name(case.case, view)), True)
        sitk.WriteImage(case.label, str(ortho_folder / "labelsTr" / ortho_file_name(case.case, view)), True)
        shutil.copyfile(ortho_folder / "imagesTr" / ortho_file_name(case.case, view), nnunet_folder / "imagesTr" / nnunet_image_name(case.case))
        shutil.copyfile(ortho_folder / "labelsTr" / ortho_file_name(case.case, view), nnunet_folder / "labelsTr" / nnunet_label_name(case.case))
    for case in test:
        sitk.WriteImage(case.image, str(ortho_folder / "imagesTs" / ortho_file_name(case.case, view)), True)
        shutil.copyfile(ortho_folder / "imagesTs" / ortho_file_name(case.case, view), nnunet_folder / "imagesTs" / nnunet_image_name(case.case))
        if case.label is not None:
            sitk.WriteImage(case.label, str(ortho_folder / "labelsTs" / ortho_file_name(case.case, view)), True)

    _write_json(ortho_dataset_json(name, labels, view, len(train), len(test), description), ortho_folder / "dataset.json")
    _write_json(nnunet_dataset_json(labels, len(train), description), nnunet_folder / "dataset.json")
    return DatasetLayouts(
        name=folder_name,
        view=view,
        ortho_folder=ortho_folder,
        nnunet_folder=nnunet_folder,
        labels=dict(labels),
        train_cases=[case.case for case in train],
        test_cases=[case.case for case in test],
        description=description,
    )


# ---------------------------------------------------------------------- sources


def phantom_view_cases(phantom_folder: Path, view: str = "sagittal") -> tuple[list[BenchmarkCase], list[BenchmarkCase], dict[str, int]]:
    """Read the training and test cases of one view of a phantom raw dataset, with its labels."""
    dataset_json_path = Path(phantom_folder) / "dataset.json"
    if not dataset_json_path.is_file():
        raise FileNotFoundError(f"{dataset_json_path} not found; write the phantom with ortho_make_demo_dataset first.")
    dataset_json = json.loads(dataset_json_path.read_text(encoding="utf-8"))
    labels = {str(k): int(v) for k, v in dataset_json["labels"].items()}

    def read(images: str, references: str) -> list[BenchmarkCase]:
        cases = []
        suffix = f"_{view}{FILE_ENDING}"
        for image_path in sorted((Path(phantom_folder) / images).glob(f"*{suffix}")):
            case = image_path.name[: -len(suffix)]
            label_path = Path(phantom_folder) / references / image_path.name
            label = sitk.ReadImage(str(label_path)) if label_path.is_file() else None
            cases.append(BenchmarkCase(case, sitk.ReadImage(str(image_path)), label))
        return cases

    train = read("imagesTr", "labelsTr")
    test = read("imagesTs", "labelsTs")
    if not train:
        raise FileNotFoundError(f"No {view} training images in {phantom_folder / 'imagesTr'}.")
    return train, test, labels


def smooth_bias_field(shape: Sequence[int], amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """Return a multiplicative field 1 + linear ramp with a random direction, spanning ``amplitude`` peak to peak."""
    grids = np.meshgrid(*[np.linspace(-0.5, 0.5, int(n)) for n in shape], indexing="ij")
    direction = rng.normal(size=len(shape))
    direction /= np.linalg.norm(direction)
    ramp = sum(weight * grid for weight, grid in zip(direction, grids))
    span = float(ramp.max() - ramp.min()) or 1.0
    return 1.0 + amplitude * ramp / span


def intensity_augmented_copy(array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Return a gamma-, bias- and noise-augmented copy of an image array (same shape and dtype)."""
    values = array.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        raise ValueError("Cannot augment a constant image: every voxel has the same value.")

    normalised = (values - low) / (high - low)
    gamma = rng.uniform(*GAMMA_RANGE)
    augmented = normalised ** gamma * smooth_bias_field(array.shape, BIAS_FIELD_AMPLITUDE, rng)
    augmented = augmented * (high - low) + low
    augmented += rng.normal(0.0, NOISE_FRACTION * float(values.std()), size=array.shape)

    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        augmented = np.clip(np.round(augmented), info.min, info.max)
    return augmented.astype(array.dtype)


def single_scan_cases(
    image_path: Path, label_path: Path, case: str, num_copies: int, seed: int
) -> tuple[list[BenchmarkCase], list[BenchmarkCase], dict[str, int]]:
    """Build training cases from one labelled scan: the scan itself plus ``num_copies`` intensity-augmented copies.

    The test set is the original scan, so a Dice on it measures how well each tool fits one scan in
    the iteration budget, not how it generalises. Labels are remapped to consecutive values and named
    ``label_{original value}``.
    """
    for path in (image_path, label_path):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path} not found.")
    if num_copies < 0:
        raise ValueError(f"num_copies must be 0 or more, got {num_copies}.")
    image = sitk.ReadImage(str(image_path))
    label = sitk.ReadImage(str(label_path))
    label_array = sitk.GetArrayFromImage(label)
    mapping = consecutive_label_mapping(np.unique(label_array).tolist())
    remapped = sitk.GetImageFromArray(remap_label_array(label_array, mapping))
    remapped.CopyInformation(label)
    labels = {"background": 0}
    labels.update({f"label_{source}": target for source, target in mapping.items() if source != 0})

    rng = np.random.default_rng(seed)
    image_array = sitk.GetArrayFromImage(image)
    train = [BenchmarkCase(f"{case}_original", image, remapped)]
    for index in range(num_copies):
        copy = sitk.GetImageFromArray(intensity_augmented_copy(image_array, rng))
        copy.CopyInformation(image)
        train.append(BenchmarkCase(f"{case}_augmented{index + 1}", copy, remapped))
    test = [BenchmarkCase(case, image, remapped)]
    return train, test, labels
