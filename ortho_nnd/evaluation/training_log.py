"""The training log JSON that trainers write beside their checkpoints for the loss curves of the report.

In ``training_log.json``, ``iteration``, ``loss`` and ``learning_rate`` are lists of equal
length. The optional ``val_metric`` is a list of the same length with ``null`` where no
validation ran. The optional ``val_metric_name`` names it, for example ``"foreground_dice"``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ortho_nnd.evaluation.json_io import read_json, write_json_atomic

TRAINING_LOG_NAME = "training_log.json"
REQUIRED_KEYS = ("iteration", "loss", "learning_rate")


def write_training_log_json(
    path: str | os.PathLike,
    iterations: Sequence[int],
    losses: Sequence[float],
    learning_rates: Sequence[float],
    val_metric: Sequence[float | None] | None = None,
    val_metric_name: str | None = None,
) -> Path:
    """Write the training log JSON (atomic write); ``val_metric`` entries may be None where no validation ran."""
    length = len(iterations)
    lengths = {"losses": len(losses), "learning_rates": len(learning_rates)}
    if val_metric is not None:
        lengths["val_metric"] = len(val_metric)
    unequal = {name: value for name, value in lengths.items() if value != length}
    if unequal:
        raise ValueError(f"Training log lists must have the length of iterations ({length}); got {unequal}.")

    data = {"iteration": [int(value) for value in iterations], "loss": list(losses), "learning_rate": list(learning_rates)}
    if val_metric is not None:
        data["val_metric"] = list(val_metric)
        data["val_metric_name"] = val_metric_name
    return write_json_atomic(data, path)


def read_training_log_json(path: str | os.PathLike) -> dict:
    """Read a training log JSON, checking the required keys and list lengths."""
    data = read_json(path)
    if not isinstance(data, dict) or any(key not in data for key in REQUIRED_KEYS):
        raise ValueError(f"Invalid training log {path}: expected an object with the lists {REQUIRED_KEYS}.")

    length = len(data["iteration"])
    keys = [*REQUIRED_KEYS, *(["val_metric"] if data.get("val_metric") is not None else [])]
    if any(len(data[key]) != length for key in keys):
        raise ValueError(f"Invalid training log {path}: the lists {keys} differ in length.")
    data["loss"] = [float("nan") if value is None else value for value in data["loss"]]
    return data
