"""Atomic file writes: a temporary file in the target folder, then a rename.

The rename is atomic on one POSIX file system, so a reader (or a resumed run) reads either the old
file or the complete new one, never a half-written file under the final name. On any error the
temporary file is removed and the previous file is left untouched.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "w", newline: str | None = None, fsync: bool = False) -> Iterator:
    """Yield a file object for ``path`` that replaces ``path`` only when the block ends without error.

    Text modes use UTF-8. ``fsync=True`` flushes the data to disk before the rename (for
    checkpoints, which must survive a power failure).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        text_options = {} if "b" in mode else {"encoding": "utf-8", "newline": newline}
        with os.fdopen(handle, mode, **text_options) as stream:
            yield stream
            if fsync:
                stream.flush()
                os.fsync(stream.fileno())
        # mkstemp creates files readable by the owner only; give outputs the usual permissions.
        os.chmod(temporary_name, 0o666 & ~_current_umask())
        os.replace(temporary_name, path)
    except BaseException:
        Path(temporary_name).unlink(missing_ok=True)
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(data: bytes, path: str | os.PathLike) -> Path:
    with atomic_output(path, "wb") as stream:
        stream.write(data)
    return Path(path)


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    with atomic_output(path, "w") as stream:
        stream.write(text)
    return Path(path)


def to_json_compatible(value: Any) -> Any:
    """Convert numpy scalars and arrays to Python types, paths to strings, and NaN or infinity to None.

    Strict JSON has no NaN, so an undefined value (a metric of an absent class) is written as ``null``.
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
    """Write ``data`` as indented strict JSON (NaN becomes null) atomically."""
    text = json.dumps(to_json_compatible(data), indent=2, allow_nan=False)
    return write_text_atomic(text + "\n", path)


def read_json(path: str | os.PathLike, fix: str = "Fix or delete the file.") -> Any:
    """Read a JSON file; a missing file raises FileNotFoundError and invalid JSON a ValueError, both naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found.")
    try:
        with open(path, encoding="utf-8") as stream:
            return json.load(stream)
    except json.JSONDecodeError as error:
        raise ValueError(f"Invalid JSON in {path}: {error}. {fix}") from error
