"""Single-view segmentation of a real abdominal MR in nnU-Net v2 layout, end to end.

Input (the real MRI folder beside the repository, or --real_mri):
  abdomen_mr_labeled/image.nii.gz, labels.nii.gz   one abdominal and lumbar MR, 3 mm isotropic

The scan and its label map are written as Dataset203_AbdomenMR in nnU-Net v2 layout
(imagesTr/abdomen_0000.nii.gz, labelsTr/abdomen.nii.gz, channel_names in dataset.json), which
ortho_nnd reads as a single-view dataset. Then: plan and preprocess (cpu_small preset), a short
axial diffusion pretraining, a short segmentation fine-tune on the one scan (fold "all"),
ortho_predict on the scan, and ortho_evaluate against its labels.

Two limits of the reported Dice:
- the labels were produced by a segmentation model, not drawn by people, so they are a
  reference of unknown accuracy, not ground truth;
- training and testing use the same single scan, so the Dice measures how well the network
  fits that scan, not how well it generalises to new ones.

    python examples/real_abdomen_single_view.py [--real_mri DIR] [--work_dir DIR] [--seg_iterations N]
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from ortho_nnd.evaluation.json_io import read_json
from ortho_nnd.experiments.real_data import build_abdomen_dataset
from ortho_nnd.experiments.stages import run_script, run_stage
from ortho_nnd.experiments.workspace import ortho_environment, ortho_folders, prepare_work_dir

logger = logging.getLogger("examples.real_abdomen_single_view")

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REAL_MRI = REPOSITORY_ROOT.parent / "shared" / "data" / "real_mri"
DEFAULT_WORK_DIR = Path(tempfile.gettempdir()) / "ortho_nnd_examples" / "real_abdomen_single_view"
EXAMPLE_MARKER = "ortho_example.json"
DATASET_ID = 203
PREDICTION_ENDING = "_seg.nii.gz"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real_mri", type=Path, default=DEFAULT_REAL_MRI, help="Real MRI folder (default: %(default)s).")
    parser.add_argument("--work_dir", type=Path, default=DEFAULT_WORK_DIR, help="Work folder, recreated on every run (default: %(default)s).")
    parser.add_argument("--pretrain_iterations", type=int, default=30, help="Axial pretraining iterations; 0 fine-tunes from random weights (default: %(default)s).")
    parser.add_argument("--seg_iterations", type=int, default=200, help="Segmentation iterations (default: %(default)s).")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu", "mps"), help="Device (default: %(default)s).")
    parser.add_argument("--preset", default="cpu_small", help="Planner preset (default: %(default)s).")
    return parser


def run(args: argparse.Namespace) -> dict:
    work_dir = prepare_work_dir(args.work_dir, EXAMPLE_MARKER, fresh=True)
    folders = ortho_folders(work_dir)
    predictions = work_dir / "predictions"
    references = work_dir / "references"
    summary_file = work_dir / "evaluation" / "summary.json"

    with ortho_environment(folders):
        dataset_folder = build_abdomen_dataset(args.real_mri, folders["ORTHO_raw"], DATASET_ID)
        run_stage("plan and preprocess", "ortho_plan_and_preprocess", ["-d", DATASET_ID, "-np", 1, "--preset", args.preset])
        seg_arguments = [DATASET_ID, "seg", "all", "--iterations", args.seg_iterations, "--device", args.device]
        if args.pretrain_iterations > 0:
            run_stage("pretrain axial", "ortho_train", [DATASET_ID, "pretrain", "axial", "--iterations", args.pretrain_iterations, "--device", args.device])
        else:
            seg_arguments += ["--pretrained", "none"]
        run_stage("fine-tune segmentation", "ortho_train", seg_arguments)
        # A run from random weights is stored as seg_axial_scratch, which ortho_predict -d does not pick, so name the folder.
        model_folder = folders["ORTHO_results"] / dataset_folder.name / ("seg_axial" if args.pretrain_iterations > 0 else "seg_axial_scratch")
        run_stage("predict", "ortho_predict", ["-i", dataset_folder / "imagesTr", "-o", predictions, "-m", model_folder, "-f", "all", "--device", args.device])

        # ortho_predict names its output {exam}_{view}_seg.nii.gz; the reference gets the same stem.
        prediction_files = sorted(predictions.glob(f"*{PREDICTION_ENDING}"))
        if len(prediction_files) != 1:
            raise FileNotFoundError(
                f"Expected one *{PREDICTION_ENDING} in {predictions}, found {[p.name for p in prediction_files]}. "
                "Check the log of the predict stage."
            )
        references.mkdir(parents=True, exist_ok=True)
        stem = prediction_files[0].name[: -len(PREDICTION_ENDING)]
        shutil.copyfile(dataset_folder / "labelsTr" / "abdomen.nii.gz", references / f"{stem}.nii.gz")

        run_stage("evaluate", "ortho_evaluate", [
            "seg", "-p", predictions, "-r", references, "-l", dataset_folder / "dataset.json", "-o", summary_file,
        ])

    summary = read_json(summary_file)
    dice = {name: metrics["dice"] for name, metrics in summary["mean"].items()}
    print(f"Mean foreground Dice {summary['foreground_mean']['dice']:.3f} over {len(dice)} classes (summary: {summary_file})")
    for name, value in sorted(dice.items(), key=lambda item: -(item[1] if item[1] is not None else -1)):
        print(f"  {name:<22} {'undefined' if value is None else f'{value:.3f}'}")
    print("The reference labels come from a segmentation model, not from people, and training and testing used the "
          "same single scan: this Dice measures fitting, not generalisation.")
    return summary


def main(argv: list[str] | None = None) -> int:
    return run_script(run, build_parser(), argv, logger)


if __name__ == "__main__":
    sys.exit(main())
