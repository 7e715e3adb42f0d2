"""Raw dataset layout: dataset.json, per-view case files and findings.csv.

Two layouts are read:

- ortho_nnd multi-view: ``imagesTr/{case}_{view}{ending}`` with ``views`` in dataset.json, labels in
  ``labelsTr/{case}_{view}{ending}`` for the labelled views, optional ``imagesTs/``,
  ``imagesUnlabeled/`` and ``findings.csv``.
- nnU-Net v2 single-channel: ``channel_names`` in dataset.json, ``imagesTr/{case}_0000{ending}`` and
  ``labelsTr/{case}{ending}``. It becomes a single-view dataset whose view is detected from the
  geometry of its first image.
"""
from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from ortho_nnd import io
from ortho_nnd.atomic_files import read_json, write_json_atomic
from ortho_nnd.geometry import VIEWS, detect_view

logger = logging.getLogger(__name__)

DEFAULT_VIEWS = ["sagittal", "coronal", "axial"]
DEFAULT_LABELLED_VIEWS = ["sagittal"]

# Image folders and the role of their scans.
SOURCE_FOLDERS = {"imagesTr": "labelsTr", "imagesUnlabeled": None, "imagesTs": "labelsTs"}

NNUNET_CHANNEL_SUFFIX = "_0000"


class DatasetFormatError(ValueError):
    """Raised when a raw dataset's layout or dataset.json is invalid."""


@dataclass
class ScanEntry:
    """One scan file (or DICOM folder) of one case and view."""

    case: str
    view: str
    source: str
    image: Path
    label: Path | None = None


@dataclass
class RawDataset:
    """A raw dataset folder with its parsed dataset.json and scan entries."""

    folder: Path
    name: str
    dataset_json: dict
    views: list[str]
    labelled_views: list[str]
    labels: dict[str, int]
    findings: list[str]
    file_ending: str
    layout: str
    scans: list[ScanEntry] = field(default_factory=list)

    def scans_of(self, view: str | None = None, sources: tuple[str, ...] | None = None) -> list[ScanEntry]:
        return [
            s for s in self.scans
            if (view is None or s.view == view) and (sources is None or s.source in sources)
        ]

    def cases(self, sources: tuple[str, ...] = ("imagesTr",)) -> list[str]:
        return sorted({s.case for s in self.scans if s.source in sources})


def load_json(path: Path) -> dict:
    """Read a JSON file, raising an error that names the file when it is missing or invalid."""
    try:
        return read_json(path, "Fix the syntax (a JSON validator shows the position).")
    except ValueError as error:
        raise DatasetFormatError(str(error)) from error


def save_json(data, path: Path) -> None:
    """Write JSON atomically (temporary file, then rename), indented by 2 spaces."""
    write_json_atomic(data, path)


def _parse_labels(dataset_json: dict, path: Path) -> dict[str, int]:
    labels = dataset_json.get("labels", {})
    if not isinstance(labels, dict):
        raise DatasetFormatError(f"'labels' in {path} must map label names to integers, got {type(labels).__name__}.")

    parsed = {}
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            raise DatasetFormatError(
                f"Label {name!r} in {path} is a region ({value}); ortho_nnd supports one integer per label."
            )
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise DatasetFormatError(f"Label {name!r} in {path} has value {value!r}; use a non-negative integer.")
        parsed[str(name)] = value

    if parsed and parsed.get("background", 0) != 0:
        raise DatasetFormatError(f"'background' must be 0 in {path}, got {parsed['background']}.")
    if len(set(parsed.values())) != len(parsed):
        raise DatasetFormatError(f"Label values in {path} are not unique: {parsed}.")
    return parsed


