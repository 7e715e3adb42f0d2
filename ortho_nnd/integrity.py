"""Dataset integrity checks that report every problem at once (``--verify_dataset_integrity``)."""
from __future__ import annotations

import logging
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from ortho_nnd import io
from ortho_nnd.dataset import DatasetFormatError, RawDataset, ScanEntry, read_findings_csv
from ortho_nnd.geometry import check_declared_view
from ortho_nnd.preprocessing.preprocessor import check_image_values, check_label

logger = logging.getLogger(__name__)


class DatasetIntegrityError(ValueError):
    """Raised with the full list of problems found in a dataset."""

    def __init__(self, dataset_folder: Path, problems: list[str]):
        self.problems = problems
        listing = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"Dataset {dataset_folder} has {len(problems)} problem(s):\n{listing}")


def check_scan(entry: ScanEntry, label_values: set[int]) -> list[str]:
    """Check one scan (and its label map); return the problems found, each naming the file."""
    problems = []
    try:
        image = io.read_image(entry.image)
        check_declared_view(image, entry.view, str(entry.image))
        check_image_values(sitk.GetArrayViewFromImage(image).astype(np.float32), str(entry.image))
        if entry.label is not None:
            check_label(io.read_image(entry.label), image, label_values, str(entry.label), str(entry.image))
    except (ValueError, RuntimeError) as error:
        problems.append(str(error))
    return problems


def _check_scan_task(task: tuple[ScanEntry, set[int]]) -> list[str]:
    return check_scan(*task)


def verify_dataset_integrity(dataset: RawDataset, num_processes: int = 1) -> None:
    """Check every file of ``dataset``; raise DatasetIntegrityError listing all problems."""
    problems: list[str] = []
    label_values = set(dataset.labels.values()) if dataset.labels else set()

    files_per_scan: dict[tuple[str, str], list[str]] = {}
    for scan in dataset.scans_of(sources=("imagesTr", "imagesUnlabeled")):
        files_per_scan.setdefault((scan.case, scan.view), []).append(f"{scan.source}/{scan.image.name}")
    problems += [
        f"Case {case} view {view} has several scans: {', '.join(files)}. Keep one, or rename the others."
        for (case, view), files in files_per_scan.items() if len(files) > 1
    ]

    for entry in dataset.scans_of(sources=("imagesTr",)):
        if entry.view in dataset.labelled_views and entry.label is None:
            problems.append(f"{entry.image} has no label map in labelsTr (expected {entry.case}_{entry.view}{dataset.file_ending}).")
    label_stems = {io.strip_file_ending(p.name) for p in io.find_images(dataset.folder / "labelsTr")}
    used_stems = {io.strip_file_ending(s.label.name) for s in dataset.scans_of(sources=("imagesTr",)) if s.label is not None}
    for stem in sorted(label_stems - used_stems):
        problems.append(
            f"labelsTr/{stem} has no matching image in imagesTr, or its view is not in labelled_views "
            f"{dataset.labelled_views}. Remove it or fix the name."
        )
    if dataset.labelled_views and not dataset.labels:
        problems.append(f"dataset.json in {dataset.folder} declares labelled views {dataset.labelled_views} but no 'labels'.")

    findings_path = dataset.folder / "findings.csv"
    if findings_path.is_file():
        try:
            table = read_findings_csv(findings_path, dataset.findings or None)
            training_cases = set(dataset.cases(("imagesTr",)))
            unknown = sorted(set(table.values) - training_cases)
            if unknown:
                problems.append(f"{findings_path} lists cases without scans in imagesTr: {unknown[:10]}{' ...' if len(unknown) > 10 else ''}.")
        except (DatasetFormatError, FileNotFoundError) as error:
            problems.append(str(error))
    elif dataset.findings:
        problems.append(f"dataset.json declares findings {dataset.findings} but {findings_path} is missing.")

    tasks = [(entry, label_values) for entry in dataset.scans]
    if num_processes > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=num_processes) as pool:
            results = list(tqdm(pool.map(_check_scan_task, tasks), total=len(tasks), desc="Integrity", unit="scan"))
    else:
        results = [_check_scan_task(task) for task in tqdm(tasks, desc="Integrity", unit="scan")]
    for result in results:
        problems.extend(result)

    if problems:
        raise DatasetIntegrityError(dataset.folder, problems)
    logger.info("Dataset %s passed the integrity checks (%d scans).", dataset.folder.name, len(dataset.scans))
