"""Exam batches for multi-view classification: one whole preprocessed scan per view.

Public API:

- ``ExamDataset(view_folders, input_sizes, findings)``: the views of each exam (case) and its
  finding vector (0, 1 or NaN = not annotated). A case may lack a view; it needs at least one.
- ``ExamDataset.load_exam(case, rng=None, mirror_axes=None)`` returns ``{view: (1, *size) array or
  None}``. Without ``rng`` each scan is centre-cropped or padded to the view's input size; with
  ``rng`` the crop position is random (and each mirror axis of the view flips with p = 0.5).
- ``ExamBatchIterator(dataset, cases, batch_size, seed, ...)``: infinite iterator of training
  batches ``{"images": {view: (B, 1, *size) tensor}, "present": {view: (B,) bool}, "labels":
  (B, K) float with NaN, "keys": [...]}``. Batch ``k`` of rank ``r`` is drawn only from
  ``numpy.random.default_rng([seed, r, k])``, so a continued run receives the same batches.
- ``collate_exams(exams, views)`` builds the ``images`` and ``present`` entries.

Input size rule: each view uses its planned ``patch_size``, which the planner chose to fit the
network's strides and the memory target. Larger scans are cropped (around their centre at
evaluation, at a random position during training). Smaller ones are padded with 0, the mean
intensity after z-score normalisation.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ortho_nnd.training.data import PreprocessedDataset, crop_with_padding, list_preprocessed_cases

logger = logging.getLogger(__name__)

# Intensity outside the scan (the mean after z-score normalisation).
PAD_VALUE = 0.0


def centre_crop_start(shape: Sequence[int], size: Sequence[int]) -> list[int]:
    """Return the start of a window of ``size`` centred on an array of ``shape`` (negative = pad)."""
    return [(extent - window) // 2 for extent, window in zip(shape, size)]


def random_crop_start(shape: Sequence[int], size: Sequence[int], rng: np.random.Generator) -> list[int]:
    """Return a random window start: inside the scan when it is larger, a random padding split otherwise."""
    starts = []
    for extent, window in zip(shape, size):
        low, high = min(0, extent - window), max(0, extent - window)
        starts.append(int(rng.integers(low, high + 1)))
    return starts


class ExamDataset:
    """Scans of several views per case plus the case's findings."""

    def __init__(
        self,
        view_folders: Mapping[str, Path],
        input_sizes: Mapping[str, Sequence[int]],
        findings: Mapping[str, Sequence[float]],
        cases: Sequence[str] | None = None,
    ) -> None:
        self.views = list(view_folders)
        self.input_sizes = {view: [int(v) for v in input_sizes[view]] for view in self.views}
        self.view_datasets: dict[str, PreprocessedDataset | None] = {}
        available: dict[str, set[str]] = {}
        for view, folder in view_folders.items():
            folder = Path(folder)
            names = set(list_preprocessed_cases(folder)) if folder.is_dir() else set()
            available[view] = names
            self.view_datasets[view] = PreprocessedDataset(folder, sorted(names)) if names else None

        self.cases = sorted(cases if cases is not None else findings)
        without_views = [case for case in self.cases if not any(case in available[view] for view in self.views)]
        if without_views:
            raise FileNotFoundError(
                f"Cases {without_views[:10]} have findings but no preprocessed scan in any view ({self.views}). "
                "Preprocess them or remove them from findings.csv."
            )
        self.available = available
        self.findings = {case: np.asarray(findings[case], dtype=np.float32) for case in self.cases}

    def has_view(self, case: str, view: str) -> bool:
        return case in self.available[view]

    def labels(self, cases: Sequence[str]) -> np.ndarray:
        return np.stack([self.findings[case] for case in cases])

    def load_exam(
        self, case: str, rng: np.random.Generator | None = None, mirror_axes: Mapping[str, Sequence[int]] | None = None
    ) -> dict[str, np.ndarray | None]:
        exam: dict[str, np.ndarray | None] = {}
        for view in self.views:
            if not self.has_view(case, view):
                exam[view] = None
                continue
            data, _, _ = self.view_datasets[view].load_case(case, load_segmentation=False)
            size = self.input_sizes[view]
            start = centre_crop_start(data.shape[1:], size) if rng is None else random_crop_start(data.shape[1:], size, rng)
            scan = crop_with_padding(data, start, size, PAD_VALUE).astype(np.float32)
            if rng is not None and mirror_axes is not None:
                for axis in mirror_axes.get(view, []):
                    if rng.random() < 0.5:
                        scan = np.flip(scan, axis=int(axis) + 1)
            exam[view] = np.ascontiguousarray(scan)
        return exam


def collate_exams(exams: Sequence[Mapping[str, np.ndarray | None]], views: Sequence[str], input_sizes: Mapping[str, Sequence[int]]):
    """Stack exams into ``images`` ({view: tensor or None}) and ``present`` ({view: (B,) bool})."""
    images: dict[str, torch.Tensor | None] = {}
    present: dict[str, torch.Tensor] = {}
    for view in views:
        mask = [exam[view] is not None for exam in exams]
        present[view] = torch.tensor(mask, dtype=torch.bool)
        if not any(mask):
            images[view] = None
            continue
        # Absent samples get a zero array; the classifier ignores their rows.
        empty = np.zeros((1, *input_sizes[view]), dtype=np.float32)
        images[view] = torch.from_numpy(np.stack([exam[view] if exam[view] is not None else empty for exam in exams]))
    return images, present


class ExamBatchIterator:
    """Infinite, reproducible iterator of random training batches of exams."""

    def __init__(
        self,
        dataset: ExamDataset,
        cases: Sequence[str],
        batch_size: int,
        seed: int,
        rank: int = 0,
        start_iteration: int = 0,
        mirror_axes: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        if not cases:
            raise ValueError("No training cases with findings for classification.")
        if batch_size < 1:
            raise ValueError(f"Invalid batch size {batch_size}: must be at least 1.")
        self.dataset = dataset
        self.cases = list(cases)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.batch_index = int(start_iteration)
        self.mirror_axes = mirror_axes

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, self.rank, self.batch_index])
        self.batch_index += 1
        keys = [self.cases[i] for i in rng.integers(len(self.cases), size=self.batch_size)]
        exams = [self.dataset.load_exam(case, rng, self.mirror_axes) for case in keys]
        images, present = collate_exams(exams, self.dataset.views, self.dataset.input_sizes)
        return {"images": images, "present": present, "labels": torch.from_numpy(self.dataset.labels(keys)), "keys": keys}


def positive_weights(labels: np.ndarray) -> np.ndarray:
    """Return neg/pos per finding over annotated values (1 where a finding has no positive or no negative)."""
    weights = np.ones(labels.shape[1], dtype=np.float32)
    for column in range(labels.shape[1]):
        annotated = labels[np.isfinite(labels[:, column]), column]
        positives = float((annotated > 0.5).sum())
        negatives = float(annotated.size - positives)
        if positives > 0 and negatives > 0:
            weights[column] = negatives / positives
    return weights


def has_annotation(values: Sequence[float]) -> bool:
    return any(not math.isnan(float(value)) for value in values)
