"""Reading preprocessed cases and sampling training patches.

Public API:

- ``list_preprocessed_cases(folder, sources=None) -> list[str]``: sorted case ids in a
  ``{plans_name}_{view}`` folder, optionally only those whose properties ``source`` is in
  ``sources`` (for example ``{"imagesTr", "imagesUnlabeled"}``).
- ``PreprocessedDataset(folder, case_ids=None)``: ``load_case(case_id) -> (data, seg, properties)``
  with ``data`` a read-only memory map of shape (1, Z, Y, X), ``seg`` the same for
  ``{case}_seg.npy`` or None, and ``properties`` the parsed ``{case}.json``.
- ``shard_case_ids(case_ids, rank, world_size)``: rank r takes ``case_ids[r::world_size]``.
- ``PatchDataLoader(dataset, patch_size, batch_size, ...)``: a batchgenerators
  ``SlimDataLoaderBase`` that returns batch dicts ``{"data": (B, 1, *patch) float32 tensor,
  "target": (B, 1, *patch) int16 tensor (only when loading labels), "keys": [case ids]}``.
- ``MirrorAugmentation(mirror_axes)``: flips each sample along each of the given spatial axes
  with probability 0.5, on ``data`` and ``target`` alike.
- ``make_batch_iterator(loader, num_workers, transform=None, seed=0, deterministic=False, pin_memory=False)``
  returns an infinite iterator of batches. It runs in-process for ``num_workers=0`` and through
  batchgenerators' background workers otherwise. ``transform(**batch) -> batch`` runs on each
  batch (in the workers, if any). Call ``close_batch_iterator(iterator)`` when done.

Reproducibility: batch number ``k`` (counted from 0 over the whole run, across workers) of rank
``r`` is drawn only from ``numpy.random.default_rng([seed, r, k])``, including case choice, crop
position and ``augment``. A run continued at iteration ``k`` with ``start_iteration=k`` therefore
receives the same batches as an uninterrupted run, provided the workers deliver batches in
order (``deterministic=True`` uses the ordered ``MultiThreadedAugmenter``; ``num_workers=0``
is always ordered). Transforms passed as ``transform`` use their own random state and are not
covered by this guarantee.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from batchgenerators.dataloading.data_loader import SlimDataLoaderBase

logger = logging.getLogger(__name__)

SEGMENTATION_SUFFIX = "_seg"

# Batches each background worker prepares ahead of the training loop.
BATCHES_CACHED_PER_WORKER = 2
# Spacing between the worker seeds of consecutive ranks, so no two workers share a seed for up
# to this many workers per rank.
MAX_WORKERS_PER_RANK = 100
# Odd multiplier that separates the worker seeds of different --seed values.
SEED_MULTIPLIER = 1_000_003


def _is_image_array(path: Path) -> bool:
    return path.suffix == ".npy" and not path.stem.endswith(SEGMENTATION_SUFFIX)


def read_properties(folder: Path, case_id: str) -> dict[str, Any]:
    path = folder / f"{case_id}.json"
    if not path.is_file():
        raise FileNotFoundError(f"Properties file {path} is missing for case {case_id!r}. Rerun preprocessing for this view.")
    try:
        with open(path, encoding="utf-8") as stream:
            return json.load(stream)
    except json.JSONDecodeError as error:
        raise ValueError(f"Invalid JSON in {path}: {error}. Rerun preprocessing for this view.") from error


def list_preprocessed_cases(folder: str | os.PathLike, sources: Iterable[str] | None = None) -> list[str]:
    """Return the sorted case ids in a preprocessed view folder, filtered by properties ``source``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Preprocessed folder {folder} does not exist. Run ortho_plan_and_preprocess for this dataset first."
        )

    case_ids = sorted(path.stem for path in folder.iterdir() if _is_image_array(path))
    if sources is None:
        return case_ids

    requested_sources = set(sources)
    return [case_id for case_id in case_ids if read_properties(folder, case_id).get("source") in requested_sources]