def load_raw_dataset(folder: str | Path) -> RawDataset:
    """Parse dataset.json and enumerate every scan of a raw dataset folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Raw dataset folder not found: {folder}. Check ORTHO_raw and the dataset id.")
    json_path = folder / "dataset.json"
    dataset_json = load_json(json_path)
    if not isinstance(dataset_json, dict):
        raise DatasetFormatError(f"{json_path} must contain a JSON object ({{...}}), got a {type(dataset_json).__name__}.")

    if "channel_names" in dataset_json and "views" not in dataset_json:
        return _load_nnunet_layout(folder, dataset_json, json_path)

    views = dataset_json.get("views", DEFAULT_VIEWS)
    if not isinstance(views, list):
        raise DatasetFormatError(f"'views' in {json_path} must be a list such as [\"sagittal\", \"coronal\", \"axial\"], got {views!r}.")
    invalid = [v for v in views if v not in VIEWS]
    if invalid:
        raise DatasetFormatError(f"Invalid views {invalid} in {json_path}; allowed: {list(VIEWS)}.")
    labelled_views = dataset_json.get("labelled_views", [v for v in DEFAULT_LABELLED_VIEWS if v in views])
    if not isinstance(labelled_views, list):
        raise DatasetFormatError(f"'labelled_views' in {json_path} must be a list, got {labelled_views!r}.")
    unknown = [v for v in labelled_views if v not in views]
    if unknown:
        raise DatasetFormatError(f"labelled_views {unknown} in {json_path} are not among the views {views}.")

    dataset = RawDataset(
        folder=folder,
        name=folder.name,
        dataset_json=dataset_json,
        views=views,
        labelled_views=labelled_views,
        labels=_parse_labels(dataset_json, json_path),
        findings=[str(f) for f in dataset_json.get("findings", [])],
        file_ending=str(dataset_json.get("file_ending", ".nii.gz")),
        layout="multiview",
    )

    naming_problems = []
    for source, label_folder in SOURCE_FOLDERS.items():
        for path in io.find_images(folder / source):
            try:
                case, view = split_case_and_view(path, views)
            except DatasetFormatError as error:
                naming_problems.append(str(error))
                continue
            label = None
            if label_folder is not None and view in labelled_views:
                candidate = _find_label(folder / label_folder, f"{case}_{view}")
                label = candidate
            dataset.scans.append(ScanEntry(case=case, view=view, source=source, image=path, label=label))

    if naming_problems:
        raise DatasetFormatError(f"{len(naming_problems)} file name(s) in {folder} are invalid:\n  " + "\n  ".join(naming_problems))
    if labelled_views and not dataset.labels and any(io.find_images(folder / "labelsTr")):
        raise DatasetFormatError(
            f"{json_path} has no 'labels' entry, but labelsTr contains label maps. Add "
            f"\"labels\": {{\"background\": 0, \"name\": 1, ...}} with every value used in the label maps."
        )
    if not dataset.scans_of(sources=("imagesTr", "imagesUnlabeled")):
        raise DatasetFormatError(f"No scans found in {folder / 'imagesTr'} or {folder / 'imagesUnlabeled'}.")
    return dataset


def split_case_and_view(path: Path, views: list[str]) -> tuple[str, str]:
    """Split ``{case}_{view}{ending}`` into case and view; the view is the suffix after the last '_'."""
    stem = io.strip_file_ending(path.name)
    case, _, view = stem.rpartition("_")
    if not case or view not in views:
        raise DatasetFormatError(
            f"Cannot tell the view of {path}: names must be {{case}}_{{view}} with view one of {views}, "
            f"for example knee001_sagittal.nii.gz."
        )
    return case, view


def _find_label(label_folder: Path, stem: str) -> Path | None:
    for candidate in io.find_images(label_folder):
        if io.strip_file_ending(candidate.name) == stem:
            return candidate
    return None


def _load_nnunet_layout(folder: Path, dataset_json: dict, json_path: Path) -> RawDataset:
    channels = dataset_json["channel_names"]
    if len(channels) != 1:
        raise DatasetFormatError(
            f"{json_path} declares {len(channels)} channels ({channels}); ortho_nnd reads nnU-Net datasets with one "
            f"channel. Store extra contrasts as separate views or separate datasets."
        )
    file_ending = str(dataset_json.get("file_ending", ".nii.gz"))
    labels = _parse_labels(dataset_json, json_path)

    images = [p for p in io.find_images(folder / "imagesTr") if io.strip_file_ending(p.name).endswith(NNUNET_CHANNEL_SUFFIX)]
    unlabeled = [p for p in io.find_images(folder / "imagesUnlabeled")]
    tests = [p for p in io.find_images(folder / "imagesTs") if io.strip_file_ending(p.name).endswith(NNUNET_CHANNEL_SUFFIX)]
    if not images:
        raise DatasetFormatError(f"No {NNUNET_CHANNEL_SUFFIX}{file_ending} images found in {folder / 'imagesTr'}.")

    view = detect_view(io.read_image(images[0])).view
    logger.info("%s is in nnU-Net layout: read as a single-view %s dataset (view detected from %s).", folder.name, view, images[0].name)

    dataset = RawDataset(
        folder=folder,
        name=folder.name,
        dataset_json=dataset_json,
        views=[view],
        labelled_views=[view],
        labels=labels,
        findings=[],
        file_ending=file_ending,
        layout="nnunet",
    )
    for source, paths in (("imagesTr", images), ("imagesTs", tests)):
        label_folder = folder / ("labelsTr" if source == "imagesTr" else "labelsTs")
        for path in paths:
            case = io.strip_file_ending(path.name)[: -len(NNUNET_CHANNEL_SUFFIX)]
            dataset.scans.append(ScanEntry(case, view, source, path, _find_label(label_folder, case)))
    for path in unlabeled:
        case = io.strip_file_ending(path.name)
        if case.endswith(NNUNET_CHANNEL_SUFFIX):
            case = case[: -len(NNUNET_CHANNEL_SUFFIX)]
        dataset.scans.append(ScanEntry(case, view, "imagesUnlabeled", path, None))
    return dataset


@dataclass
class FindingsTable:
    """Per-case finding annotations: 1.0, 0.0 or NaN (not annotated), and subject ids."""

    findings: list[str]
    values: dict[str, list[float]]
    subjects: dict[str, str]

    def as_rows(self, cases: list[str]) -> list[list[float]]:
        return [self.values.get(case, [math.nan] * len(self.findings)) for case in cases]


def read_findings_csv(path: Path, findings: list[str] | None = None) -> FindingsTable:
    """Read findings.csv: a ``case`` column, optional ``subject`` column and one 0/1 column per finding.

    An empty cell means "not annotated" and becomes NaN. Other values than 0, 1 or empty are errors
    that name the row and column.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Findings table not found: {path}")

    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        if "case" not in columns:
            raise DatasetFormatError(f"{path} has no 'case' column; its columns are {columns}.")
        finding_columns = [c for c in columns if c not in ("case", "subject")]
        if findings is not None:
            missing = [f for f in findings if f not in finding_columns]
            if missing:
                raise DatasetFormatError(f"{path} lacks the findings {missing} declared in dataset.json.")
            finding_columns = list(findings)

        values: dict[str, list[float]] = {}
        subjects: dict[str, str] = {}
        problems: list[str] = []
        for line_number, row in enumerate(reader, start=2):
            case = (row.get("case") or "").strip()
            if not case:
                problems.append(f"line {line_number}: empty case id.")
                continue
            if case in values:
                problems.append(f"line {line_number}: case {case!r} appears twice.")
                continue
            parsed = []
            for column in finding_columns:
                cell = (row.get(column) or "").strip()
                if cell == "":
                    parsed.append(math.nan)
                elif cell in ("0", "1", "0.0", "1.0"):
                    parsed.append(float(cell))
                else:
                    problems.append(f"line {line_number}, column {column!r}: value {cell!r}; use 0, 1 or leave empty for not annotated.")
                    parsed.append(math.nan)
            values[case] = parsed
            subjects[case] = (row.get("subject") or "").strip() or case

    if problems:
        raise DatasetFormatError(f"{path} has {len(problems)} invalid entr{'y' if len(problems) == 1 else 'ies'}:\n  " + "\n  ".join(problems))
    return FindingsTable(findings=finding_columns, values=values, subjects=subjects)
