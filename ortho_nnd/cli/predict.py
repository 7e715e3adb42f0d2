"""ortho_predict: segment and diagnose new knee MRI exams with trained ortho_nnd models.

Exit status:
  0    every exam succeeded or was already finished (--continue)
  1    invalid arguments, no model, or no scans in the input folder (nothing is predicted)
  2    at least one exam failed (the other exams are still predicted)
  130  interrupted
"""
from __future__ import annotations

import argparse
import logging

from ortho_nnd.cli.common import add_verbose_flag, configure_logging

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_USAGE = 1
EXIT_EXAM_FAILED = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    from ortho_nnd.inference.model_loading import CHECKPOINT_CHOICES, DEFAULT_CHECKPOINT, TASKS
    from ortho_nnd.training.device import DEVICE_CHOICES

    parser = argparse.ArgumentParser(
        prog="ortho_predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-i", "--input", required=True, help="Folder of scans: NIfTI/NRRD/MHA files and DICOM series folders, nested folders allowed.")
    parser.add_argument("-o", "--output", required=True, help="Output folder (created when missing).")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("-d", "--dataset", help="Dataset id or name in ORTHO_results, for example 101 or Dataset101_Knee.")
    model.add_argument("-m", "--model_folder", help="A results dataset folder or one task folder (seg_{view}, cls or a variant).")
    parser.add_argument("-f", "--folds", nargs="+", help="Folds to ensemble, for example 0 1 2 or all (default: every trained numbered fold).")
    parser.add_argument("-chk", "--checkpoint", default=DEFAULT_CHECKPOINT, choices=CHECKPOINT_CHOICES, help="Checkpoint file of each fold (default: %(default)s).")
    parser.add_argument("--tasks", help=f"Comma-separated tasks to run among {','.join(TASKS)} (default: every trained task).")
    parser.add_argument("--step_size", type=float, default=0.5, help="Maximum sliding-window step as a fraction of the patch size, in (0, 1] (default: %(default)s).")
    parser.add_argument("--disable_tta", action="store_true", help="Switch off test-time mirroring (faster, usually slightly less accurate).")
    parser.add_argument("--save_probabilities", action="store_true", help="Also write {case}_{view}_probabilities.npz (float16, per class) and its JSON.")
    parser.add_argument("--overlay", action="store_true", help="Write {case}_overlay.png with the middle slice of each view and the predicted contours.")
    parser.add_argument("--continue", dest="continue_run", action="store_true", help="Skip exams whose {case}_findings.json record is complete.")
    parser.add_argument("-device", "--device", default="auto", choices=DEVICE_CHOICES, help="Device: auto picks cuda, then mps, then cpu (default: %(default)s).")
    parser.add_argument("--num_parts", type=int, default=1, help="Split the exams into this many parts for parallel runs (default: 1).")
    parser.add_argument("--part_id", type=int, default=0, help="Part to predict, from 0 to num_parts - 1 (default: 0).")
    parser.add_argument("--window_progress", action="store_true", help="Show a progress bar over the sliding windows of each scan.")
    add_verbose_flag(parser)
    return parser


def _parse_tasks(text: str | None) -> list[str] | None:
    from ortho_nnd.inference.model_loading import TASKS

    if text is None:
        return None
    tasks = [task.strip() for task in text.split(",") if task.strip()]
    invalid = [task for task in tasks if task not in TASKS]
    if invalid or not tasks:
        raise ValueError(f"Invalid --tasks {text!r}: use a comma-separated subset of {','.join(TASKS)}.")
    return tasks


def run(arguments: argparse.Namespace) -> int:
    from pathlib import Path

    from ortho_nnd.inference.input_discovery import discover_exams
    from ortho_nnd.inference.model_loading import load_models
    from ortho_nnd.inference.predictor import PredictionSettings, run_prediction, select_part
    from ortho_nnd.training.device import resolve_device

    if not 0 < arguments.step_size <= 1:
        raise ValueError(f"Invalid --step_size {arguments.step_size}: it must be in (0, 1].")
    tasks = _parse_tasks(arguments.tasks)
    device = resolve_device(arguments.device)
    input_folder = Path(arguments.input)
    output_folder = Path(arguments.output)
    resolved_input = input_folder.resolve()
    resolved_output = output_folder.resolve()
    if resolved_output == resolved_input or resolved_input in resolved_output.parents:
        # Outputs inside the input folder would be read as new scans by the next run.
        raise ValueError(
            f"The output folder {output_folder} is inside the input folder {input_folder}; choose an -o outside it."
        )

    models = load_models(arguments.dataset, arguments.model_folder, arguments.folds, arguments.checkpoint, tasks, device)
    exams = select_part(discover_exams(input_folder), arguments.num_parts, arguments.part_id)
    logger.info("Predicting %d exams on %s into %s.", len(exams), device, output_folder)

    settings = PredictionSettings(
        output_folder=output_folder,
        device=device,
        step_size=arguments.step_size,
        use_mirroring=not arguments.disable_tta,
        save_probabilities=arguments.save_probabilities,
        overlay=arguments.overlay,
        continue_run=arguments.continue_run,
        window_progress=arguments.window_progress,
    )
    summary = run_prediction(exams, models, settings)
    return EXIT_EXAM_FAILED if summary.failed else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    from ortho_nnd.training.checkpoint import CheckpointError

    arguments = build_parser().parse_args(argv)
    configure_logging(arguments.verbose)
    try:
        return run(arguments)
    except KeyboardInterrupt:
        logger.error("Interrupted; finished exams keep their records, so --continue resumes the run.")
        return EXIT_INTERRUPTED
    except (ValueError, FileNotFoundError, CheckpointError) as error:
        logger.error("%s", error)
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
