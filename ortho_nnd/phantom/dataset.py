"""Write a complete raw knee phantom dataset (images, labels, findings, dataset.json).

All random draws happen up front in one process from ``numpy.random.default_rng(seed)``, in a
fixed order: training subjects, test subjects, unlabelled subjects. Rendering is then a
deterministic function of the drawn parameters, so the arrays are identical for a seed
whatever the number of worker processes.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from ortho_nnd.phantom.acquisition import Acquisition, check_size, render_acquisition, sample_acquisition
from ortho_nnd.phantom.anatomy import LABELS, Subject, draw_findings, sample_subject
from ortho_nnd.phantom.findings import FINDING_PREVALENCE, FINDING_SIGNS, FINDINGS
from ortho_nnd.phantom.grid import VIEWS

logger = logging.getLogger(__name__)

DATASET_NAME = "KneePhantom"
FILE_ENDING = ".nii.gz"
LABELLED_VIEWS = ("sagittal",)
# Probability that a training subject contributes a second exam: the other knee or a follow-up.
SECOND_EXAM_PROBABILITY = 0.3
# Among second exams, the probability that it is the contralateral knee (else a follow-up).
CONTRALATERAL_PROBABILITY = 0.5
# Name of the JSON file with every case's drawn parameters, beside dataset.json.
CASES_JSON = "phantom_cases.json"


@dataclass(frozen=True)
class ExamPlan:
    """One exam to render: the case id, its subject, the split and one acquisition per view."""

    case: str
    subject_id: str
    split: str  # "train", "test" or "unlabeled"
    subject: Subject
    acquisitions: tuple[Acquisition, ...]


def plan_exams(
    num_cases: int, num_test: int, num_unlabeled: int, seed: int, size: str = "default"
) -> list[ExamPlan]:
    """Draw all subjects, findings and acquisitions of a dataset in a fixed order."""
    for name, value in (("num_cases", num_cases), ("num_test", num_test), ("num_unlabeled", num_unlabeled)):
        if value < 0:
            raise ValueError(f"{name} must be 0 or more, got {value}.")
    check_size(size)
    rng = np.random.default_rng(seed)
    plans: list[ExamPlan] = []
    subject_counter = 0

    def new_subject_id() -> str:
        nonlocal subject_counter
        subject_counter += 1
        return f"subject_{subject_counter:04d}"

    def acquisitions(subject: Subject) -> tuple[Acquisition, ...]:
        return tuple(sample_acquisition(subject, view, rng, size) for view in VIEWS)

    # Training exams. Some subjects contribute two, which is why findings.csv has a subject column.
    while sum(plan.split == "train" for plan in plans) < num_cases:
        subject_id = new_subject_id()
        subject = sample_subject(rng)
        plans.append(ExamPlan(f"knee_{len(plans) + 1:04d}", subject_id, "train", subject, acquisitions(subject)))
        wants_second = rng.random() < SECOND_EXAM_PROBABILITY
        contralateral = rng.random() < CONTRALATERAL_PROBABILITY
        if wants_second and len(plans) < num_cases:
            second = _second_exam(subject, contralateral, rng)
            plans.append(ExamPlan(f"knee_{len(plans) + 1:04d}", subject_id, "train", second, acquisitions(second)))

    for index in range(num_test):
        subject = sample_subject(rng)
        plans.append(ExamPlan(f"test_{index + 1:04d}", new_subject_id(), "test", subject, acquisitions(subject)))
    for index in range(num_unlabeled):
        subject = sample_subject(rng)
        plans.append(
            ExamPlan(f"unlabeled_{index + 1:04d}", new_subject_id(), "unlabeled", subject, acquisitions(subject))
        )
    return plans


def _second_exam(subject: Subject, contralateral: bool, rng: np.random.Generator) -> Subject:
    """Return the other knee (independent findings) or a follow-up (same knee, effusion redrawn)."""
    findings = draw_findings(rng)
    if contralateral:
        other_side = "left" if subject.side == "right" else "right"
        return subject.with_side(other_side).with_findings(**findings)
    return subject.with_findings(joint_effusion=findings["joint_effusion"])


def generate_phantom_dataset(
    output_folder: Path,
    dataset_id: int = 999,
    num_cases: int = 24,
    num_test: int = 6,
    num_unlabeled: int = 8,
    seed: int = 0,
    size: str = "default",
    num_processes: int | None = None,
    overwrite: bool = True,
) -> Path:
    """Write ``Dataset{id:03d}_KneePhantom`` into ``output_folder`` and return its path.

    An existing phantom dataset of that name (one whose dataset.json has a "phantom" entry)
    is replaced when ``overwrite`` is true. Any other non-empty folder of that name raises
    FileExistsError so that real data is never deleted.
    """
    if not 0 <= int(dataset_id) <= 999:
        raise ValueError(f"Invalid dataset id {dataset_id}: use a number from 0 to 999.")
    dataset_folder = Path(output_folder) / f"Dataset{int(dataset_id):03d}_{DATASET_NAME}"
    _prepare_folder(dataset_folder, overwrite)

    plans = plan_exams(num_cases, num_test, num_unlabeled, seed, size)
    processes = num_processes or min(2, os.cpu_count() or 1)
    logger.info("Rendering %d exams x %d views into %s with %d process(es)", len(plans), len(VIEWS), dataset_folder,
                processes)

    if processes == 1:
        for plan in tqdm(plans, desc="phantom exams", unit="exam"):
            _render_exam(plan, dataset_folder)
    else:
        with ProcessPoolExecutor(max_workers=processes) as pool:
            futures = [pool.submit(_render_exam, plan, dataset_folder) for plan in plans]
            for future in tqdm(as_completed(futures), total=len(futures), desc="phantom exams", unit="exam"):
                future.result()

    _write_findings(dataset_folder / "findings.csv", [p for p in plans if p.split == "train"])
    if num_test:
        _write_findings(dataset_folder / "findingsTs.csv", [p for p in plans if p.split == "test"])
    _write_json(dataset_folder / "dataset.json", _dataset_json(plans, seed, size))
    _write_json(dataset_folder / CASES_JSON, _cases_json(plans))
    logger.info("Wrote phantom dataset %s", dataset_folder)
    return dataset_folder


def _prepare_folder(dataset_folder: Path, overwrite: bool) -> None:
    if dataset_folder.exists() and any(dataset_folder.iterdir()):
        dataset_json = dataset_folder / "dataset.json"
        is_phantom = False
        if dataset_json.is_file():
            try:
                is_phantom = "phantom" in json.loads(dataset_json.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                is_phantom = False
        if not (overwrite and is_phantom):
            raise FileExistsError(
                f"{dataset_folder} exists and is not empty"
                + ("" if is_phantom else " and is not a phantom dataset")
                + ". Choose another dataset id or remove the folder."
            )
        logger.info("Replacing existing phantom dataset %s", dataset_folder)
        shutil.rmtree(dataset_folder)
    dataset_folder.mkdir(parents=True, exist_ok=True)


_IMAGE_FOLDERS = {"train": "imagesTr", "test": "imagesTs", "unlabeled": "imagesUnlabeled"}
_LABEL_FOLDERS = {"train": "labelsTr", "test": "labelsTs"}


def _render_exam(plan: ExamPlan, dataset_folder: Path) -> None:
    for acquisition in plan.acquisitions:
        image, label = render_acquisition(plan.subject, acquisition)
        name = f"{plan.case}_{acquisition.view}{FILE_ENDING}"
        write_image_atomically(image, dataset_folder / _IMAGE_FOLDERS[plan.split] / name)
        if plan.split in _LABEL_FOLDERS and acquisition.view in LABELLED_VIEWS:
            write_image_atomically(label, dataset_folder / _LABEL_FOLDERS[plan.split] / name)


def write_image_atomically(image: sitk.Image, path: Path) -> None:
    """Write an image to a temporary name in the same folder, then rename it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name keeps the extension so that SimpleITK picks the same writer.
    temporary = path.with_name(f".tmp_{os.getpid()}_{path.name}")
    sitk.WriteImage(image, str(temporary), useCompression=True)
    os.replace(temporary, path)


