"""Statistics and table formatting of the ortho_nnd versus nnU-Net benchmark.

Each measured quantity becomes a ``Measurement``: the median of its repeats with the minimum and
maximum (or, for many samples such as training iterations, the interquartile range). A ``Row``
contains one quantity for both tools and their ratio ortho_nnd / nnU-Net, or the reason it is missing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

# Above this many samples the spread is the interquartile range instead of min-max, because single
# outliers (a checkpoint write, an epoch boundary) dominate the extremes of long series.
IQR_SAMPLE_THRESHOLD = 10
BYTES_PER_MIB = 1024 ** 2


@dataclass(frozen=True)
class Measurement:
    """Median of repeated samples with their spread."""

    median: float
    low: float
    high: float
    count: int
    spread: str  # "min-max", "IQR" or "single"


def summarize(samples: Sequence[float]) -> Measurement:
    """Return the median and spread of ``samples`` (min-max up to IQR_SAMPLE_THRESHOLD samples, else IQR)."""
    values = np.asarray([float(v) for v in samples], dtype=np.float64)
    if values.size == 0:
        raise ValueError("Cannot summarize an empty list of samples.")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"Samples contain NaN or infinite values: {values.tolist()}.")
    median = float(np.median(values))
    if values.size == 1:
        return Measurement(median, median, median, 1, "single")
    if values.size > IQR_SAMPLE_THRESHOLD:
        low, high = np.percentile(values, [25, 75])
        return Measurement(median, float(low), float(high), int(values.size), "IQR")
    return Measurement(median, float(values.min()), float(values.max()), int(values.size), "min-max")


def ratio(numerator: Measurement | float | None, denominator: Measurement | float | None) -> float | None:
    """Return numerator / denominator of the medians, or None when either is missing or the denominator is 0."""
    top = numerator.median if isinstance(numerator, Measurement) else numerator
    bottom = denominator.median if isinstance(denominator, Measurement) else denominator
    if top is None or bottom is None or bottom == 0 or not math.isfinite(top) or not math.isfinite(bottom):
        return None
    return float(top) / float(bottom)


@dataclass
class Row:
    """One benchmark quantity for both tools."""

    dataset: str
    quantity: str
    unit: str
    ortho: Measurement | float | None = None
    nnunet: Measurement | float | None = None
    note: str = ""
    unavailable: dict[str, str] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        return ratio(self.ortho, self.nnunet)


def format_value(value: Measurement | float | None, unit: str, reason: str | None = None) -> str:
    """Format a value as ``median (low-high spread, n=count)`` with a precision that suits its size."""
    if value is None:
        return f"not available: {reason}" if reason else "not available"
    if isinstance(value, Measurement):
        text = f"{_number(value.median)} {unit}".strip()
        if value.count > 1:
            text += f" ({_number(value.low)}-{_number(value.high)} {value.spread}, n={value.count})"
        return text
    return f"{_number(float(value))} {unit}".strip()


def _number(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 0.01:
        return f"{value:.3f}"
    return f"{value:.2e}"


def format_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown_table(rows: Sequence[Row]) -> str:
    """Render rows as a Markdown table with the ratio ortho_nnd / nnU-Net."""
    lines = [
        "| dataset | quantity | ortho_nnd | nnU-Net | ortho_nnd / nnU-Net | note |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        cells = [
            row.dataset,
            row.quantity,
            format_value(row.ortho, row.unit, row.unavailable.get("ortho")),
            format_value(row.nnunet, row.unit, row.unavailable.get("nnunet")),
            format_ratio(row.ratio),
            row.note,
        ]
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return "\n".join(lines)


def mebibytes(value: float | None) -> float | None:
    return None if value is None else value / BYTES_PER_MIB


def iteration_intervals(steps: Sequence[Sequence[float]], warmup: int) -> list[float]:
    """Return the start-to-start times of consecutive training steps, skipping the first ``warmup`` steps.

    ``steps`` rows are ``[epoch, start, end]``. An interval is kept only when both steps belong to
    the same epoch, so nnU-Net's per-epoch validation and checkpointing are not counted as training.
    """
    intervals = []
    for index in range(max(0, warmup), len(steps) - 1):
        epoch, start, _ = steps[index]
        next_epoch, next_start, _ = steps[index + 1]
        if epoch == next_epoch:
            intervals.append(float(next_start) - float(start))
    return intervals


def dice_per_label(prediction: np.ndarray, reference: np.ndarray, labels: Sequence[int]) -> dict[int, float]:
    """Return the Dice coefficient per label; a label absent from both arrays is left out."""
    if prediction.shape != reference.shape:
        raise ValueError(f"Prediction shape {prediction.shape} differs from reference shape {reference.shape}.")
    scores = {}
    for label in labels:
        predicted = prediction == label
        expected = reference == label
        total = int(predicted.sum()) + int(expected.sum())
        if total == 0:
            continue
        scores[int(label)] = 2.0 * int(np.logical_and(predicted, expected).sum()) / total
    return scores
