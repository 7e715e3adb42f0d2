"""Finding the scans in an input folder and grouping them into exams with one series per view.

Rules (documentation/prediction.md describes them for users):

1. Every image file (NIfTI, NRRD, MetaImage) and every DICOM series (identified by series
   instance UID, several per folder allowed) below the input folder, at any depth, is a series.
2. A series whose name ends in ``_{view}`` (view: sagittal, coronal or axial) belongs to the
   exam named by the part before that suffix. The name of a file is its name without the file
   ending, and the name of a DICOM series is its folder's name.
3. Other DICOM series are grouped by study instance UID, then by patient ID when the study UID
   is empty, then by folder.
4. Every other file is its own exam, named after the file (without an nnU-Net ``_0000`` suffix).

The view of every series is detected from its geometry. A declared ``_{view}`` that disagrees
makes the exam invalid. When an exam has several series of one view, the series with the most
voxels wins, then the one with the finest in-plane spacing (smallest in-plane voxel area), then
the one whose name sorts first.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ortho_nnd import io
from ortho_nnd.geometry import VIEWS, detect_view

logger = logging.getLogger(__name__)

# DICOM Image Position (Patient): x, y, z of the first voxel of a slice, in mm.
DICOM_IMAGE_POSITION_TAG = "0020|0032"

# Files next to a header that belong to it and are not images on their own.
HEADER_DATA_ENDINGS = (".raw", ".zraw", ".img", ".dat")

# Channel suffix of single-channel images in the nnU-Net v2 layout (imagesTs/CASE_0000.nii.gz).
NNUNET_CHANNEL_SUFFIX = "_0000"

# Characters allowed in case names derived from folder names and patient IDs.
_UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9_.\-]+")


@dataclass
class SeriesInput:
    """One scan found in the input folder: a file or one DICOM series."""

    path: Path
    name: str
    series_uid: str | None = None
    study_uid: str = ""
    patient_id: str = ""
    description: str = ""
    declared_view: str | None = None
    declared_case: str | None = None
    view: str | None = None
    obliquity_degrees: float | None = None
    size: tuple[int, ...] = ()
    spacing: tuple[float, ...] = ()
    error: str | None = None

    @property
    def is_dicom(self) -> bool:
        return self.series_uid is not None

    @property
    def label(self) -> str:
        """Return a short description for logs and JSON: the path, plus the series UID for DICOM."""
        return f"{self.path} (series {self.series_uid})" if self.is_dicom else str(self.path)

    def to_json(self) -> dict:
        return {
            "path": str(self.path),
            "name": self.name,
            "series_uid": self.series_uid,
            "description": self.description,
            "declared_view": self.declared_view,
            "detected_view": self.view,
            "obliquity_degrees": self.obliquity_degrees,
            "size": list(self.size),
            "spacing": list(self.spacing),
        }


@dataclass
class Exam:
    """Series of one exam, the chosen series per view and the problems found while grouping."""

    case: str
    series: list[SeriesInput] = field(default_factory=list)
    chosen: dict[str, SeriesInput] = field(default_factory=dict)
    skipped: list[tuple[SeriesInput, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def is_valid(self) -> bool:
        return not self.errors and bool(self.chosen)


# ---------------------------------------------------------------- finding series


def _split_declared_view(name: str) -> tuple[str | None, str | None]:
    """Return (case, view) when ``name`` ends in ``_{view}``, else (None, None)."""
    case, separator, suffix = name.rpartition("_")
    if separator and case and suffix.lower() in VIEWS:
        return case, suffix.lower()
    return None, None


def _is_image_file(path: Path) -> bool:
    lowered = path.name.lower()
    return any(lowered.endswith(ending) for ending in io.SUPPORTED_FILE_ENDINGS)


def _dicom_series_in(folder: Path) -> list[io.DicomSeries]:
    """List the DICOM series directly in ``folder``; folders without DICOM files return []."""
    # GDCM prints "No Series were found" to stderr for folders without DICOM files, which is the
    # normal case here, so ITK warnings are off during the scan.
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return io.list_dicom_series(folder)
    except (RuntimeError, io.ImageReadError) as error:
        logger.warning("Failed to scan %s for DICOM series: %s", folder, error)
        return []
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def find_series(input_folder: str | os.PathLike) -> list[SeriesInput]:
    """List every image file and DICOM series below ``input_folder`` in a fixed (sorted) order."""
    root = Path(input_folder)
    if not root.is_dir():
        raise FileNotFoundError(f"Input folder not found: {root}. Pass a folder of scans with -i.")

    found: list[SeriesInput] = []
    for folder, subfolders, files in os.walk(root):
        # Sorting in place makes os.walk descend in a fixed order; hidden folders are skipped.
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        folder = Path(folder)

        for file_name in sorted(files):
            path = folder / file_name
            if file_name.startswith(".") or not _is_image_file(path):
                continue
            name = io.strip_file_ending(file_name)
            found.append(SeriesInput(path=path, name=name))

        # Only folders with files that are not images of another format can hold DICOM files.
        other_files = [
            name for name in files
            if not name.startswith(".") and not _is_image_file(folder / name)
            and not name.lower().endswith(HEADER_DATA_ENDINGS)
        ]
        dicom_series = _dicom_series_in(folder) if other_files else []
        for index, series in enumerate(sorted(dicom_series, key=lambda s: s.series_uid)):
            name = folder.name if len(dicom_series) == 1 else f"{folder.name}_series{index + 1}"
            found.append(
                SeriesInput(
                    path=folder,
                    name=name,
                    series_uid=series.series_uid,
                    study_uid=series.study_uid,
                    patient_id=series.patient_id,
                    description=series.description,
                )
            )

    for series in found:
        # A DICOM folder named {case}_{view} declares the view of every series inside it.
        declared_name = series.path.name if series.is_dicom else series.name
        series.declared_case, series.declared_view = _split_declared_view(declared_name)
    return found


# ---------------------------------------------------------------- view detection


def _dicom_header_geometry(series: SeriesInput) -> sitk.Image:
    """Build a 1-voxel image with the spacing and direction that reading the whole series gives.

    The in-plane spacing and direction come from the first file. The slice spacing is the
    distance between the first and last slice positions along the slice normal divided by the
    number of gaps, which is how ITK's series reader spaces slices.
    """
    with io.preserved_locale():
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series.path), series.series_uid)
        first = sitk.ImageFileReader()
        first.SetFileName(files[0])
        first.ReadImageInformation()

    direction = np.asarray(first.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = list(first.GetSpacing())
    size = [int(first.GetSize()[0]), int(first.GetSize()[1]), len(files)]

    if len(files) > 1:
        last = sitk.ImageFileReader()
        last.SetFileName(files[-1])
        with io.preserved_locale():
            last.ReadImageInformation()
        first_position = np.array([float(v) for v in first.GetMetaData(DICOM_IMAGE_POSITION_TAG).split("\\")])
        last_position = np.array([float(v) for v in last.GetMetaData(DICOM_IMAGE_POSITION_TAG).split("\\")])
        distance = abs(float(np.dot(last_position - first_position, direction[:, 2])))
        if distance > 0:
            spacing[2] = distance / (len(files) - 1)

    header = sitk.Image([1, 1, 1], sitk.sitkUInt8)
    header.SetSpacing(spacing)
    header.SetDirection(direction.flatten().tolist())
    header.SetMetaData("size", " ".join(str(v) for v in size))
    return header


def _file_header(path: Path) -> tuple[sitk.Image, list[int]]:
    """Return a 1-voxel image with the file's spacing and direction, and the file's 3D size."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with io.preserved_locale():
            reader.ReadImageInformation()
    except RuntimeError as error:
        raise io.ImageReadError(f"Failed to read the header of {path}: {str(error).strip().splitlines()[-1]}") from error

    dimension = reader.GetDimension()
    if dimension not in (3, 4) or (dimension == 4 and reader.GetSize()[3] != 1):
        raise io.ImageReadError(f"{path} has size {reader.GetSize()}; ortho_predict needs 3D scans.")
    if reader.GetNumberOfComponents() != 1:
        raise io.ImageReadError(f"{path} has {reader.GetNumberOfComponents()} components per voxel; expected 1.")

    direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(dimension, dimension)[:3, :3]
    header = sitk.Image([1, 1, 1], sitk.sitkUInt8)
    header.SetSpacing(reader.GetSpacing()[:3])
    header.SetDirection(direction.flatten().tolist())
    return header, [int(v) for v in reader.GetSize()[:3]]


def detect_series_view(series: SeriesInput) -> None:
    """Fill ``view``, ``obliquity_degrees``, ``size`` and ``spacing`` from the header, or ``error``.

    Only headers are read here; the full read at prediction time checks the view again.
    """
    try:
        if series.is_dicom:
            header = _dicom_header_geometry(series)
            size = [int(v) for v in header.GetMetaData("size").split()]
        else:
            header, size = _file_header(series.path)
        info = detect_view(header)
    except io.ImageReadError as error:
        series.error = str(error)
        return
    except (RuntimeError, ValueError, IndexError) as error:
        series.error = f"Failed to read the geometry of {series.label}: {error}"
        return

    series.view = info.view
    series.obliquity_degrees = float(info.obliquity_degrees)
    series.size = tuple(size)
    series.spacing = tuple(float(v) for v in header.GetSpacing())


# ---------------------------------------------------------------- grouping


def _safe_name(text: str) -> str:
    return _UNSAFE_CHARACTERS.sub("_", text).strip("_")


def _dicom_group_key(series: SeriesInput) -> tuple[str, str]:
    if series.study_uid:
        return ("study", series.study_uid)
    if series.patient_id:
        return ("patient", series.patient_id)
    return ("folder", str(series.path))


def _dicom_group_case(members: list[SeriesInput], root: Path, key: tuple[str, str]) -> str:
    """Name a DICOM exam after the deepest folder that contains all its series (below the root).

    Series directly in the root fall back to the patient ID, then to ``study_`` plus the end of
    the study UID, and series without either to the root folder's name.
    """
    common = Path(os.path.commonpath([str(series.path) for series in members]))
    if common != root and root in common.parents:
        folder_name = _safe_name(common.name)
        if folder_name:
            return folder_name
    if members[0].patient_id and _safe_name(members[0].patient_id):
        return _safe_name(members[0].patient_id)
    if key[0] == "folder":
        return _safe_name(common.name) or "series"

    # NOTE: two studies may share the last 12 UID characters. _unique_case_names then adds a suffix.
    return f"{key[0]}_{_safe_name(key[1])[-12:]}"


