"""JSON helpers for evaluation outputs: NaN-safe conversion and atomic writes."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def to_json_compatible(value: Any) -> Any:
    """Convert numpy scalars and arrays to Python types, and NaN or infinity to None.

    Strict JSON has no NaN, so an undefined metric is written as ``null``.
    """
    if isinstance(value, dict):
        return {str(key): to_json_compatible(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_compatible(item) for item in value]
    if isinstance(value, np.ndarray):
        return to_json_compatible(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json_atomic(data: Any, path: str | os.PathLike) -> Path:
    """Write ``data`` as indented JSON to a temporary file beside ``path``, then rename it.

    A reader never sees a half-written file because the rename is atomic on one file system.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    handle, temporary_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(to_json_compatible(data), file, indent=2, allow_nan=False)
            file.write("\n")
        os.replace(temporary_name, path)
    except BaseException:
        if os.path.exists(temporary_name):
            os.remove(temporary_name)
        raise
    return path


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, raising ValueError that names the file when it is not valid JSON."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSON file not found: {path}")
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except json.JSONDecodeError as error:
        raise ValueError(f"Invalid JSON in {path}: {error}. Fix or delete the file.") from error


def nan_if_none(value: Any) -> float:
    """Return ``value`` as float, with None (a JSON null) read back as NaN."""
    return float("nan") if value is None else float(value)