def _write_findings(path: Path, plans: list[ExamPlan]) -> None:
    temporary = path.with_name(f".tmp_{path.name}")
    with temporary.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", "subject", *FINDINGS])
        for plan in plans:
            writer.writerow([plan.case, plan.subject_id, *(int(plan.subject.findings[name]) for name in FINDINGS)])
    os.replace(temporary, path)


def _write_json(path: Path, content: dict) -> None:
    temporary = path.with_name(f".tmp_{path.name}")
    temporary.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _dataset_json(plans: list[ExamPlan], seed: int, size: str) -> dict:
    return {
        "name": DATASET_NAME,
        "description": "Synthetic knee MRI phantom: 11 labelled structures, 8 findings, sagittal PD fat-suppressed, "
                       "coronal T1 and axial T2 fat-suppressed acquisitions with thick oblique slices. "
                       "Generated by ortho_make_demo_dataset.",
        "views": list(VIEWS),
        "labelled_views": list(LABELLED_VIEWS),
        "labels": dict(LABELS),
        "findings": list(FINDINGS),
        "file_ending": FILE_ENDING,
        "numTraining": sum(plan.split == "train" for plan in plans),
        "numTest": sum(plan.split == "test" for plan in plans),
        "numUnlabeled": sum(plan.split == "unlabeled" for plan in plans),
        "findings_signs": dict(FINDING_SIGNS),
        "findings_prevalence": dict(FINDING_PREVALENCE),
        "phantom": {"seed": int(seed), "size": size},
    }


def _cases_json(plans: list[ExamPlan]) -> dict:
    cases = {}
    for plan in plans:
        cases[plan.case] = {
            "subject_id": plan.subject_id,
            "split": plan.split,
            "subject": asdict(plan.subject),
            "acquisitions": {acquisition.view: asdict(acquisition) for acquisition in plan.acquisitions},
        }
    return cases