def shard_case_ids(case_ids: Sequence[str], rank: int, world_size: int) -> list[str]:
    """Return the cases of ``rank``: ``case_ids[rank::world_size]``.

    With fewer cases than ranks, rank r takes case ``r % len(case_ids)`` so that no rank is idle.
    Some cases are then seen more often than others, and a warning is logged.
    """
    if not case_ids:
        raise ValueError("No cases to shard: the case list is empty.")
    if not 0 <= rank < world_size:
        raise ValueError(f"Invalid rank {rank} for world size {world_size}.")

    shard = list(case_ids[rank::world_size])
    if not shard:
        shard = [case_ids[rank % len(case_ids)]]
        logger.warning(
            "Only %d cases for %d ranks; rank %d reuses case %s.", len(case_ids), world_size, rank, shard[0]
        )
    return shard


class PreprocessedDataset:
    """Cases of one ``{plans_name}_{view}`` folder, read lazily with memory maps."""

    def __init__(self, folder: str | os.PathLike, case_ids: Sequence[str] | None = None) -> None:
        self.folder = Path(folder)
        available = list_preprocessed_cases(self.folder)
        if case_ids is None:
            case_ids = available
        missing = sorted(set(case_ids) - set(available))
        if missing:
            raise FileNotFoundError(
                f"Cases {missing[:10]} (of {len(missing)} missing) have no .npy file in {self.folder}. "
                "Rerun preprocessing or fix the case list (for example splits_final.json)."
            )
        if len(case_ids) == 0:
            raise ValueError(f"No preprocessed cases in {self.folder}. Run ortho_plan_and_preprocess first.")
        self.case_ids = list(case_ids)
        self._properties: dict[str, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.case_ids)

    def properties(self, case_id: str) -> dict[str, Any]:
        if case_id not in self._properties:
            self._properties[case_id] = read_properties(self.folder, case_id)
        return self._properties[case_id]

    def has_segmentation(self, case_id: str) -> bool:
        return (self.folder / f"{case_id}{SEGMENTATION_SUFFIX}.npy").is_file()

    def load_case(self, case_id: str, load_segmentation: bool = True) -> tuple[np.ndarray, np.ndarray | None, dict]:
        """Return ``(data, seg, properties)``; arrays are read-only memory maps of shape (1, Z, Y, X)."""
        data = np.load(self.folder / f"{case_id}.npy", mmap_mode="r")
        if data.ndim != 4:
            raise ValueError(
                f"Invalid array shape {data.shape} in {self.folder / (case_id + '.npy')}: expected (1, Z, Y, X)."
            )

        seg = None
        if load_segmentation and self.has_segmentation(case_id):
            seg = np.load(self.folder / f"{case_id}{SEGMENTATION_SUFFIX}.npy", mmap_mode="r")
            if seg.shape[1:] != data.shape[1:]:
                raise ValueError(
                    f"Segmentation of case {case_id!r} in {self.folder} has shape {seg.shape}, image has {data.shape}. "
                    "Rerun preprocessing for this case."
                )
        return data, seg, self.properties(case_id)