def _strip_channel_suffix(name: str) -> str:
    """Drop the nnU-Net channel suffix ``_0000`` so ``CASE_0000.nii.gz`` is predicted as case ``CASE``."""
    if name.endswith(NNUNET_CHANNEL_SUFFIX) and len(name) > len(NNUNET_CHANNEL_SUFFIX):
        return name[: -len(NNUNET_CHANNEL_SUFFIX)]
    return name


def _unique_case_names(exams: list[Exam]) -> None:
    """Append _2, _3, ... to case names that several groups would otherwise share."""
    counts: dict[str, int] = {}
    for exam in exams:
        counts[exam.case] = counts.get(exam.case, 0) + 1
        if counts[exam.case] > 1:
            new_name = f"{exam.case}_{counts[exam.case]}"
            logger.warning("Two exams would be named %s; the second one is named %s.", exam.case, new_name)
            exam.case = new_name


def group_into_exams(series_list: list[SeriesInput], input_folder: str | os.PathLike) -> list[Exam]:
    """Group series into exams by the rules in the module docstring (view detection must have run)."""
    root = Path(input_folder)
    by_declared_case: dict[str, Exam] = {}
    dicom_groups: dict[tuple[str, str], list[SeriesInput]] = {}
    single_files: list[Exam] = []

    for series in series_list:
        if series.declared_case is not None:
            exam = by_declared_case.setdefault(series.declared_case, Exam(case=series.declared_case))
            exam.series.append(series)
        elif series.is_dicom:
            dicom_groups.setdefault(_dicom_group_key(series), []).append(series)
        else:
            single_files.append(Exam(case=_strip_channel_suffix(series.name), series=[series]))

    exams = list(by_declared_case.values())
    for key, members in dicom_groups.items():
        exams.append(Exam(case=_dicom_group_case(members, root, key), series=members))
    exams.extend(single_files)

    exams.sort(key=lambda exam: exam.case)
    _unique_case_names(exams)
    for exam in exams:
        choose_series_per_view(exam)
    return exams


def _selection_key(series: SeriesInput) -> tuple:
    """Sort key of the series choice: most voxels, then smallest in-plane voxel area, then name."""
    voxels = int(np.prod(series.size)) if series.size else 0
    in_plane_area = _in_plane_area(series)
    return (-voxels, in_plane_area, series.name, str(series.path), series.series_uid or "")


def _in_plane_area(series: SeriesInput) -> float:
    if not series.spacing:
        return float("inf")
    # The largest spacing is treated as the through-plane one, matching detect_view for
    # anisotropic scans; for isotropic scans any two axes give the same area.
    spacing = sorted(series.spacing)
    return float(spacing[0] * spacing[1])


def choose_series_per_view(exam: Exam) -> None:
    """Fill ``exam.chosen`` with one series per detected view and record errors and skipped series."""
    by_view: dict[str, list[SeriesInput]] = {}
    for series in exam.series:
        if series.error:
            exam.errors.append(series.error)
            continue
        if series.declared_view is not None and series.declared_view != series.view:
            exam.errors.append(
                f"{series.label} is named as {series.declared_view} but its geometry says {series.view} "
                f"(slice normal {series.obliquity_degrees:.1f} degrees from the {series.view} axis). "
                f"Rename it to the detected view or fix the direction in its header."
            )
            continue
        by_view.setdefault(series.view, []).append(series)

    # NOTE: localizer (scout) series are not recognised as such. They lose the choice only because
    # they have fewer voxels, and a localizer in a folder named {case}_{view} makes the exam invalid.
    for view in VIEWS:
        candidates = sorted(by_view.get(view, []), key=_selection_key)
        if not candidates:
            continue
        exam.chosen[view] = candidates[0]
        for other in candidates[1:]:
            reason = f"another {view} series was chosen: {candidates[0].label}"
            exam.skipped.append((other, reason))
        if len(candidates) > 1:
            logger.info(
                "Exam %s has %d %s series; using %s (%s voxels, the most; ties go to the finest in-plane spacing).",
                exam.case, len(candidates), view, candidates[0].label, "x".join(str(v) for v in candidates[0].size),
            )


def discover_exams(input_folder: str | os.PathLike) -> list[Exam]:
    """Find, inspect and group the scans below ``input_folder``; raise when there are none."""
    series_list = find_series(input_folder)
    if not series_list:
        raise FileNotFoundError(
            f"No scans found in {input_folder}. Supported: {', '.join(io.SUPPORTED_FILE_ENDINGS)} files and DICOM "
            f"series folders."
        )
    for series in series_list:
        detect_series_view(series)
    return group_into_exams(series_list, input_folder)
