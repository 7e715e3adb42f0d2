"""Shared pytest fixtures: the real MRI folder beside the repository and small synthetic scans."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
REAL_MRI_FOLDER = REPOSITORY_ROOT.parent / "shared" / "data" / "real_mri"


@pytest.fixture
def real_mri_folder() -> Path:
    """Return ../shared/data/real_mri, or skip the test when it is not there."""
    if not REAL_MRI_FOLDER.is_dir():
        pytest.skip(f"real MRI not available: {REAL_MRI_FOLDER} does not exist (it sits beside the repository checkout)")
    return REAL_MRI_FOLDER


@pytest.fixture
def ortho_folders(tmp_path, monkeypatch) -> dict[str, Path]:
    """Point ORTHO_raw, ORTHO_preprocessed and ORTHO_results at fresh folders under tmp_path."""
    folders = {name: tmp_path / name for name in ("raw", "preprocessed", "results")}
    for name, folder in folders.items():
        folder.mkdir()
    monkeypatch.setenv("ORTHO_raw", str(folders["raw"]))
    monkeypatch.setenv("ORTHO_preprocessed", str(folders["preprocessed"]))
    monkeypatch.setenv("ORTHO_results", str(folders["results"]))
    return folders


@pytest.fixture(autouse=True)
def _quiet_matplotlib():
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    yield
