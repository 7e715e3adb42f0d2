"""ortho_evaluate: compare segmentation predictions or finding probabilities with references."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ortho_nnd.evaluation.findings import evaluate_findings_csv
from ortho_nnd.evaluation.findings_metrics import DEFAULT_BOOTSTRAP_RESAMPLES, DEFAULT_BOOTSTRAP_SEED
from ortho_nnd.evaluation.segmentation import evaluate_segmentation_folder, labels_from_dataset_json
from ortho_nnd.evaluation.segmentation_metrics import DEFAULT_NSD_TOLERANCE_MM

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ortho_evaluate", description=__doc__)
    subparsers = parser.add_subparsers(dest="mode", required=True)

    segmentation = subparsers.add_parser("seg", help="Evaluate predicted label images against reference label images.")
    segmentation.add_argument("-p", "--predictions", required=True, help="Folder of predicted label images.")
    segmentation.add_argument("-r", "--references", required=True, help="Folder of reference label images.")
    segmentation.add_argument("-l", "--dataset_json", help="dataset.json whose 'labels' names the classes (default: values found in the references).")
    segmentation.add_argument("-o", "--output", help="Summary JSON to write (default: PREDICTIONS/summary.json).")
    segmentation.add_argument("--file_ending", default=".nii.gz", help="File ending of the label images (default: .nii.gz).")
    segmentation.add_argument("--nsd_tolerance", type=float, default=DEFAULT_NSD_TOLERANCE_MM, help="NSD tolerance in mm (default: %(default)s).")
    segmentation.add_argument("-np", "--num_processes", type=int, default=1, help="Worker processes (default: 1).")
    segmentation.add_argument("--allow_missing", action="store_true", help="Skip references without a prediction instead of failing.")

    findings = subparsers.add_parser("cls", help="Evaluate finding probabilities (CSV) against reference findings (CSV).")
    findings.add_argument("-p", "--predictions", required=True, help="Predictions CSV: case,{finding}...[,{finding}_decision...].")
    findings.add_argument("-r", "--reference", help="Reference CSV: case[,subject],{finding}... (default: {finding}_reference columns of the predictions CSV).")
    findings.add_argument("--thresholds", help='JSON with decision thresholds per finding, for example {"effusion": 0.4} (default: 0.5).')
    findings.add_argument("-o", "--output", help="Summary JSON to write (default: summary.json beside the predictions CSV).")
    findings.add_argument("--plots", help="Folder for reliability and ROC plots (default: the folder of the output JSON).")
    findings.add_argument("--n_bootstrap", type=int, default=DEFAULT_BOOTSTRAP_RESAMPLES, help="Bootstrap resamples for the AUC interval (default: %(default)s).")
    findings.add_argument("--seed", type=int, default=DEFAULT_BOOTSTRAP_SEED, help="Bootstrap random seed (default: %(default)s).")
    findings.add_argument("--allow_missing", action="store_true", help="Skip reference cases without a prediction instead of failing.")
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    try:
        if arguments.mode == "seg":
            labels = labels_from_dataset_json(arguments.dataset_json) if arguments.dataset_json else None
            output = arguments.output or str(Path(arguments.predictions) / "summary.json")
            summary = evaluate_segmentation_folder(
                arguments.predictions,
                arguments.references,
                labels,
                file_ending=arguments.file_ending,
                num_processes=arguments.num_processes,
                nsd_tolerance_mm=arguments.nsd_tolerance,
                output_json=output,
                allow_missing=arguments.allow_missing,
            )
            foreground = summary["foreground_mean"]
            print(f"Foreground mean Dice {foreground['dice']:.4f}, NSD {foreground['nsd']:.4f}, HD95 {foreground['hd95']:.2f} mm. Summary: {output}")
        else:
            output = arguments.output or str(Path(arguments.predictions).parent / "summary.json")
            summary = evaluate_findings_csv(
                arguments.predictions,
                arguments.reference,
                thresholds=arguments.thresholds,
                output_json=output,
                plot_folder=arguments.plots or str(Path(output).parent),
                allow_missing=arguments.allow_missing,
                n_bootstrap=arguments.n_bootstrap,
                seed=arguments.seed,
            )
            macro = summary["macro"]
            print(f"Macro AUC {macro['auc']:.4f} over {macro['n_findings']} findings, micro AUC {summary['micro']['auc']:.4f}. Summary: {output}")
    except (FileNotFoundError, ValueError) as error:
        logger.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
