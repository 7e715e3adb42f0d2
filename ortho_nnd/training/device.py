"""Device selection, mixed precision and optional ``torch.compile``.

Public API:

- ``resolve_device(request) -> torch.device`` for ``"auto"``, ``"cuda"``, ``"cpu"`` or ``"mps"``.
  ``auto`` picks CUDA, then MPS, then CPU. A requested device that is not available raises
  ``ValueError`` naming the request and the devices that are available.
- ``autocast_context(device)`` returns a bf16 ``torch.autocast`` context on CUDA and a no-op
  context on CPU and MPS (bf16 autocast on CPU is slow for 3D convolutions, and MPS autocast
  support varies between torch releases).
- ``maybe_compile(model, enabled)`` returns ``torch.compile(model)`` when enabled and compiling
  works, and the model unchanged with one warning otherwise.
- ``set_deterministic(enabled)`` switches ``torch.use_deterministic_algorithms`` and the cuDNN
  flags that matter for bitwise-reproducible runs.
"""
from __future__ import annotations

import contextlib
import logging
import os

import torch

logger = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cuda", "cpu", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return backend is not None and backend.is_available()


def available_devices() -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.insert(0, "cuda")
    if _mps_available():
        devices.append("mps")
    return devices


def resolve_device(request: str = "auto") -> torch.device:
    """Turn a ``-device`` value into a ``torch.device``."""
    request = str(request).lower()
    if request not in DEVICE_CHOICES:
        raise ValueError(f"Invalid device {request!r}: choose one of {', '.join(DEVICE_CHOICES)}.")

    if request == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")

    if request == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"Device 'cuda' was requested but torch {torch.__version__} sees no CUDA device "
            f"(available: {', '.join(available_devices())}). Use -device cpu or install a CUDA build of torch."
        )
    if request == "mps" and not _mps_available():
        raise ValueError(
            f"Device 'mps' was requested but it is not available (available: {', '.join(available_devices())}). "
            "Use -device cpu."
        )
    return torch.device(request)


def autocast_context(device: torch.device):
    """Return bf16 autocast on CUDA and a no-op context elsewhere."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def maybe_compile(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """Compile ``model`` with ``torch.compile`` when ``enabled``; fall back to eager with one warning."""
    if not enabled:
        return model
    try:
        return torch.compile(model)
    except Exception as error:  # compile can fail for missing compilers or unsupported platforms
        logger.warning("torch.compile failed (%s: %s); training continues without compilation.", type(error).__name__, error)
        return model


def set_deterministic(enabled: bool) -> None:
    """Enable or disable deterministic algorithms for reproducible (slower) training."""
    if enabled:
        # cuBLAS needs a fixed workspace for deterministic matrix products (CUDA >= 10.2).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # Switching it off when it is already off is skipped: the call imports torch's compiler
    # package, about 2.5 s per ortho_train start (measured on the 2-core CPU machine).
    if enabled or torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(enabled, warn_only=False)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled
