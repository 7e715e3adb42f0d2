"""The ortho_demo pipeline: phantom data to evaluated predictions in one work folder.

Stages, each one an ortho_* command run in this process (see ``stages.run_stage``):

1. ``ortho_make_demo_dataset``: the knee phantom with training, test and unlabelled exams;
2. ``ortho_plan_and_preprocess`` with the cpu_small preset (the default preset when CUDA is available);
3. ``ortho_train ... pretrain VIEW`` for sagittal, coronal and axial;
4. ``ortho_train ... seg fold0`` and ``ortho_train ... cls fold0`` from the pretrained weights;
5. ``ortho_predict`` on the held-out test exams (imagesTs), with overlays;
6. ``ortho_evaluate seg`` against labelsTs and ``ortho_evaluate cls`` against findingsTs.csv;
7. ``ortho_summarize``, which writes summary.md and report.html for the fold-0 runs.

``run_demo`` returns the summary dictionary that ``format_summary`` prints, and stores it as
``demo_summary.json`` in the work folder.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from ortho_nnd.evaluation.json_io import read_json
from ortho_nnd.experiments.stages import StageRecord, run_stage
from ortho_nnd.experiments.workspace import ortho_environment, ortho_folders, prepare_work_dir, write_json

logger = logging.getLogger(__name__)

DEMO_MARKER = "ortho_demo.json"
DEMO_SUMMARY = "demo_summary.json"
VIEWS = ("sagittal", "coronal", "axial")
DATASET_NAME_SUFFIX = "KneePhantom"

# Planner presets: cpu_small keeps patches and networks small enough for a laptop CPU.
CPU_PRESET = "cpu_small"
GPU_PRESET = "default"


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of one demo run. Iterations are optimizer steps per training stage."""

    work_dir: Path
    dataset_id: int = 999
    cases: int = 16
    test_cases: int = 4
    unlabeled: int = 4
    pretrain_iterations: int = 150
    seg_iterations: int = 600
    cls_iterations: int = 150
    seed: int = 0
    num_processes: int = 2
    preset: str | None = None
    device: str = "auto"

    def check(self) -> None:
        # Five-fold splits need at least five labelled training exams; the test exams are the demo's evaluation.
        if self.cases < 5:
            raise ValueError(f"Invalid --cases {self.cases}: the five-fold split needs at least 5 training exams.")
        if self.test_cases < 1:
            raise ValueError(f"Invalid --test_cases {self.test_cases}: the demo evaluates on at least 1 test exam.")
        if self.unlabeled < 0:
            raise ValueError(f"Invalid --unlabeled {self.unlabeled}: must be 0 or more.")
        for name in ("pretrain_iterations", "seg_iterations", "cls_iterations", "num_processes"):
            if getattr(self, name) < 1:
                raise ValueError(f"Invalid --{name} {getattr(self, name)}: must be at least 1.")
        if not 0 <= self.dataset_id <= 999:
            raise ValueError(f"Invalid --dataset_id {self.dataset_id}: use a number from 0 to 999.")


# The --quick sizes: the smallest run that still exercises every stage (a few minutes on 2 CPU cores).
QUICK_SIZES = {
    "cases": 5,
    "test_cases": 2,
    "unlabeled": 0,
    "pretrain_iterations": 3,
    "seg_iterations": 5,
    "cls_iterations": 3,
}


def choose_preset(requested: str | None) -> str:
    """Return ``requested``, or the GPU preset when CUDA is available and the CPU preset otherwise."""
    if requested:
        return requested

    import torch

    return GPU_PRESET if torch.cuda.is_available() else CPU_PRESET


@dataclass(frozen=True)
class DemoLayout:
    """Folders and files of one demo run inside its work folder."""

    work_dir: Path
    dataset_name: str

    @property
    def folders(self) -> dict[str, Path]:
        return ortho_folders(self.work_dir)

    @property
    def raw_dataset(self) -> Path:
        return self.folders["ORTHO_raw"] / self.dataset_name

    @property
    def results_dataset(self) -> Path:
        return self.folders["ORTHO_results"] / self.dataset_name

    @property
    def test_predictions(self) -> Path:
        return self.work_dir / "test_predictions"

    @property
    def test_evaluation(self) -> Path:
        return self.work_dir / "test_evaluation"


def layout_for(settings: DemoSettings) -> DemoLayout:
    work_dir = Path(settings.work_dir).expanduser().resolve()
    return DemoLayout(work_dir, f"Dataset{settings.dataset_id:03d}_{DATASET_NAME_SUFFIX}")


