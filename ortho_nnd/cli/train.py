"""ortho_train: diffusion pretraining, segmentation and classification fine-tuning.

    ortho_train DATASET pretrain VIEW [options]         VIEW: sagittal, coronal or axial
    ortho_train DATASET seg FOLD --view VIEW [options]  FOLD: fold0 ... fold4 or all
    ortho_train DATASET cls FOLD [options]

Multi-GPU: ``torchrun --nproc_per_node=8 -m ortho_nnd.cli.train 101 pretrain sagittal``.
"""
from __future__ import annotations

import argparse
import logging
import sys

from ortho_nnd.cli.common import add_verbose_flag, configure_logging, run_command
from ortho_nnd.planning.plans import DEFAULT_PLANS_NAME

logger = logging.getLogger(__name__)

TASKS = ("pretrain", "seg", "cls")
VIEWS = ("sagittal", "coronal", "axial")
FOLDS = tuple(f"fold{k}" for k in range(5)) + ("all",)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ortho_train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dataset", help="Dataset id (101) or folder name (Dataset101_Knee).")
    parser.add_argument("task", choices=TASKS, help="pretrain: diffusion pretraining of one view; seg: segmentation; cls: classification.")
    parser.add_argument("task_arg", metavar="VIEW_OR_FOLD", help="View for pretrain (sagittal, coronal, axial); fold0..fold4 or all for seg and cls.")

    shared = parser.add_argument_group("shared options")
    length = shared.add_mutually_exclusive_group()
    length.add_argument("--iterations", type=int, help="Number of optimizer steps (default: from the plans).")
    length.add_argument("--epochs", type=int, help="Train for this many epochs of ceil(cases / (batch size x GPUs)) iterations each.")
    shared.add_argument("-device", "--device", default="auto", choices=("auto", "cuda", "cpu", "mps"),
                        help="Compute device; auto picks cuda, then mps, then cpu (default: auto).")
    shared.add_argument("--c", action="store_true", help="Continue from checkpoint_latest.pth in the output folder.")
    shared.add_argument("--pretrained_from", help="Initialise from a dataset's pretrain_VIEW final checkpoint (dataset id or name), a results folder or a checkpoint file.")
    shared.add_argument("--num_workers", type=int, help="Background data-loading processes; 0 loads in the training process (default: from the plans).")
    shared.add_argument("--compile", action="store_true", help="Compile the network with torch.compile (falls back to eager if compiling fails).")
    shared.add_argument("--seed", type=int, help="Random seed for weights, patch sampling and noise (default: 12345).")
    shared.add_argument("--checkpoint_every", type=int, help="Iterations between checkpoint_latest.pth writes (default: from the plans).")
    shared.add_argument("--deterministic", action="store_true", help="Use deterministic algorithms and ordered data loading (slower, reproducible).")
    shared.add_argument("-p", "--plans_name", default=DEFAULT_PLANS_NAME, help="Plans name (default: %(default)s).")
    add_verbose_flag(parser)

    finetune = parser.add_argument_group("fine-tuning options (seg, cls)")
    finetune.add_argument("--view", choices=VIEWS, help="View to fine-tune for seg (default: the dataset's labelled view).")
    finetune.add_argument("--pretrained", default="auto", help="Pretrained checkpoint: a path, 'none' (random initialisation) or 'auto' (this dataset's pretrain_VIEW; default).")
    finetune.add_argument("--label_fraction", type=float, help="Fraction of the training cases whose labels are used (0, 1].")
    finetune.add_argument("--mode", choices=("linear_probe", "finetune"), default="finetune", help="Train only the heads (linear_probe) or the backbone too (default: %(default)s).")
    finetune.add_argument("--fusion", choices=("concat", "gated"), default="concat", help="Three-view feature fusion for cls (default: %(default)s).")
    finetune.add_argument("--lr", type=float, help="Base learning rate; for seg and cls the rate of the heads (default: from the plans).")
    finetune.add_argument("--backbone_lr_factor", type=float, help="Backbone learning rate as a fraction of --lr (default: from the plans).")
    finetune.add_argument("--decay", choices=("cosine", "poly"), help="Learning-rate decay after warm-up (default: cosine for pretrain, from the fine-tuning trainer otherwise).")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.task == "pretrain" and args.task_arg not in VIEWS:
        parser.error(f"pretrain needs a view ({', '.join(VIEWS)}), got {args.task_arg!r}.")
    if args.task in ("seg", "cls") and args.task_arg not in FOLDS:
        parser.error(f"{args.task} needs a fold ({', '.join(FOLDS)}), got {args.task_arg!r}.")
    for name in ("iterations", "epochs", "checkpoint_every"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1, got {value}.")
    if args.num_workers is not None and args.num_workers < 0:
        parser.error(f"--num_workers must be 0 or more, got {args.num_workers}.")


def dispatch(args: argparse.Namespace):
    # Trainers import torch and the networks; import them only for the task that runs.
    if args.task == "pretrain":
        from ortho_nnd.training.pretrain import run_pretraining

        return run_pretraining(args)
    if args.task == "seg":
        from ortho_nnd.training.seg_trainer import run_segmentation_training

        return run_segmentation_training(args)
    from ortho_nnd.training.cls_trainer import run_classification_training

    return run_classification_training(args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    configure_logging(args.verbose)
    return run_command(_train, args)


def _train(args: argparse.Namespace) -> int:
    # Trainers return the path of their last checkpoint, which is not an exit code.
    dispatch(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
