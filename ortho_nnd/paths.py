"""Dataset, preprocessed and results folders, read lazily from environment variables.

ORTHO_raw, ORTHO_preprocessed and ORTHO_results name the three folders. An unset variable
falls back to a folder under ``~/ortho_nnd_data`` (see DEFAULT_BASE); the folders in use are
logged once per process. Nothing here runs at import time, so importing ortho_nnd never fails
because a variable is missing.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

logger = logging.getLogger(__name__)

# Base folder for the fallback locations when an ORTHO_* variable is unset.
DEFAULT_BASE = Path.home() / "ortho_nnd_data"

_ENV_TO_DEFAULT = {
    "ORTHO_raw": "raw",
    "ORTHO_preprocessed": "preprocessed",
    "ORTHO_results": "results",
}

_logged_folders: set[tuple[str, str]] = set()


def _folder_from_env(variable: str) -> Path:
    value = os.environ.get(variable)
    if value:
        folder = Path(value).expanduser()
        source = "environment"
    else:
        folder = DEFAULT_BASE / _ENV_TO_DEFAULT[variable]
        source = f"default, set {variable} to change it"

    key = (variable, str(folder))
    if key not in _logged_folders:
        _logged_folders.add(key)
        logger.info("%s = %s (%s)", variable, folder, source)
    return folder


def raw_folder() -> Path:
    return _folder_from_env("ORTHO_raw")


def preprocessed_folder() -> Path:
    return _folder_from_env("ORTHO_preprocessed")


def results_folder() -> Path:
    return _folder_from_env("ORTHO_results")


_DATASET_NAME = re.compile(r"^Dataset(\d{3})_[A-Za-z0-9_\-]+$")


def dataset_name_from_id(dataset: str | int, search_in: Path | None = None) -> str:
    """Resolve ``101``, ``"101"`` or ``"Dataset101_Knee"`` to the dataset folder name.

    The name is looked up in ``search_in`` (default: the raw folder), then in the
    preprocessed and results folders. Raises FileNotFoundError listing what exists.
    """
    text = str(dataset)
    if _DATASET_NAME.match(text):
        return text
    if not text.isdigit():
        raise ValueError(
            f"Invalid dataset {text!r}: give its number (101) or its folder name (Dataset101_Knee)."
        )

    dataset_id = int(text)
    folders = [search_in] if search_in is not None else [raw_folder(), preprocessed_folder(), results_folder()]
    seen: list[str] = []
    for folder in folders:
        if not folder.is_dir():
            continue
        matches = sorted(
            child.name for child in folder.iterdir()
            if child.is_dir() and _DATASET_NAME.match(child.name) and int(child.name[7:10]) == dataset_id
        )
        if len(matches) > 1:
            raise ValueError(f"Several datasets have id {dataset_id:03d} in {folder}: {matches}. Remove or rename all but one.")
        if matches:
            return matches[0]
        seen.extend(child.name for child in folder.iterdir() if child.is_dir())

    searched = ", ".join(str(f) for f in folders)
    variables = {str(raw_folder()): "ORTHO_raw", str(preprocessed_folder()): "ORTHO_preprocessed", str(results_folder()): "ORTHO_results"}
    names = " or ".join(dict.fromkeys(variables.get(str(f), "the folder argument") for f in folders))
    raise FileNotFoundError(
        f"No dataset with id {dataset_id:03d} (folder Dataset{dataset_id:03d}_NAME) in {searched}. "
        f"Found: {sorted(set(seen)) or 'nothing'}. Set {names} to the folder that contains it."
    )


def raw_dataset_folder(dataset: str | int) -> Path:
    return raw_folder() / dataset_name_from_id(dataset)


def preprocessed_dataset_folder(dataset: str | int) -> Path:
    return preprocessed_folder() / dataset_name_from_id(dataset)


def results_dataset_folder(dataset: str | int) -> Path:
    return results_folder() / dataset_name_from_id(dataset)
