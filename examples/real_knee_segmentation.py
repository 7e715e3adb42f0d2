"""Train knee segmentation on images synthesised from real label maps, then segment real scans.

Input (the real MRI folder beside the repository, or --real_mri):
  knee_labelmaps/*.nii.gz                 two real knee label maps (no images)
  knee_dess_sagittal/dess_echo1.nii.gz    sagittal 3D DESS (no labels)
  knee_t2_sagittal_dicom/                 sagittal 2D T2 series, DICOM (no labels)

Steps, all inside the work folder:
1. ortho_synthesize_from_labels renders sagittal exams with random contrasts, spacings and
   obliquities from the label maps (Dataset202_KneeSynthReal);
2. ortho_plan_and_preprocess (cpu_small preset);
3. ortho_train pretrain sagittal on the synthetic images, then ortho_train seg all. Every exam
   trains, because exams rendered from one label map share their anatomy and a validation split
   would leak it. With --pretrain_iterations 0, segmentation trains from random weights instead;
4. ortho_predict on the real DESS file and on the real T2 DICOM folder;
5. three-panel overlays (sagittal slice, coronal and axial reformats of the sagittal scan, with
   the predicted contours) written to --figures_dir as real_dess_overlay.png and real_t2_overlay.png.

The real scans have no reference labels, so the result can only be judged by eye.

    python examples/real_knee_segmentation.py [--real_mri DIR] [--work_dir DIR] [--figures_dir DIR]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ortho_nnd import io
from ortho_nnd.experiments.real_data import (
    KNEE_DESS_FILE,
    KNEE_LABEL_MAP_FOLDER,
    KNEE_T2_DICOM_FOLDER,
    check_real_mri_folder,
    reformat_for_display,
)
from ortho_nnd.experiments.stages import run_script, run_stage
from ortho_nnd.experiments.workspace import ortho_environment, ortho_folders, prepare_work_dir
from ortho_nnd.visualization import plot_exam_overlay

logger = logging.getLogger("examples.real_knee_segmentation")

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REAL_MRI = REPOSITORY_ROOT.parent / "shared" / "data" / "real_mri"
DEFAULT_WORK_DIR = Path(tempfile.gettempdir()) / "ortho_nnd_examples" / "real_knee_segmentation"
EXAMPLE_MARKER = "ortho_example.json"
DATASET_ID = 202
DATASET_NAME = "KneeSynthReal"

# Slice thickness range of the synthetic exams in mm: from the DESS (1.5 mm) to clinical 2D T2 (4 mm).
SLICE_THICKNESS_RANGE = "1.5,4.0"
# Isotropic pixel size of the display reformats in mm.
DISPLAY_SPACING_MM = 0.6
DISPLAY_VIEWS = ("sagittal", "coronal", "axial")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real_mri", type=Path, default=DEFAULT_REAL_MRI, help="Real MRI folder (default: %(default)s).")
    parser.add_argument("--work_dir", type=Path, default=DEFAULT_WORK_DIR, help="Work folder, recreated on every run (default: %(default)s).")
    parser.add_argument("--figures_dir", type=Path, help="Folder for the overlay PNGs (default: WORK_DIR/figures).")
    parser.add_argument("--exams_per_map", type=int, default=4, help="Synthetic exams per label map (default: %(default)s).")
    parser.add_argument("--pretrain_iterations", type=int, default=30, help="Sagittal pretraining iterations on the synthetic images; 0 trains segmentation from random weights (default: %(default)s).")
    parser.add_argument("--seg_iterations", type=int, default=150, help="Segmentation iterations (default: %(default)s).")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu", "mps"), help="Device (default: %(default)s).")
    parser.add_argument("--preset", default="cpu_small", help="Planner preset (default: %(default)s).")
    return parser


def label_volumes_ml(label: sitk.Image, label_names: dict[str, int]) -> dict[str, float]:
    """Return the predicted volume of each named label in millilitres (1 ml = 1000 mm^3)."""
    voxel_ml = float(np.prod(label.GetSpacing())) / 1000.0
    array = sitk.GetArrayFromImage(label)
    return {name: round(float((array == value).sum()) * voxel_ml, 2) for name, value in label_names.items() if value != 0}


def write_overlay(image: sitk.Image, label: sitk.Image, label_names: dict[str, int], output_png: Path, title: str) -> Path:
    """Draw the middle sagittal, coronal and axial planes of a sagittal scan with predicted contours."""
    panels = {}
    for view in DISPLAY_VIEWS:
        panels[view] = reformat_for_display(image, label, view, DISPLAY_SPACING_MM)
    return plot_exam_overlay(panels, output_png, label_names, title)


def _prediction_file(folder: Path) -> Path:
    candidates = sorted(folder.glob("*_sagittal_seg.nii.gz"))
    if len(candidates) != 1:
        raise FileNotFoundError(
            f"Expected one *_sagittal_seg.nii.gz in {folder}, found {[c.name for c in candidates]}. "
            "Check the log of the predict stage: the scan may have been detected as another view."
        )
    return candidates[0]


def run(args: argparse.Namespace) -> dict:
    real_mri = check_real_mri_folder(args.real_mri, [KNEE_LABEL_MAP_FOLDER, KNEE_DESS_FILE, KNEE_T2_DICOM_FOLDER])
    work_dir = prepare_work_dir(args.work_dir, EXAMPLE_MARKER, fresh=True)
    figures_dir = Path(args.figures_dir) if args.figures_dir else work_dir / "figures"
    folders = ortho_folders(work_dir)
    predictions = {"dess": work_dir / "predictions" / "dess", "t2": work_dir / "predictions" / "t2"}
    inputs = {"dess": real_mri / KNEE_DESS_FILE.parent, "t2": real_mri / KNEE_T2_DICOM_FOLDER}

    with ortho_environment(folders):
        run_stage("synthesise from label maps", "ortho_synthesize_from_labels", [
            "-i", real_mri / KNEE_LABEL_MAP_FOLDER, "-d", DATASET_ID, "--name", DATASET_NAME,
            "--exams_per_map", args.exams_per_map, "--views", "sagittal", "--slice_thickness", SLICE_THICKNESS_RANGE,
        ])
        run_stage("plan and preprocess", "ortho_plan_and_preprocess", ["-d", DATASET_ID, "-np", 2, "--preset", args.preset])
        seg_arguments = [DATASET_ID, "seg", "all", "--view", "sagittal", "--iterations", args.seg_iterations, "--device", args.device]
        if args.pretrain_iterations > 0:
            run_stage("pretrain sagittal", "ortho_train", [DATASET_ID, "pretrain", "sagittal", "--iterations", args.pretrain_iterations, "--device", args.device])
        else:
            seg_arguments += ["--pretrained", "none"]
        run_stage("train segmentation", "ortho_train", seg_arguments)
        # A run from random weights is stored as seg_sagittal_scratch, which ortho_predict -d does not pick, so name the folder.
        dataset_name = f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"
        model_folder = folders["ORTHO_results"] / dataset_name / ("seg_sagittal" if args.pretrain_iterations > 0 else "seg_sagittal_scratch")
        for name, folder in inputs.items():
            run_stage(f"predict real {name}", "ortho_predict", [
                "-i", folder, "-o", predictions[name], "-m", model_folder, "-f", "all", "--tasks", "seg", "--overlay", "--device", args.device,
            ])
        dataset_json = json.loads((folders["ORTHO_raw"] / dataset_name / "dataset.json").read_text())

    label_names = dataset_json["labels"]
    scans = {"dess": io.read_image(inputs["dess"] / KNEE_DESS_FILE.name), "t2": io.read_image(inputs["t2"])}
    report = {}
    for name, image in scans.items():
        prediction_file = _prediction_file(predictions[name])
        label = io.read_image(prediction_file)
        same_geometry = (
            label.GetSize() == image.GetSize()
            and np.allclose(label.GetSpacing(), image.GetSpacing(), atol=1e-4)
            and np.allclose(label.GetOrigin(), image.GetOrigin(), atol=1e-3)
            and np.allclose(label.GetDirection(), image.GetDirection(), atol=1e-5)
        )
        overlay = write_overlay(image, label, label_names, figures_dir / f"real_{name}_overlay.png",
                                f"real {name.upper()} scan, predicted labels (no reference available)")
        report[name] = {
            "prediction": str(prediction_file),
            "overlay": str(overlay),
            "prediction_has_scan_geometry": bool(same_geometry),
            "volumes_ml": label_volumes_ml(label, label_names),
        }
        print(f"{name}: {prediction_file}\n  overlay {overlay}\n  same geometry as the scan: {same_geometry}\n  volumes (ml): {report[name]['volumes_ml']}")
    return report


def main(argv: list[str] | None = None) -> int:
    return run_script(run, build_parser(), argv, logger)


if __name__ == "__main__":
    sys.exit(main())
