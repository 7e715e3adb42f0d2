"""Atomic checkpoint files and random-number-generator state without pickle.

Public API:

- ``save_checkpoint(path, payload)`` writes ``payload`` with ``torch.save`` to a temporary file in
  the destination folder, flushes and fsyncs it, then renames it over ``path`` with ``os.replace``.
  A crash or exception during the write leaves an existing file at ``path`` untouched.
- ``load_checkpoint(path, map_location="cpu")`` reads a checkpoint with ``torch.load(weights_only=True)``
  and raises ``CheckpointError`` naming the file when it is missing, truncated or contains
  anything other than tensors and JSON-compatible values.
- ``capture_rng_state()`` / ``restore_rng_state(state)`` store and restore the Python, NumPy
  (legacy global generator), torch CPU and torch CUDA generators as lists and tensors, so the
  result fits in a checkpoint that ``weights_only=True`` can read.

Payloads must contain only tensors, dicts, lists, tuples, str, int, float, bool and None;
``torch.load(weights_only=True)`` rejects everything else.
"""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ortho_nnd.atomic_files import atomic_output

logger = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or has unexpected content."""


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically and return the path.

    The temporary file lives in the same folder so that ``os.replace`` is a rename on one file
    system, which POSIX guarantees to be atomic.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    # On failure the partial temporary file is removed and the previous checkpoint stays.
    with atomic_output(path, "wb", fsync=True) as stream:
        torch.save(payload, stream)

    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    # Persist the rename itself. Some file systems do not allow opening a folder. The file
    # content is on disk in that case, and only the rename may be lost on power failure.
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint`` (tensors and JSON-compatible values only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"Checkpoint not found: {path}. Check the path, or train first so that the file exists."
        )

    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises RuntimeError, pickle.UnpicklingError, EOFError, ...
        raise CheckpointError(
            f"Could not read checkpoint {path}: {type(error).__name__}: {error}. The file is truncated, "
            "corrupt or contains objects other than tensors and JSON-compatible values. "
            "Delete it and continue from another checkpoint or retrain."
        ) from error

    if not isinstance(payload, dict):
        raise CheckpointError(f"Checkpoint {path} contains a {type(payload).__name__}, expected a dict.")
    return payload


def capture_rng_state() -> dict[str, Any]:
    """Return the state of the Python, NumPy, torch CPU and torch CUDA generators."""
    python_version, python_internal, python_gauss = random.getstate()
    numpy_kind, numpy_keys, numpy_position, numpy_has_gauss, numpy_gauss = np.random.get_state(legacy=True)

    state: dict[str, Any] = {
        "python": {"version": python_version, "internal": list(python_internal), "gauss_next": python_gauss},
        "numpy": {
            "kind": str(numpy_kind),
            # MT19937 keys are uint32, which int64 represents without loss.
            "keys": torch.from_numpy(numpy_keys.astype(np.int64)),
            "position": int(numpy_position),
            "has_gauss": int(numpy_has_gauss),
            "cached_gaussian": float(numpy_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore generator states captured by ``capture_rng_state``.

    CUDA states are restored only when the number of visible devices matches; otherwise a
    warning is logged and the CUDA generators keep their current state.
    """
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"]), python_state["gauss_next"]))

    numpy_state = state["numpy"]
    np.random.set_state((
        numpy_state["kind"],
        numpy_state["keys"].cpu().numpy().astype(np.uint32),
        numpy_state["position"],
        numpy_state["has_gauss"],
        numpy_state["cached_gaussian"],
    ))

    torch.set_rng_state(state["torch"].cpu())

    cuda_states = state.get("cuda", [])
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
        else:
            logger.warning(
                "Checkpoint stores %d CUDA generator states but %d devices are visible; "
                "CUDA random state was not restored.", len(cuda_states), torch.cuda.device_count(),
            )