def demo_stages(settings: DemoSettings, layout: DemoLayout, preset: str) -> list[tuple[str, str, list[str]]]:
    """Return the (stage name, command, arguments) of every stage, in the order they run."""
    dataset = str(settings.dataset_id)
    train_options = ["--seed", str(settings.seed), "--device", settings.device]
    segmentation_summary = layout.test_evaluation / "segmentation_summary.json"
    findings_summary = layout.test_evaluation / "findings_summary.json"

    stages = [
        ("make phantom dataset", "ortho_make_demo_dataset", [
            "-d", dataset, "--cases", str(settings.cases), "--test_cases", str(settings.test_cases),
            "--unlabeled", str(settings.unlabeled), "--seed", str(settings.seed), "-np", str(settings.num_processes),
        ]),
        ("plan and preprocess", "ortho_plan_and_preprocess", [
            "-d", dataset, "-np", str(settings.num_processes), "--preset", preset,
        ]),
    ]
    for view in VIEWS:
        stages.append((f"pretrain {view}", "ortho_train", [
            dataset, "pretrain", view, "--iterations", str(settings.pretrain_iterations), *train_options,
        ]))
    stages += [
        ("fine-tune segmentation", "ortho_train", [
            dataset, "seg", "fold0", "--iterations", str(settings.seg_iterations), *train_options,
        ]),
        ("fine-tune diagnosis", "ortho_train", [
            dataset, "cls", "fold0", "--iterations", str(settings.cls_iterations), *train_options,
        ]),
        ("predict test exams", "ortho_predict", [
            "-i", str(layout.raw_dataset / "imagesTs"), "-o", str(layout.test_predictions), "-d", dataset,
            "-f", "0", "--overlay", "--device", settings.device,
        ]),
        ("evaluate test segmentation", "ortho_evaluate", [
            "seg", "-p", str(layout.test_predictions), "-r", str(layout.raw_dataset / "labelsTs"),
            "-l", str(layout.raw_dataset / "dataset.json"), "-o", str(segmentation_summary),
            "-np", str(settings.num_processes),
        ]),
        ("evaluate test diagnosis", "ortho_evaluate", [
            "cls", "-p", str(layout.test_predictions / "findings.csv"), "-r", str(layout.raw_dataset / "findingsTs.csv"),
            "-o", str(findings_summary),
        ]),
        # Only fold 0 is trained, so the summary expects one fold per task.
        ("summarize", "ortho_summarize", [dataset, "--num_folds", "1"]),
    ]
    return stages


def _finite_or_none(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def collect_results(layout: DemoLayout) -> dict:
    """Read the test-set summaries that the evaluation stages wrote into the demo's result dictionary."""
    segmentation = read_json(layout.test_evaluation / "segmentation_summary.json")
    findings = read_json(layout.test_evaluation / "findings_summary.json")

    dice_per_structure = {name: _finite_or_none(metrics.get("dice")) for name, metrics in segmentation["mean"].items()}
    auc_per_finding = {
        name: _finite_or_none(metrics.get("auc")) for name, metrics in (findings.get("per_finding") or {}).items()
    }
    return {
        "test_cases": len(segmentation.get("metric_per_case", [])),
        "dice_per_structure": dice_per_structure,
        "mean_foreground_dice": _finite_or_none(segmentation["foreground_mean"].get("dice")),
        "macro_auc": _finite_or_none(findings["macro"].get("auc")),
        "macro_auc_findings": int(findings["macro"].get("n_findings", 0)),
        "auc_per_finding": auc_per_finding,
    }


def run_demo(settings: DemoSettings) -> dict:
    """Run every demo stage in ``settings.work_dir`` and return the summary (also in demo_summary.json).

    Raises StageError naming the first stage that failed, with the command that reruns it.
    """
    settings.check()
    layout = layout_for(settings)
    prepare_work_dir(layout.work_dir, DEMO_MARKER, fresh=True)
    preset = choose_preset(settings.preset)
    records: list[StageRecord] = []
    started = time.perf_counter()
    write_json({"settings": dataclasses.asdict(settings), "preset": preset}, layout.work_dir / DEMO_MARKER)

    with ortho_environment(layout.folders):
        for variable, folder in layout.folders.items():
            logger.info("%s=%s", variable, folder)
        for name, command, argv in demo_stages(settings, layout, preset):
            run_stage(name, command, argv, records)

    summary = {
        "settings": dataclasses.asdict(settings),
        "preset": preset,
        "total_seconds": time.perf_counter() - started,
        "stages": [dataclasses.asdict(record) for record in records],
        "results": collect_results(layout),
        "paths": {
            "work_dir": layout.work_dir,
            "raw_dataset": layout.raw_dataset,
            "results": layout.results_dataset,
            "test_predictions": layout.test_predictions,
            "test_segmentation_summary": layout.test_evaluation / "segmentation_summary.json",
            "test_findings_summary": layout.test_evaluation / "findings_summary.json",
            "report": layout.results_dataset / "report.html",
            "overlays": layout.test_predictions / "*_overlay.png",
        },
    }
    write_json(summary, layout.work_dir / DEMO_SUMMARY)
    return summary


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_summary(summary: dict) -> str:
    """Return the text block that ortho_demo prints at the end: metrics, timings and paths."""
    results = summary["results"]
    lines = [
        "",
        "=" * 72,
        f"ortho_demo finished in {summary['total_seconds'] / 60:.1f} min (preset {summary['preset']})",
        "=" * 72,
        f"Test exams evaluated: {results['test_cases']} (held out, never seen in training)",
        "Dice per structure (sagittal test scans):",
    ]
    for name, dice in results["dice_per_structure"].items():
        lines.append(f"  {name:<24} {_number(dice)}")
    lines += [
        f"  {'mean foreground':<24} {_number(results['mean_foreground_dice'])}",
        f"Diagnosis macro AUC: {_number(results['macro_auc'])} "
        f"(mean over the {results['macro_auc_findings']} findings with both classes among the test exams)",
        "",
        "Stage durations:",
    ]
    for stage in summary["stages"]:
        lines.append(f"  {stage['name']:<28} {stage['seconds']:7.1f} s")
    lines += ["", "Where everything is:"]
    for name, path in summary["paths"].items():
        lines.append(f"  {name:<26} {path}")
    lines.append("=" * 72)
    return "\n".join(lines)
