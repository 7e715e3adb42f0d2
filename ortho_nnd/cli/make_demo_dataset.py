"""ortho_make_demo_dataset: write the built-in knee phantom as a raw dataset."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ortho_nnd.paths import raw_folder
from ortho_nnd.phantom.acquisition import SIZES
from ortho_nnd.phantom.dataset import generate_phantom_dataset


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ortho_make_demo_dataset",
        description="Write the synthetic knee phantom (sagittal, coronal and axial exams with 11 labelled "
                    "structures and 8 findings) as raw dataset DatasetXXX_KneePhantom.",
    )
    parser.add_argument("-d", "--dataset_id", type=int, default=999, help="dataset id (default 999)")
    parser.add_argument("--cases", type=int, default=24, help="number of training exams (default 24)")
    parser.add_argument("--test_cases", type=int, default=6, help="number of test exams in imagesTs (default 6)")
    parser.add_argument("--unlabeled", type=int, default=8,
                        help="number of unlabelled exams in imagesUnlabeled (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same arrays")
    parser.add_argument("--size", choices=sorted(SIZES), default="default",
                        help="acquisition grids: 'default' (80x80 in-plane, for CPU demos) or "
                             "'benchmark' (384x384, clinical-like)")
    parser.add_argument("-o", "--output_folder", type=Path, default=None,
                        help="raw folder to write into (default: $ORTHO_raw)")
    parser.add_argument("-np", "--num_processes", type=int, default=None,
                        help="worker processes for rendering (default: 2, or 1 on a single core)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    output_folder = args.output_folder if args.output_folder is not None else raw_folder()
    dataset_folder = generate_phantom_dataset(
        output_folder,
        dataset_id=args.dataset_id,
        num_cases=args.cases,
        num_test=args.test_cases,
        num_unlabeled=args.unlabeled,
        seed=args.seed,
        size=args.size,
        num_processes=args.num_processes,
    )
    print(dataset_folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
