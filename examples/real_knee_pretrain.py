"""Pretrain the three view-specific diffusion models on real knee MRI.

Input (the real MRI folder beside the repository, or --real_mri):
  knee_dess_sagittal/dess_echo1.nii.gz   sagittal 3D DESS, 0.31 x 0.31 x 1.5 mm
  knee_t2_sagittal_dicom/                sagittal 2D T2 series, DICOM, about 8 degrees oblique

The DESS is used as the sagittal scan. Coronal and axial scans do not exist for this knee, so
they are SIMULATED by reslicing the DESS onto exact coronal and axial grids with 0.625 mm
pixels and 3 mm slices (ortho_nnd.experiments.simulated_views). The T2 series is a second
sagittal scan. All four go into imagesUnlabeled of Dataset201_RealKneePretrain in the work
folder, which is then planned, preprocessed (cpu_small preset) and pretrained per view.

    python examples/real_knee_pretrain.py [--real_mri DIR] [--work_dir DIR] [--iterations N]

Prints each view's pretraining checkpoint and its first and last logged losses, and writes
real_dess_simulated_views.png (the middle slice of the real sagittal DESS and of its simulated
coronal and axial reslices) into --figures_dir.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from ortho_nnd import io
from ortho_nnd.evaluation.json_io import read_json
from ortho_nnd.experiments.real_data import build_knee_pretrain_dataset
from ortho_nnd.experiments.stages import run_script, run_stage
from ortho_nnd.experiments.workspace import ortho_environment, ortho_folders, prepare_work_dir
from ortho_nnd.visualization import plot_exam_overlay

logger = logging.getLogger("examples.real_knee_pretrain")

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REAL_MRI = REPOSITORY_ROOT.parent / "shared" / "data" / "real_mri"
DEFAULT_WORK_DIR = Path(tempfile.gettempdir()) / "ortho_nnd_examples" / "real_knee_pretrain"
EXAMPLE_MARKER = "ortho_example.json"
DATASET_ID = 201
VIEWS = ("sagittal", "coronal", "axial")
# Iterations averaged for the first and last loss, because single diffusion losses are noisy.
LOSS_WINDOW = 5


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real_mri", type=Path, default=DEFAULT_REAL_MRI, help="Real MRI folder (default: %(default)s).")
    parser.add_argument("--work_dir", type=Path, default=DEFAULT_WORK_DIR, help="Work folder, recreated on every run (default: %(default)s).")
    parser.add_argument("--figures_dir", type=Path, help="Folder for real_dess_simulated_views.png (default: WORK_DIR/figures).")
    parser.add_argument("--iterations", type=int, default=30, help="Pretraining iterations per view (default: %(default)s).")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu", "mps"), help="Training device (default: %(default)s).")
    parser.add_argument("--preset", default="cpu_small", help="Planner preset (default: %(default)s).")
    return parser


def loss_range(training_log: Path) -> str:
    """Return the mean loss of the first and of the last LOSS_WINDOW logged iterations."""
    if not training_log.is_file():
        return "no training_log.json"
    losses = [loss for loss in read_json(training_log).get("loss", []) if loss is not None]
    if not losses:
        return "no losses logged"
    window = min(LOSS_WINDOW, len(losses))
    first = sum(losses[:window]) / window
    last = sum(losses[-window:]) / window
    return f"mean loss of the first {window} iterations {first:.4f}, of the last {window} {last:.4f}"


def run(args: argparse.Namespace) -> dict[str, Path]:
    work_dir = prepare_work_dir(args.work_dir, EXAMPLE_MARKER, fresh=True)
    folders = ortho_folders(work_dir)
    figures_dir = Path(args.figures_dir) if args.figures_dir else work_dir / "figures"
    checkpoints = {}
    with ortho_environment(folders):
        dataset_folder = build_knee_pretrain_dataset(args.real_mri, folders["ORTHO_raw"], DATASET_ID)
        images = dataset_folder / "imagesUnlabeled"
        figure = plot_exam_overlay(
            {view: (io.read_image(images / f"dess_{view}.nii.gz"), None) for view in VIEWS},
            figures_dir / "real_dess_simulated_views.png",
            title="real DESS; coronal and axial simulated",
        )
        print(f"Simulated views: {figure}")
        run_stage("plan and preprocess", "ortho_plan_and_preprocess", ["-d", DATASET_ID, "-np", 2, "--preset", args.preset])
        for view in VIEWS:
            run_stage(f"pretrain {view}", "ortho_train", [DATASET_ID, "pretrain", view, "--iterations", args.iterations, "--device", args.device])
            checkpoints[view] = folders["ORTHO_results"] / dataset_folder.name / f"pretrain_{view}" / "checkpoint_final.pth"

    for view, checkpoint in checkpoints.items():
        print(f"{view:<9} {checkpoint}  ({loss_range(checkpoint.parent / 'training_log.json')})")
    return checkpoints


def main(argv: list[str] | None = None) -> int:
    return run_script(run, build_parser(), argv, logger)


if __name__ == "__main__":
    sys.exit(main())
