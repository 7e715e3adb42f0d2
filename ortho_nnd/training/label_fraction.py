"""Label-fraction subsets and the output-folder names of fine-tuning runs.

Public API:

- ``subset_size(num_cases, fraction) -> int``: ``max(1, round(fraction * num_cases))``.
- ``select_label_subset(train_cases, fraction, fold, seed, strata=None) -> list[str]``: a seeded,
  stratified subset that depends only on the case list, the strata, the fold, the fraction and
  the seed. Pretrained and scratch runs of the same fold therefore train on the same cases.
- ``run_folder_name(task_name, label_fraction, scratch) -> str``: ``seg_sagittal`` plus
  ``_lf{fraction}`` when the fraction is below 1 and ``_scratch`` for random initialisation,
  for example ``seg_sagittal_lf0.1_scratch``, so that such runs never overwrite each other.

Stratification: every case has a stratum key (for example the set of its positive findings).
Within each stratum the cases are shuffled, and case number ``i`` of a stratum of size ``n``
gets the position ``(i + u) / n`` with one uniform offset ``u`` per stratum. Taking the cases
with the lowest positions gives every stratum a share close to its share of the whole list.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Hashable, Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)

LABEL_SUBSET_FILE = "label_subset.json"


def check_fraction(fraction: float) -> float:
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0.0 < fraction <= 1.0:
        raise ValueError(f"Invalid --label_fraction {fraction!r}: must be a number in (0, 1], for example 0.1.")
    return float(fraction)


def subset_size(num_cases: int, fraction: float) -> int:
    """Return the number of cases that ``fraction`` keeps: at least 1, at most ``num_cases``."""
    check_fraction(fraction)
    if num_cases < 1:
        raise ValueError("Cannot take a label fraction of an empty case list.")
    return min(num_cases, max(1, round(fraction * num_cases)))


def _subset_seed(seed: int, fold: int | None, fraction: float) -> list[int]:
    # A digest of the fraction's text keeps 0.1 and 0.10000001 apart without float hashing surprises.
    fraction_digest = int(hashlib.sha256(repr(float(fraction)).encode()).hexdigest()[:8], 16)
    return [int(seed), -1 if fold is None else int(fold) + 1, fraction_digest]


def select_label_subset(
    train_cases: Sequence[str],
    fraction: float,
    fold: int | None,
    seed: int,
    strata: Mapping[str, Hashable] | None = None,
) -> list[str]:
    """Return the sorted cases whose labels a ``fraction`` run uses (all cases for fraction 1)."""
    cases = sorted(set(train_cases))
    count = subset_size(len(cases), fraction)
    if count == len(cases):
        return cases

    rng = np.random.default_rng(_subset_seed(seed, fold, fraction))
    by_stratum: dict[str, list[str]] = {}
    for case in cases:
        key = repr((strata or {}).get(case))
        by_stratum.setdefault(key, []).append(case)

    positions: list[tuple[float, float, str]] = []
    for key in sorted(by_stratum):
        members = [by_stratum[key][i] for i in rng.permutation(len(by_stratum[key]))]
        offset = rng.random()
        for index, case in enumerate(members):
            # Second key: a random tie-breaker between strata with equal positions.
            positions.append(((index + offset) / len(members), rng.random(), case))

    positions.sort()
    chosen = sorted(case for _, _, case in positions[:count])
    logger.info("Label fraction %g: %d of %d training cases (fold %s, seed %d)", fraction, count, len(cases), fold, seed)
    return chosen


def fraction_tag(fraction: float) -> str:
    """Return the text of a fraction for folder names: 0.1 -> '0.1', 0.25 -> '0.25'."""
    return f"{float(fraction):g}"


def run_folder_name(task_name: str, label_fraction: float | None, scratch: bool) -> str:
    """Return the run folder name, e.g. ``seg_sagittal``, ``cls_lf0.1`` or ``seg_axial_lf0.5_scratch``."""
    name = task_name
    if label_fraction is not None and check_fraction(label_fraction) < 1.0:
        name += f"_lf{fraction_tag(label_fraction)}"
    if scratch:
        name += "_scratch"
    return name
