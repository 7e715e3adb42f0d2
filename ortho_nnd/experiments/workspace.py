"""A self-contained work folder with its own ORTHO_raw, ORTHO_preprocessed and ORTHO_results.

The demo and the example scripts run the whole pipeline inside one folder so that they never
touch the user's own data folders. A marker file identifies folders that such a run created:
only those are cleared when the run starts again.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ortho_nnd.experiments.stages import ORTHO_VARIABLES

logger = logging.getLogger(__name__)

# Sub-folder of the work folder for each ORTHO_* variable.
SUBFOLDERS = {"ORTHO_raw": "raw", "ORTHO_preprocessed": "preprocessed", "ORTHO_results": "results"}


def ortho_folders(work_dir: Path) -> dict[str, Path]:
    """Return ORTHO_* variable -> folder inside ``work_dir``."""
    return {variable: Path(work_dir) / SUBFOLDERS[variable] for variable in ORTHO_VARIABLES}


def prepare_work_dir(work_dir: Path, marker_name: str, fresh: bool) -> Path:
    """Create ``work_dir`` and write the marker file ``marker_name`` into it.

    With ``fresh``, a work folder left by an earlier run (one that contains the marker) loses
    its raw, preprocessed and results folders. A non-empty folder without the marker raises
    FileExistsError, so that a mistyped --work_dir never deletes the user's files.
    """
    work_dir = Path(work_dir).expanduser().resolve()
    marker = work_dir / marker_name
    if work_dir.is_dir() and any(work_dir.iterdir()) and not marker.is_file():
        raise FileExistsError(
            f"Work folder {work_dir} is not empty and has no {marker_name}, so an earlier run did not create it. "
            "Choose a new or empty folder with --work_dir."
        )

    if fresh and marker.is_file():
        for folder in ortho_folders(work_dir).values():
            if folder.is_dir():
                logger.info("Removing %s from an earlier run", folder)
                shutil.rmtree(folder)

    work_dir.mkdir(parents=True, exist_ok=True)
    if not marker.is_file():
        marker.write_text(json.dumps({"created_by": "ortho_nnd"}) + "\n", encoding="utf-8")
    return work_dir


@contextmanager
def ortho_environment(folders: dict[str, Path]) -> Iterator[dict[str, Path]]:
    """Set the ORTHO_* variables to ``folders`` (creating them) and restore the old values on exit."""
    previous = {variable: os.environ.get(variable) for variable in folders}
    for variable, folder in folders.items():
        Path(folder).mkdir(parents=True, exist_ok=True)
        os.environ[variable] = str(folder)
    try:
        yield folders
    finally:
        for variable, value in previous.items():
            if value is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = value


def write_json(data: dict, path: Path) -> Path:
    """Write ``data`` as indented JSON through a temporary file, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path
