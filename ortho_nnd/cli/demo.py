"""ortho_demo: train and evaluate the whole pipeline on the knee phantom with one command.

Everything goes into one work folder (default ./ortho_demo_work) with its own ORTHO_raw,
ORTHO_preprocessed and ORTHO_results, so the demo never touches other datasets. A rerun with
the same work folder starts again from scratch.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from ortho_nnd.cli.common import add_verbose_flag, configure_logging
from ortho_nnd.experiments.demo import QUICK_SIZES, DemoSettings, format_summary, run_demo
from ortho_nnd.experiments.stages import StageError

logger = logging.getLogger(__name__)

DEFAULT_WORK_DIR = Path("ortho_demo_work")


def build_parser() -> argparse.ArgumentParser:
    defaults = DemoSettings(work_dir=DEFAULT_WORK_DIR)
    parser = argparse.ArgumentParser(
        prog="ortho_demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work_dir", type=Path, default=DEFAULT_WORK_DIR, help="Folder for all demo data and results (default: %(default)s).")
    parser.add_argument("--quick", action="store_true", help=f"Much smaller run that only checks that every stage works: {QUICK_SIZES}.")
    parser.add_argument("--cases", type=int, help=f"Training exams of the phantom (default: {defaults.cases}).")
    parser.add_argument("--test_cases", type=int, help=f"Held-out test exams (default: {defaults.test_cases}).")
    parser.add_argument("--unlabeled", type=int, help=f"Unlabelled exams, used only for pretraining (default: {defaults.unlabeled}).")
    parser.add_argument("--iterations", type=int, help="Set the pretraining, segmentation and diagnosis iterations at once.")
    parser.add_argument("--pretrain_iterations", type=int, help=f"Pretraining iterations per view (default: {defaults.pretrain_iterations}).")
    parser.add_argument("--seg_iterations", type=int, help=f"Segmentation fine-tuning iterations (default: {defaults.seg_iterations}).")
    parser.add_argument("--cls_iterations", type=int, help=f"Diagnosis fine-tuning iterations (default: {defaults.cls_iterations}).")
    parser.add_argument("-d", "--dataset_id", type=int, default=defaults.dataset_id, help="Dataset id of the phantom (default: %(default)s).")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="Seed of the phantom and of training (default: %(default)s).")
    parser.add_argument("-np", "--num_processes", type=int, default=defaults.num_processes, help="Worker processes for rendering, preprocessing and evaluation (default: %(default)s).")
    parser.add_argument("--preset", help="Planner preset (default: cpu_small, or default when a CUDA GPU is available).")
    parser.add_argument("--device", default=defaults.device, choices=("auto", "cuda", "cpu", "mps"), help="Device for training and prediction (default: %(default)s).")
    add_verbose_flag(parser)
    return parser


def settings_from_args(args: argparse.Namespace) -> DemoSettings:
    """Combine the defaults, the --quick sizes and the explicit options (explicit options win)."""
    values = dict(QUICK_SIZES) if args.quick else {}
    if args.iterations is not None:
        values.update(pretrain_iterations=args.iterations, seg_iterations=args.iterations, cls_iterations=args.iterations)
    for name in ("cases", "test_cases", "unlabeled", "pretrain_iterations", "seg_iterations", "cls_iterations"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)

    return DemoSettings(
        work_dir=args.work_dir,
        dataset_id=args.dataset_id,
        seed=args.seed,
        num_processes=args.num_processes,
        preset=args.preset,
        device=args.device,
        **values,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    settings = settings_from_args(args)
    print(f"ortho_demo: work folder {Path(settings.work_dir).expanduser().resolve()}", flush=True)
    print(f"ortho_demo: settings {dataclasses.asdict(settings)}", flush=True)

    try:
        summary = run_demo(settings)
    except StageError as error:
        logger.error("%s", error)
        return 1
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        logger.error("%s", error)
        return 1

    print(format_summary(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
