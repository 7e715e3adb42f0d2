"""Preprocessing of a whole dataset: one task per scan, worker processes, resumable.

Outputs per view go to ``ORTHO_preprocessed/DatasetXXX/{data_identifier}/`` (imagesTr and
imagesUnlabeled) or ``{data_identifier}_imagesTs/``. A case is finished when its properties JSON
exists: arrays are written first and the JSON last, each through a temporary file and a rename,
so an interrupted run never leaves a case that looks complete. Cases whose JSON carries the
current plans identifier are skipped on the next run.
"""
from __future__ import annotations

import json
import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ortho_nnd import io
from ortho_nnd.atomic_files import atomic_output
from ortho_nnd.dataset import RawDataset, save_json
from ortho_nnd.preprocessing.preprocessor import preprocess_scan, plans_identifier

logger = logging.getLogger(__name__)

TRAINING_SOURCES = ("imagesTr", "imagesUnlabeled")


@dataclass
class PreprocessTask:
    case: str
    view: str
    source: str
    image: str
    label: str | None
    view_plans: dict
    label_values: list[int]
    output_folder: str


def output_folder_for(preprocessed_dataset_folder: Path, view_plans: dict, source: str) -> Path:
    suffix = "_imagesTs" if source == "imagesTs" else ""
    return Path(preprocessed_dataset_folder) / f"{view_plans['data_identifier']}{suffix}"


def save_array_atomic(array: np.ndarray, path: Path) -> None:
    with atomic_output(path, "wb") as stream:
        np.save(stream, array)


def is_done(output_folder: Path, case: str, identifier: str) -> bool:
    properties_file = output_folder / f"{case}.json"
    if not properties_file.is_file() or not (output_folder / f"{case}.npy").is_file():
        return False
    try:
        with open(properties_file, encoding="utf-8") as handle:
            return json.load(handle).get("plans_identifier") == identifier
    except (json.JSONDecodeError, OSError):
        return False


def run_task(task: PreprocessTask) -> tuple[str, str | None]:
    """Preprocess one scan; return (description, error message or None)."""
    description = f"{task.case}_{task.view} ({task.source})"
    try:
        image = io.read_image(task.image)
        label = io.read_image(task.label) if task.label else None
        result = preprocess_scan(
            image, task.view_plans, task.view, task.case, task.source, label,
            set(task.label_values) if task.label_values else None, task.image, task.label or "<label>",
        )
        folder = Path(task.output_folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_array_atomic(result.data, folder / f"{task.case}.npy")
        if result.seg is not None:
            save_array_atomic(result.seg[None], folder / f"{task.case}_seg.npy")
        save_json(result.properties, folder / f"{task.case}.json")
        return description, None
    except (ValueError, RuntimeError, OSError) as error:
        return description, f"{task.image}: {error}"


def build_tasks(dataset: RawDataset, plans: dict, preprocessed_dataset_folder: Path, views: list[str] | None, sources: tuple[str, ...], overwrite: bool, num_parts: int = 1, part_id: int = 0) -> tuple[list[PreprocessTask], int]:
    """Return this part's tasks still to do and the number of its scans skipped as already done.

    Scans are split into parts before finished ones are skipped, so each part keeps the same scans
    however far the other parts have got.
    """
    tasks, skipped, index = [], 0, -1
    label_values = sorted(set(dataset.labels.values()))
    for view, view_plan in plans["views"].items():
        if views and view not in views:
            continue
        identifier = plans_identifier({**view_plan, "view": view})
        for entry in dataset.scans_of(view, sources):
            index += 1
            if index % num_parts != part_id:
                continue
            folder = output_folder_for(preprocessed_dataset_folder, view_plan, entry.source)
            if not overwrite and is_done(folder, entry.case, identifier):
                skipped += 1
                continue
            tasks.append(PreprocessTask(
                entry.case, view, entry.source, str(entry.image), str(entry.label) if entry.label else None,
                view_plan, label_values, str(folder),
            ))
    return tasks, skipped


def preprocess_dataset(
    dataset: RawDataset,
    plans: dict,
    preprocessed_dataset_folder: Path,
    views: list[str] | None = None,
    sources: tuple[str, ...] = TRAINING_SOURCES,
    num_processes: int = 1,
    num_parts: int = 1,
    part_id: int = 0,
    overwrite: bool = False,
) -> list[str]:
    """Preprocess the scans of ``dataset``; return the failure messages (empty when all succeeded)."""
    if not 0 <= part_id < num_parts:
        raise ValueError(f"--part_id {part_id} must be in [0, {num_parts}) for --num_parts {num_parts}.")

    tasks, skipped = build_tasks(dataset, plans, preprocessed_dataset_folder, views, sources, overwrite, num_parts, part_id)
    if skipped:
        logger.info("Skipping %d scans already preprocessed with the same plans.", skipped)
    logger.info("Preprocessing %d scans with %d process(es).", len(tasks), num_processes)

    if num_processes > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=num_processes) as pool:
            results = list(tqdm(pool.map(run_task, tasks), total=len(tasks), desc="Preprocess", unit="scan"))
    else:
        results = [run_task(task) for task in tqdm(tasks, desc="Preprocess", unit="scan")]

    failures = [error for _, error in results if error]
    for message in failures:
        logger.error("Preprocessing failed: %s", message)
    return failures