def _crop_start_range(shape: Sequence[int], patch_size: Sequence[int]) -> tuple[list[int], list[int]]:
    """Return per-axis lowest and highest crop start; negative starts mean padding before the scan."""
    lowest, highest = [], []
    for size, patch in zip(shape, patch_size):
        padding = max(patch - size, 0)
        # Center the scan in the patch when the scan is smaller than the patch, with random shift.
        lowest.append(-(padding // 2))
        highest.append(size + padding // 2 + padding % 2 - patch)
    return lowest, highest


def crop_with_padding(array: np.ndarray, start: Sequence[int], patch_size: Sequence[int], pad_value: float) -> np.ndarray:
    """Copy ``array[:, start:start+patch]`` (channel axis first) and pad where the window leaves the array."""
    spatial_shape = array.shape[1:]
    source, padding = [slice(None)], [(0, 0)]
    for begin, patch, size in zip(start, patch_size, spatial_shape):
        end = begin + patch
        source.append(slice(max(begin, 0), min(end, size)))
        padding.append((max(-begin, 0), max(end - size, 0)))

    cropped = np.asarray(array[tuple(source)])
    if any(before or after for before, after in padding):
        cropped = np.pad(cropped, padding, mode="constant", constant_values=pad_value)
    return cropped


class MirrorAugmentation:
    """Random flips along spatial axes of the canonical array (0 = Z, 1 = Y, 2 = X), p = 0.5 each."""

    def __init__(self, mirror_axes: Sequence[int]) -> None:
        for axis in mirror_axes:
            if axis not in (0, 1, 2):
                raise ValueError(f"Invalid mirror axis {axis}: spatial axes are 0, 1 and 2.")
        self.mirror_axes = tuple(int(axis) for axis in mirror_axes)

    def __call__(self, batch: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        for sample in range(batch["data"].shape[0]):
            # Batch tensors are (B, C, Z, Y, X), so spatial axis a is tensor axis a + 1 of a sample.
            flip_dims = [axis + 1 for axis in self.mirror_axes if rng.random() < 0.5]
            if not flip_dims:
                continue
            batch["data"][sample] = torch.flip(batch["data"][sample], flip_dims)
            if batch.get("target") is not None:
                batch["target"][sample] = torch.flip(batch["target"][sample], flip_dims)
        return batch


class PatchDataLoader(SlimDataLoaderBase):
    """Random patches from preprocessed cases, one reproducible batch per call."""

    def __init__(
        self,
        dataset: PreprocessedDataset,
        patch_size: Sequence[int],
        batch_size: int,
        *,
        foreground_probability: float = 0.0,
        load_target: bool = False,
        augment: Callable[[dict[str, Any], np.random.Generator], dict[str, Any]] | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_iteration: int = 0,
        num_workers: int = 0,
        data_pad_value: float = 0.0,
        target_pad_value: int = 0,
    ) -> None:
        """
        foreground_probability: chance that a sample is centred on a voxel from the case's
            ``class_locations`` (a random present label, then a random stored voxel). Cases
            without stored locations fall back to a uniform crop.
        augment: ``augment(batch, rng) -> batch``, run on each batch with the batch's generator.
        start_iteration: number of batches already consumed (for continued runs).
        num_workers: background workers that will run this loader (0 = in-process); batch numbers
            interleave across workers, so it must match ``make_batch_iterator``.
        data_pad_value: image value outside the scan (0 is the mean after z-score normalisation).
        target_pad_value: label outside the scan (0 = background).
        """
        if len(patch_size) != 3 or any(int(p) < 1 for p in patch_size):
            raise ValueError(f"Invalid patch_size {list(patch_size)}: expected three positive integers.")
        if batch_size < 1:
            raise ValueError(f"Invalid batch_size {batch_size}: must be at least 1.")
        if not 0.0 <= foreground_probability <= 1.0:
            raise ValueError(f"Invalid foreground_probability {foreground_probability}: must be in [0, 1].")

        shard = shard_case_ids(dataset.case_ids, rank, world_size)
        super().__init__(shard, batch_size, number_of_threads_in_multithreaded=max(num_workers, 1))
        self.dataset = dataset
        self.case_ids = shard
        self.patch_size = tuple(int(p) for p in patch_size)
        self.foreground_probability = float(foreground_probability)
        self.load_target = load_target
        self.augment = augment
        self.seed = int(seed)
        self.rank = int(rank)
        self.start_iteration = int(start_iteration)
        self.data_pad_value = data_pad_value
        self.target_pad_value = target_pad_value
        self.generated_batches = 0

    def batch_index(self) -> int:
        """Global number of the next batch this (worker's copy of the) loader generates."""
        return self.start_iteration + self.generated_batches * self.number_of_threads_in_multithreaded + self.thread_id

    def _crop_start(self, shape: Sequence[int], properties: dict, rng: np.random.Generator) -> list[int]:
        lowest, highest = _crop_start_range(shape, self.patch_size)

        locations = properties.get("class_locations") or {}
        present = [label for label, voxels in locations.items() if voxels is not None and len(voxels) > 0]
        if present and rng.random() < self.foreground_probability:
            label = present[rng.integers(len(present))]
            voxels = locations[label]
            # Stored indices may carry a leading channel index (nnU-Net style); use the last three.
            voxel = voxels[rng.integers(len(voxels))][-3:]
            return [
                int(np.clip(center - patch // 2, low, high))
                for center, patch, low, high in zip(voxel, self.patch_size, lowest, highest)
            ]

        return [int(rng.integers(low, high + 1)) for low, high in zip(lowest, highest)]

    def generate_train_batch(self) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, self.rank, self.batch_index()])
        self.generated_batches += 1

        keys = [self.case_ids[i] for i in rng.integers(len(self.case_ids), size=self.batch_size)]
        images, targets = [], []
        for case_id in keys:
            data, seg, properties = self.dataset.load_case(case_id, load_segmentation=self.load_target)
            start = self._crop_start(data.shape[1:], properties, rng)
            images.append(crop_with_padding(data, start, self.patch_size, self.data_pad_value).astype(np.float32))

            if self.load_target:
                if seg is None:
                    raise FileNotFoundError(
                        f"Case {case_id!r} has no {case_id}{SEGMENTATION_SUFFIX}.npy in {self.dataset.folder}, "
                        "but labels were requested. Train only on labelled cases or rerun preprocessing."
                    )
                targets.append(crop_with_padding(seg, start, self.patch_size, self.target_pad_value).astype(np.int16))

        batch: dict[str, Any] = {"data": torch.from_numpy(np.stack(images)), "keys": keys}
        if self.load_target:
            batch["target"] = torch.from_numpy(np.stack(targets))
        if self.augment is not None:
            batch = self.augment(batch, rng)
        return batch


class _InProcessIterator:
    def __init__(self, loader: PatchDataLoader, transform: Callable | None) -> None:
        self.loader = loader
        self.transform = transform

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        batch = self.loader.generate_train_batch()
        if self.transform is not None:
            batch = self.transform(**batch)
        return batch


def make_batch_iterator(
    loader: PatchDataLoader,
    num_workers: int,
    transform: Callable | None = None,
    seed: int = 0,
    deterministic: bool = False,
    pin_memory: bool = False,
) -> Iterator[dict[str, Any]]:
    """Return an infinite batch iterator: in-process for ``num_workers=0``, background workers otherwise."""
    if num_workers < 0:
        raise ValueError(f"Invalid num_workers {num_workers}: must be 0 (in-process) or more.")
    if num_workers != loader.number_of_threads_in_multithreaded and num_workers > 0:
        raise ValueError(
            f"num_workers={num_workers} but the loader was built for {loader.number_of_threads_in_multithreaded}; "
            "pass the same num_workers to PatchDataLoader."
        )
    if num_workers == 0:
        return _InProcessIterator(loader, transform)

    # Each worker seeds the global NumPy/torch generators used by `transform`.
    if num_workers > MAX_WORKERS_PER_RANK:
        raise ValueError(f"Invalid num_workers {num_workers}: at most {MAX_WORKERS_PER_RANK} workers per process are supported.")
    first_seed = (seed * SEED_MULTIPLIER + loader.rank) * MAX_WORKERS_PER_RANK
    worker_seeds = [(first_seed + worker) % 2**32 for worker in range(num_workers)]
    if deterministic:
        from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter

        return MultiThreadedAugmenter(
            loader, transform, num_workers, BATCHES_CACHED_PER_WORKER, seeds=worker_seeds, pin_memory=pin_memory
        )

    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter

    return NonDetMultiThreadedAugmenter(
        loader, transform, num_workers, BATCHES_CACHED_PER_WORKER * num_workers, seeds=worker_seeds, pin_memory=pin_memory
    )


def close_batch_iterator(iterator: Iterator) -> None:
    """Stop background workers of an iterator from ``make_batch_iterator`` (no-op in-process)."""
    finish = getattr(iterator, "_finish", None)
    if finish is not None:
        finish()
