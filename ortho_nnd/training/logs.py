"""Training log file and progress record (``training_log.json``, ``progress.png``).

Public API:

- ``add_log_file(output_folder, prefix="training_log") -> Path | None`` attaches a
  ``logging.FileHandler`` writing ``{prefix}_YYYY_MM_DD_HH_MM_SS.txt`` to the ``ortho_nnd``
  package logger, on the main process only (returns None on other ranks). ``remove_log_file(path)``
  detaches it again.
- ``ProgressTracker`` records ``iteration``, ``loss``, ``learning_rate`` and an optional
  ``val_metric`` (one list per key, equal lengths, ``None`` where no validation ran) and writes
  them to ``training_log.json`` and a ``progress.png`` with the loss curve and learning rate.
  ``state_dict()`` / ``load_state_dict()`` put the lists in a checkpoint, so a continued run
  keeps its history.

Both files are written to a temporary name and renamed, so a reader never sees half a file.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from ortho_nnd.atomic_files import atomic_output
from ortho_nnd.training.distributed import is_main_process

logger = logging.getLogger(__name__)

PACKAGE_LOGGER = "ortho_nnd"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
PROGRESS_KEYS = ("iteration", "loss", "learning_rate", "val_metric")


def add_log_file(output_folder: str | os.PathLike, prefix: str = "training_log") -> Path | None:
    """Log the ``ortho_nnd`` package to a new timestamped file in ``output_folder`` (main process only)."""
    if not is_main_process():
        return None

    folder = Path(output_folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{prefix}_{time.strftime('%Y_%m_%d_%H_%M_%S')}.txt"

    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(logging.INFO)
    package_logger = logging.getLogger(PACKAGE_LOGGER)
    package_logger.addHandler(handler)
    if package_logger.getEffectiveLevel() > logging.INFO:
        package_logger.setLevel(logging.INFO)
    return path


def remove_log_file(path: Path | None) -> None:
    """Detach and close the handler that ``add_log_file`` created for ``path``."""
    if path is None:
        return
    package_logger = logging.getLogger(PACKAGE_LOGGER)
    for handler in list(package_logger.handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename) == Path(path).resolve():
            package_logger.removeHandler(handler)
            handler.close()


class ProgressTracker:
    """Lists of iteration, loss, learning rate and optional validation metric."""

    def __init__(self) -> None:
        self.values: dict[str, list] = {key: [] for key in PROGRESS_KEYS}

    def record(self, iteration: int, loss: float, learning_rate: float, val_metric: float | None = None) -> None:
        self.values["iteration"].append(int(iteration))
        self.values["loss"].append(float(loss))
        self.values["learning_rate"].append(float(learning_rate))
        self.values["val_metric"].append(None if val_metric is None else float(val_metric))

    def __len__(self) -> int:
        return len(self.values["iteration"])

    def state_dict(self) -> dict[str, list]:
        # Non-finite losses become None so that the lists stay JSON-compatible.
        return {key: [_json_number(v) for v in values] for key, values in self.values.items()}

    def load_state_dict(self, state: dict[str, list]) -> None:
        lengths = {key: len(state.get(key, [])) for key in PROGRESS_KEYS if key != "val_metric"}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"Invalid progress record: lists have different lengths {lengths}.")
        count = lengths["iteration"]
        self.values = {key: list(state.get(key, [None] * count)) for key in PROGRESS_KEYS}

    def save_json(self, path: str | os.PathLike) -> None:
        text = json.dumps(self.state_dict(), indent=1)
        with atomic_output(path, "w") as stream:
            stream.write(text)

    def plot(self, path: str | os.PathLike) -> None:
        """Draw the loss (left axis) and learning rate (right axis) against the iteration."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, loss_axis = plt.subplots(figsize=(10, 5))
        iterations = self.values["iteration"]
        losses = [math.nan if v is None else v for v in self.values["loss"]]
        finite_losses = [v for v in losses if math.isfinite(v)]
        loss_axis.plot(iterations, losses, color="tab:blue", linewidth=0.8, label="training loss")
        validation = [(i, v) for i, v in zip(iterations, self.values["val_metric"]) if v is not None]
        if validation:
            metric_axis = loss_axis.twinx()
            metric_axis.spines["right"].set_position(("outward", 50))
            metric_axis.plot(*zip(*validation), color="tab:green", marker="o", label="validation metric")
            metric_axis.set_ylabel("validation metric")
        loss_axis.set_xlabel("iteration")
        loss_axis.set_ylabel("loss")
        if finite_losses and min(finite_losses) > 0:
            loss_axis.set_yscale("log")

        rate_axis = loss_axis.twinx()
        rate_axis.plot(iterations, self.values["learning_rate"], color="tab:orange", linewidth=0.8, label="learning rate")
        rate_axis.set_ylabel("learning rate")
        figure.legend(loc="upper center", ncol=3)
        figure.tight_layout()

        try:
            with atomic_output(path, "wb") as stream:
                figure.savefig(stream, format="png", dpi=100)
        finally:
            plt.close(figure)


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
