"""Raw datasets built from the real MRI beside the repository, for the scripts in examples/.

The real MRI folder (``real_mri``) contains a sagittal knee DESS scan (NIfTI), a sagittal knee T2
series (DICOM), two knee label maps without images and one abdominal MR with model-made labels.
The builders below write raw datasets from them into a work folder (never into the repository):

- ``build_knee_pretrain_dataset``: the DESS, its simulated coronal and axial reslices
  (``simulated_views``) and the T2 series as a second sagittal scan, all in imagesUnlabeled;
- ``build_abdomen_dataset``: the abdominal MR and its labels in nnU-Net v2 layout.

``reformat_for_display`` resamples a scan and its label map onto exact sagittal, coronal and
axial grids for three-panel overlays.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ortho_nnd import io
from ortho_nnd.experiments.simulated_views import simulate_view, view_direction, world_bounds

logger = logging.getLogger(__name__)

KNEE_DESS_FILE = Path("knee_dess_sagittal") / "dess_echo1.nii.gz"
KNEE_T2_DICOM_FOLDER = Path("knee_t2_sagittal_dicom")
KNEE_LABEL_MAP_FOLDER = Path("knee_labelmaps")
ABDOMEN_IMAGE_FILE = Path("abdomen_mr_labeled") / "image.nii.gz"
ABDOMEN_LABEL_FILE = Path("abdomen_mr_labeled") / "labels.nii.gz"

# Simulated 2D acquisitions: in-plane spacing and slice thickness in mm, typical of clinical
# coronal and axial knee protocols.
SIMULATED_IN_PLANE_SPACING_MM = 0.625
SIMULATED_SLICE_THICKNESS_MM = 3.0

# Names of the abdominal label values that the real_mri README names; other values are named
# label_{value}. The labels were produced by a segmentation model, not drawn by people.
ABDOMEN_LABEL_NAMES = {
    1: "spleen", 2: "kidney_label2", 3: "kidney_label3", 5: "liver", 19: "vertebrae",
    20: "intervertebral_discs", 21: "spinal_cord", 46: "autochthon_left", 47: "autochthon_right",
    48: "iliopsoas_left", 49: "iliopsoas_right",
}


def check_real_mri_folder(folder: Path, required: list[Path]) -> Path:
    """Return ``folder`` resolved, or raise FileNotFoundError naming each missing item and the fix."""
    folder = Path(folder).expanduser().resolve()
    missing = [str(folder / item) for item in required if not (folder / item).exists()]
    if missing:
        raise FileNotFoundError(
            f"Real MRI not found: {missing}. Pass --real_mri with the folder that contains "
            f"{[str(item) for item in required]} (by default ../shared/data/real_mri beside the repository)."
        )
    return folder


def _write_dataset_json(dataset_folder: Path, content: dict) -> None:
    dataset_folder.mkdir(parents=True, exist_ok=True)
    (dataset_folder / "dataset.json").write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def build_knee_pretrain_dataset(real_mri: Path, raw_folder: Path, dataset_id: int) -> Path:
    """Write the real-knee pretraining dataset and return its folder (unlabelled scans only)."""
    real_mri = check_real_mri_folder(real_mri, [KNEE_DESS_FILE, KNEE_T2_DICOM_FOLDER])
    dataset_folder = Path(raw_folder) / f"Dataset{dataset_id:03d}_RealKneePretrain"
    images = dataset_folder / "imagesUnlabeled"
    images.mkdir(parents=True, exist_ok=True)

    dess = io.read_image(real_mri / KNEE_DESS_FILE)
    io.write_image(dess, images / "dess_sagittal.nii.gz")
    for view in ("coronal", "axial"):
        simulated = simulate_view(dess, view, SIMULATED_IN_PLANE_SPACING_MM, SIMULATED_SLICE_THICKNESS_MM)
        io.write_image(simulated, images / f"dess_{view}.nii.gz")

    # The dataset has one file ending, so the DICOM series is stored as NIfTI with its geometry unchanged.
    t2 = io.read_image(real_mri / KNEE_T2_DICOM_FOLDER)
    io.write_image(t2, images / "t2_sagittal.nii.gz")

    _write_dataset_json(dataset_folder, {
        "name": "RealKneePretrain",
        "description": (
            "Unlabelled real knee MRI for diffusion pretraining: a sagittal 3D DESS scan, coronal and axial "
            f"acquisitions SIMULATED by reslicing that DESS ({SIMULATED_IN_PLANE_SPACING_MM} mm in-plane, "
            f"{SIMULATED_SLICE_THICKNESS_MM} mm box-profile slices), and a sagittal 2D T2 series read from DICOM."
        ),
        "views": ["sagittal", "coronal", "axial"],
        "labelled_views": [],
        "labels": {"background": 0},
        "findings": [],
        "file_ending": ".nii.gz",
        "numTraining": 0,
    })
    logger.info("Wrote %s", dataset_folder)
    return dataset_folder


def build_abdomen_dataset(real_mri: Path, raw_folder: Path, dataset_id: int) -> Path:
    """Write the abdominal MR and its labels in nnU-Net v2 layout and return the dataset folder."""
    real_mri = check_real_mri_folder(real_mri, [ABDOMEN_IMAGE_FILE, ABDOMEN_LABEL_FILE])
    dataset_folder = Path(raw_folder) / f"Dataset{dataset_id:03d}_AbdomenMR"
    (dataset_folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (dataset_folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(real_mri / ABDOMEN_IMAGE_FILE, dataset_folder / "imagesTr" / "abdomen_0000.nii.gz")
    shutil.copyfile(real_mri / ABDOMEN_LABEL_FILE, dataset_folder / "labelsTr" / "abdomen.nii.gz")

    values = np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(real_mri / ABDOMEN_LABEL_FILE))))
    labels = {"background": 0}
    for value in (int(v) for v in values if v != 0):
        labels[ABDOMEN_LABEL_NAMES.get(value, f"label_{value}")] = value

    _write_dataset_json(dataset_folder, {
        "name": "AbdomenMR",
        "description": "One abdominal and lumbar MR (3 mm isotropic) whose labels come from a segmentation model, not from people.",
        "channel_names": {"0": "MRI"},
        "labels": labels,
        "numTraining": 1,
        "file_ending": ".nii.gz",
    })
    logger.info("Wrote %s with %d foreground labels", dataset_folder, len(labels) - 1)
    return dataset_folder


def reformat_for_display(image: sitk.Image, label: sitk.Image | None, view: str, spacing_mm: float) -> tuple[sitk.Image, sitk.Image | None]:
    """Resample ``image`` (linear) and ``label`` (nearest neighbour) onto an exact ``view`` grid with isotropic ``spacing_mm``.

    Only for display: the field of view is the scan's, and the original files are never changed.
    """
    direction = view_direction(view)
    low, high = world_bounds(image, direction)
    size = [int(v) for v in np.maximum(np.ceil((high - low) / spacing_mm), 1)]
    reference = sitk.Image(size, sitk.sitkFloat32)
    reference.SetSpacing([float(spacing_mm)] * 3)
    reference.SetDirection([float(v) for v in direction.flatten()])
    reference.SetOrigin([float(v) for v in direction @ (low + spacing_mm / 2.0)])

    resampled_image = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), reference, sitk.Transform(), sitk.sitkLinear, 0.0)
    resampled_label = None
    if label is not None:
        resampled_label = sitk.Resample(label, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return resampled_image, resampled_label
