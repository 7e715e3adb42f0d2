"""JSON helpers for evaluation outputs: NaN-safe conversion and atomic writes."""
from __future__ import annotations

from typing import Any

# Re-exported so that evaluation code and trainers keep one import path.
from ortho_nnd.atomic_files import read_json, to_json_compatible, write_json_atomic  # noqa: F401


def nan_if_none(value: Any) -> float:
    """Return ``value`` as float, with None (a JSON null) read back as NaN."""
    return float("nan") if value is None else float(value)
