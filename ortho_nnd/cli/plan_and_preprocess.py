"""ortho_plan_and_preprocess and its three steps: fingerprint, planning, preprocessing."""
from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from ortho_nnd import paths
from ortho_nnd.cli.common import add_verbose_flag, configure_logging, run_command
from ortho_nnd.dataset import load_json, load_raw_dataset, save_json
from ortho_nnd.fingerprint import extract_fingerprint
from ortho_nnd.integrity import verify_dataset_integrity
from ortho_nnd.planning.planner import plan_experiment
from ortho_nnd.planning.plans import DEFAULT_PLANS_NAME, load_plans, plans_path, save_plans
from ortho_nnd.planning.presets import load_preset
from ortho_nnd.preprocessing.runner import TRAINING_SOURCES, output_folder_for, preprocess_dataset

logger = logging.getLogger(__name__)

FINGERPRINT_FILE_NAME = "dataset_fingerprint.json"
SOURCE_CHOICES = ("imagesTr", "imagesUnlabeled", "imagesTs")


def _dataset_folders(dataset_id) -> tuple[Path, Path]:
    name = paths.dataset_name_from_id(dataset_id, paths.raw_folder())
    return paths.raw_folder() / name, paths.preprocessed_folder() / name


def step_fingerprint(args) -> int:
    raw, preprocessed = _dataset_folders(args.d)
    dataset = load_raw_dataset(raw)
    if args.verify_dataset_integrity:
        verify_dataset_integrity(dataset, args.np)
    preprocessed.mkdir(parents=True, exist_ok=True)
    save_json(dataset.dataset_json, preprocessed / "dataset.json")
    if (raw / "findings.csv").is_file():
        shutil.copyfile(raw / "findings.csv", preprocessed / "findings.csv")

    fingerprint_file = preprocessed / FINGERPRINT_FILE_NAME
    if fingerprint_file.is_file() and not args.clean:
        logger.info("Fingerprint exists: %s (use --clean to recompute).", fingerprint_file)
        return 0
    fingerprint = extract_fingerprint(dataset, args.np, fingerprint_file)
    # Failed scans are left out so the other steps can go on; the command still ends with status 1.
    args.failed_scans.extend(fingerprint["failed_scans"])
    return 0


def step_plan(args) -> int:
    raw, preprocessed = _dataset_folders(args.d)
    fingerprint = load_json(preprocessed / FINGERPRINT_FILE_NAME)
    preset = load_preset(args.preset)
    if args.gpu_memory_target is not None:
        if args.gpu_memory_target <= 0:
            raise ValueError(f"--gpu_memory_target must be positive (GB), got {args.gpu_memory_target}.")
        preset = {**preset, "gpu_memory_target_gb": float(args.gpu_memory_target)}

    target = plans_path(preprocessed)
    existing = load_json(target) if target.is_file() else None
    dataset_json = load_json(raw / "dataset.json")
    plans = plan_experiment(fingerprint, preset, dataset_json, args.plans_name, existing)
    save_plans(plans, target)
    logger.info("Plans written to %s", target)
    return 0


def step_preprocess(args) -> int:
    raw, preprocessed = _dataset_folders(args.d)
    plans = load_plans(plans_path(preprocessed))
    dataset = load_raw_dataset(raw)
    views = args.views.split(",") if args.views else None
    sources = tuple(args.sources.split(",")) if args.sources else TRAINING_SOURCES
    invalid = [s for s in sources if s not in SOURCE_CHOICES]
    if invalid:
        raise ValueError(f"Invalid --sources {invalid}; choose from {SOURCE_CHOICES}.")

    if args.clean:
        for view, view_plans in plans["views"].items():
            if views and view not in views:
                continue
            for source in sources:
                folder = output_folder_for(preprocessed, view_plans, source)
                if folder.is_dir():
                    shutil.rmtree(folder)

    failures = preprocess_dataset(dataset, plans, preprocessed, views, sources, args.np, args.num_parts, args.part_id)
    if failures:
        logger.error("%d scan(s) failed:\n  %s", len(failures), "\n  ".join(failures))
        return 1
    return 0


def _parser(description: str, steps: set[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("-d", required=True, help="Dataset id (101) or folder name (Dataset101_Knee) in ORTHO_raw.")
    parser.add_argument("-np", type=int, default=2, help="Worker processes (default 2).")
    parser.add_argument("--clean", action="store_true", help="Recompute the fingerprint and overwrite preprocessed arrays.")
    if "fingerprint" in steps:
        parser.add_argument("--verify_dataset_integrity", action="store_true", help="Check every file first and report all problems at once.")
    if "plan" in steps:
        parser.add_argument("--preset", default="default", help="Planner preset: a name in plans/ (default, large, cpu_small) or a JSON path.")
        parser.add_argument("--gpu_memory_target", type=float, default=None, help="Override the preset's training-memory target, in GB.")
    parser.add_argument("--plans_name", default=DEFAULT_PLANS_NAME, help="Name of the plans; preprocessed folders are {plans_name}_{view}.")
    if "preprocess" in steps:
        parser.add_argument("--views", default=None, help="Comma-separated views to preprocess (default: all planned).")
        parser.add_argument("--sources", default=None, help="Comma-separated image folders (default imagesTr,imagesUnlabeled; add imagesTs for test exams).")
        parser.add_argument("--num_parts", type=int, default=1, help="Split the scans into this many parts (one per machine).")
        parser.add_argument("--part_id", type=int, default=0, help="Which part this process handles, 0-based.")
    add_verbose_flag(parser)
    return parser


def _run(steps: list[str], description: str, argv) -> int:
    parser = _parser(description, set(steps))
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    if "preprocess" in steps and not (args.num_parts >= 1 and 0 <= args.part_id < args.num_parts):
        # Checked before the fingerprint and plans are rewritten.
        parser.error(f"--part_id {args.part_id} must be in [0, {args.num_parts}) for --num_parts {args.num_parts}.")
    args.failed_scans = []
    functions = {"fingerprint": step_fingerprint, "plan": step_plan, "preprocess": step_preprocess}
    for step in steps:
        code = run_command(functions[step], args)
        if code:
            return code
    if args.failed_scans:
        logger.error("%d scan(s) could not be read and were left out:\n  %s", len(args.failed_scans), "\n  ".join(args.failed_scans))
        return 1
    return 0


def main_plan_and_preprocess(argv=None) -> int:
    return _run(["fingerprint", "plan", "preprocess"], "Fingerprint, plan and preprocess a dataset.", argv)


def main_extract_fingerprint(argv=None) -> int:
    return _run(["fingerprint"], "Extract the dataset fingerprint.", argv)


def main_plan_experiment(argv=None) -> int:
    return _run(["plan"], "Plan every view from the fingerprint.", argv)


def main_preprocess(argv=None) -> int:
    return _run(["preprocess"], "Preprocess the scans with the existing plans.", argv)


if __name__ == "__main__":
    raise SystemExit(main_plan_and_preprocess())
