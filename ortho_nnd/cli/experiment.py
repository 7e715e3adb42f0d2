"""ortho_experiment: multi-run experiments on a planned and preprocessed dataset.

    ortho_experiment label_efficiency -d 999 [--fractions 0.1,0.25,1.0] [--iterations N] [--seeds 0,1,2]

label_efficiency fine-tunes from the pretrained diffusion models and from random weights at each
label fraction, with the same iterations, seed and label subset. It evaluates both on the
validation cases of one fold. The table and plot (label_efficiency.md, .json and .png) go to
ORTHO_results/DatasetXXX/experiments/label_efficiency/.
"""
from __future__ import annotations

import argparse
import logging
import sys

from ortho_nnd.cli.common import add_verbose_flag, configure_logging
from ortho_nnd.experiments.stages import StageError
from ortho_nnd.planning.plans import DEFAULT_PLANS_NAME

logger = logging.getLogger(__name__)


def _number_list(text: str, convert, option: str) -> tuple:
    try:
        return tuple(convert(part) for part in text.split(",") if part.strip())
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"Invalid {option} {text!r}: give comma-separated numbers ({error}).") from error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ortho_experiment", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="experiment", required=True)

    label_efficiency = subparsers.add_parser("label_efficiency", help="Pretrained vs from-scratch fine-tuning at several label fractions.")
    label_efficiency.add_argument("-d", "--dataset", required=True, help="Dataset id (999) or name (Dataset999_KneePhantom), planned and preprocessed.")
    label_efficiency.add_argument("--fractions", default="0.1,0.25,1.0", type=lambda text: _number_list(text, float, "--fractions"),
                                  help="Comma-separated label fractions in (0, 1] (default: %(default)s).")
    label_efficiency.add_argument("--seeds", default="0", type=lambda text: _number_list(text, int, "--seeds"),
                                  help="Comma-separated seeds; each seed repeats every run (default: %(default)s).")
    label_efficiency.add_argument("--tasks", default="seg,cls", type=lambda text: tuple(part.strip() for part in text.split(",") if part.strip()),
                                  help="Tasks to compare: seg, cls or both (default: %(default)s).")
    label_efficiency.add_argument("--iterations", type=int, help="Fine-tuning iterations of every run (default: from the plans).")
    label_efficiency.add_argument("--cls_iterations", type=int, help="Diagnosis iterations, when they differ from --iterations.")
    label_efficiency.add_argument("--pretrain_iterations", type=int, help="Iterations of pretraining runs started because a view has no pretrained model (default: from the plans).")
    label_efficiency.add_argument("--backbone_lr_factor", type=float,
                                  help="Backbone learning rate of the pretrained runs as a fraction of the head learning rate (default: from the plans); runs from random weights train the backbone at the full rate.")
    label_efficiency.add_argument("--fold", type=int, default=0, help="Fold whose validation cases evaluate every run (default: %(default)s).")
    label_efficiency.add_argument("--view", help="Segmentation view (default: the dataset's first labelled view).")
    label_efficiency.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu", "mps"), help="Training device (default: %(default)s).")
    label_efficiency.add_argument("-p", "--plans_name", default=DEFAULT_PLANS_NAME, help="Plans name (default: %(default)s).")
    add_verbose_flag(label_efficiency)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)

    from ortho_nnd.experiments.label_efficiency import LabelEfficiencySettings, run_label_efficiency

    settings = LabelEfficiencySettings(
        dataset=args.dataset,
        fractions=args.fractions,
        seeds=args.seeds,
        tasks=args.tasks,
        iterations=args.iterations,
        cls_iterations=args.cls_iterations,
        pretrain_iterations=args.pretrain_iterations,
        fold=args.fold,
        view=args.view,
        device=args.device,
        plans_name=args.plans_name,
        backbone_lr_factor=args.backbone_lr_factor,
    )
    try:
        result = run_label_efficiency(settings)
    except (StageError, ValueError, FileNotFoundError) as error:
        logger.error("%s", error)
        return 1

    for row in result["rows"]:
        value = "undefined" if row["mean"] is None else f"{row['mean']:.3f}"
        print(f"{row['task']:<4} {row['initialisation']:<10} fraction {row['fraction']:<5g} {row['metric']}: {value} ({row['n_defined']}/{row['n_runs']} runs)")
    print(f"Table: {result['output_folder']}/label_efficiency.md, plot: {result['output_folder']}/label_efficiency.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
