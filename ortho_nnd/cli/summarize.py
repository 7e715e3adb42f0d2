"""ortho_summarize: gather all folds of the trained tasks of a dataset into summary files and report.html."""
from __future__ import annotations

import argparse
import logging
import sys

from ortho_nnd.evaluation.summarize import DEFAULT_NUM_FOLDS, summarize_results

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ortho_summarize", description=__doc__)
    parser.add_argument("dataset", help="Dataset id (101), name (Dataset101_Knee) or results folder.")
    parser.add_argument("--num_folds", type=int, default=DEFAULT_NUM_FOLDS, help="Number of folds expected per task (default: %(default)s).")
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    try:
        summary = summarize_results(arguments.dataset, num_folds=arguments.num_folds)
    except (FileNotFoundError, ValueError) as error:
        logger.error("%s", error)
        return 1

    for name, task in summary["tasks"].items():
        print(f"{name}: folds {task['folds_present']}" + (f", missing {task['folds_missing']}" if task["folds_missing"] else ""))
    print(f"Report: {summary['results_folder']}/report.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
