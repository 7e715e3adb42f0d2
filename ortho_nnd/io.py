"""Reading and writing 3D scans with their geometry through SimpleITK.

Supported inputs: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd) and DICOM
series folders. Every reader returns a ``SimpleITK.Image``, so size, spacing, origin and direction travel with
the voxels. Every writer writes to a temporary file and renames it, so an interrupted run never
leaves a half-written file under the final name.
"""
from __future__ import annotations

import contextlib
import gzip
import locale
import math
import struct
import zlib
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

logger = logging.getLogger(__name__)

SUPPORTED_FILE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")

# DICOM tags read for the fingerprint: slice thickness and spacing between slices (mm).
DICOM_SLICE_THICKNESS_TAG = "0018|0050"
DICOM_SPACING_BETWEEN_SLICES_TAG = "0018|0088"
DICOM_STUDY_UID_TAG = "0020|000d"
DICOM_PATIENT_ID_TAG = "0010|0020"
DICOM_SERIES_DESCRIPTION_TAG = "0008|103e"


class ImageReadError(ValueError):
    """Raised when a scan cannot be read or is not a single-channel 3D image."""


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series found in a folder."""

    folder: Path
    series_uid: str
    files: tuple[str, ...]
    study_uid: str
    patient_id: str
    description: str


def file_ending_of(path: str | Path) -> str:
    """Return the supported file ending of ``path`` ('' for a folder), or raise ImageReadError."""
    name = Path(path).name.lower()
    if Path(path).is_dir():
        return ""
    for ending in SUPPORTED_FILE_ENDINGS:
        if name.endswith(ending):
            return ending
    raise ImageReadError(
        f"Unsupported file type: {path}. Supported: {', '.join(SUPPORTED_FILE_ENDINGS)} or a DICOM series folder."
    )


def strip_file_ending(name: str) -> str:
    """Return ``name`` without a supported image file ending (unchanged when it has none)."""
    lowered = name.lower()
    for ending in SUPPORTED_FILE_ENDINGS:
        if lowered.endswith(ending):
            return name[: -len(ending)]
    return name


@contextlib.contextmanager
def preserved_locale():
    """Restore the process locale afterwards: GDCM's DICOM code switches LC_ALL to "C" and leaves it
    there (seen with SimpleITK 2.5), which turns Python's default text encoding into ASCII."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def list_dicom_series(folder: str | Path) -> list[DicomSeries]:
    """List the DICOM series directly inside ``folder``, distinguished by series instance UID."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageReadError(f"DICOM folder not found: {folder}")

    with preserved_locale():
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or ()
    found = []
    for uid in series_ids:
        with preserved_locale():
            files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        header = _read_dicom_header(files[0])
        found.append(
            DicomSeries(
                folder=folder,
                series_uid=uid,
                files=files,
                study_uid=header.get(DICOM_STUDY_UID_TAG, ""),
                patient_id=header.get(DICOM_PATIENT_ID_TAG, ""),
                description=header.get(DICOM_SERIES_DESCRIPTION_TAG, ""),
            )
        )
    return found


def _read_dicom_header(file_name: str) -> dict[str, str]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(file_name)
    reader.LoadPrivateTagsOff()
    with preserved_locale():
        reader.ReadImageInformation()
    return {key: reader.GetMetaData(key).strip() for key in reader.GetMetaDataKeys()}


def read_dicom_series(folder: str | Path, series_uid: str | None = None) -> sitk.Image:
    """Read one DICOM series from ``folder``.

    With several series in the folder, ``series_uid`` chooses one; without it the error lists the
    UIDs. The slice thickness and spacing between slices of the first file are copied into the
    image's metadata dictionary under the DICOM tags above.
    """
    series = list_dicom_series(folder)
    if not series:
        raise ImageReadError(f"No DICOM series found in {folder}. Check that it contains .dcm files of one series.")

    if series_uid is None:
        if len(series) > 1:
            listing = "; ".join(f"{s.series_uid} ({len(s.files)} files, '{s.description}')" for s in series)
            raise ImageReadError(
                f"{folder} contains {len(series)} DICOM series: {listing}. Put each series in its own folder "
                f"or choose one by series UID."
            )
        chosen = series[0]
    else:
        matching = [s for s in series if s.series_uid == series_uid]
        if not matching:
            raise ImageReadError(f"Series UID {series_uid} not found in {folder}; found {[s.series_uid for s in series]}.")
        chosen = matching[0]

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(chosen.files))
    # ITK prints a warning to stderr for slice positions that differ by less than a micrometre,
    # which is common in real series. The warning is switched off during this read only.
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        with preserved_locale():
            image = reader.Execute()
    except RuntimeError as error:
        raise ImageReadError(f"Failed to read the DICOM series {chosen.series_uid} in {folder}: {error}") from error
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)

    header = _read_dicom_header(chosen.files[0])
    for tag in (DICOM_SLICE_THICKNESS_TAG, DICOM_SPACING_BETWEEN_SLICES_TAG, DICOM_STUDY_UID_TAG, DICOM_PATIENT_ID_TAG):
        if tag in header:
            image.SetMetaData(tag, header[tag])
    return _validate_single_channel_3d(image, folder)


def read_image(path: str | Path, series_uid: str | None = None) -> sitk.Image:
    """Read a scan from a file or a DICOM series folder and check that it is single-channel 3D."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"Image not found: {path}")
    if path.is_dir():
        return read_dicom_series(path, series_uid)

    file_ending_of(path)
    check_nifti_complete(path)
    try:
        with preserved_locale():
            image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise ImageReadError(f"Failed to read {path}: {str(error).strip().splitlines()[-1]}. The file may be corrupt or truncated.") from error
    return _validate_single_channel_3d(image, path)


# NIfTI-1 and NIfTI-2 header sizes (bytes), which also tell the byte order of the header.
NIFTI1_HEADER_SIZE = 348
NIFTI2_HEADER_SIZE = 540
# Bytes decompressed per read when measuring a .nii.gz file.
GZIP_CHUNK_BYTES = 1 << 20


def _nifti_expected_bytes(header: bytes) -> int | None:
    """Return header offset plus image bytes from a NIfTI-1/2 header, or None when it is not one."""
    for order in ("<", ">"):
        size = struct.unpack(order + "i", header[:4])[0]
        if size == NIFTI1_HEADER_SIZE and len(header) >= NIFTI1_HEADER_SIZE:
            dims = struct.unpack(order + "8h", header[40:56])
            bitpix = struct.unpack(order + "h", header[72:74])[0]
            offset = struct.unpack(order + "f", header[108:112])[0]
        elif size == NIFTI2_HEADER_SIZE and len(header) >= NIFTI2_HEADER_SIZE:
            bitpix = struct.unpack(order + "h", header[14:16])[0]
            dims = struct.unpack(order + "8q", header[16:80])
            offset = struct.unpack(order + "q", header[168:176])[0]
        else:
            continue
        count = dims[0] if 1 <= dims[0] <= 7 else 0
        voxels = math.prod(max(1, d) for d in dims[1:count + 1])
        return int(max(offset, size)) + voxels * max(bitpix, 8) // 8
    return None


def check_nifti_complete(path: Path) -> None:
    """Raise ImageReadError when a NIfTI file is shorter than its header specifies.

    ITK 5.4 fills the missing end of a truncated .nii or .nii.gz file with zeros instead of
    failing (NRRD and MetaImage readers do fail), so a cut-off download would pass as a scan.
    """
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        total = 0
        header = b""
        try:
            with gzip.open(path, "rb") as stream:
                while chunk := stream.read(GZIP_CHUNK_BYTES):
                    if len(header) < NIFTI2_HEADER_SIZE:
                        header += chunk[: NIFTI2_HEADER_SIZE - len(header)]
                    total += len(chunk)
        except (EOFError, OSError, zlib.error) as error:
            raise ImageReadError(f"{path} is truncated or corrupt ({error}). Copy or export the file again.") from error
    elif name.endswith(".nii"):
        total = path.stat().st_size
        with open(path, "rb") as stream:
            header = stream.read(NIFTI2_HEADER_SIZE)
    else:
        return

    expected = _nifti_expected_bytes(header)
    if expected is not None and total < expected:
        raise ImageReadError(
            f"{path} is truncated: its header describes {expected} bytes but the file contains {total}. "
            f"Copy or export the file again."
        )


def _validate_single_channel_3d(image: sitk.Image, path: str | Path) -> sitk.Image:
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(
            f"{path} has {image.GetNumberOfComponentsPerPixel()} components per voxel; ortho_nnd needs one "
            f"channel per file. Split vector or RGB images into separate files."
        )
    if image.GetDimension() == 4:
        if image.GetSize()[3] != 1:
            raise ImageReadError(
                f"{path} is 4D with size {image.GetSize()}; ortho_nnd needs 3D scans. Split the time points or "
                f"echoes into separate files and use one of them."
            )
        image = image[:, :, :, 0]
    if image.GetDimension() != 3:
        raise ImageReadError(f"{path} is {image.GetDimension()}D with size {image.GetSize()}; ortho_nnd needs 3D scans.")
    return image


def write_image(image: sitk.Image, path: str | Path, compress: bool = True) -> Path:
    """Write ``image`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ending = file_ending_of(path) if not path.is_dir() else ""
    if not ending:
        raise ImageReadError(f"Cannot write an image to {path}: give a file name ending in {', '.join(SUPPORTED_FILE_ENDINGS)}.")
    if ending in (".mhd", ".nhdr"):
        # Header/data pairs cannot be renamed as one file, so these are written in place.
        sitk.WriteImage(image, str(path), compress)
        return path

    temporary = path.parent / f".tmp_{uuid.uuid4().hex}{ending}"
    try:
        sitk.WriteImage(image, str(temporary), compress)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    return path


def geometry_of(image: sitk.Image) -> dict:
    """Return size, spacing, origin and direction of ``image`` as JSON-compatible lists."""
    return {
        "size": [int(v) for v in image.GetSize()],
        "spacing": [float(v) for v in image.GetSpacing()],
        "origin": [float(v) for v in image.GetOrigin()],
        "direction": [float(v) for v in image.GetDirection()],
    }


# Tolerances for "same grid": spacing and origin in mm, direction as cosine components.
SPACING_TOLERANCE_MM = 1e-3
ORIGIN_TOLERANCE_MM = 1e-2
DIRECTION_TOLERANCE = 1e-4


def geometry_difference(a: dict, b: dict) -> list[str]:
    """List the geometry fields in which ``a`` and ``b`` (from geometry_of) differ beyond the tolerances."""
    problems = []
    if list(a["size"]) != list(b["size"]):
        problems.append("size")
    if np.max(np.abs(np.subtract(a["spacing"], b["spacing"]))) > SPACING_TOLERANCE_MM:
        problems.append("spacing")
    if np.max(np.abs(np.subtract(a["origin"], b["origin"]))) > ORIGIN_TOLERANCE_MM:
        problems.append("origin")
    if np.max(np.abs(np.subtract(a["direction"], b["direction"]))) > DIRECTION_TOLERANCE:
        problems.append("direction")
    return problems


def format_geometry(geometry: dict) -> str:
    """Format a geometry dictionary on one line for error messages."""
    direction = ", ".join(f"{v:.4f}" for v in geometry["direction"])
    return (
        f"size {tuple(geometry['size'])}, spacing {tuple(round(v, 5) for v in geometry['spacing'])}, "
        f"origin {tuple(round(v, 3) for v in geometry['origin'])}, direction ({direction})"
    )


def image_from_array(array: np.ndarray, geometry: dict | sitk.Image) -> sitk.Image:
    """Wrap a numpy array (SimpleITK axis order z, y, x) in an image with the given geometry."""
    if isinstance(geometry, sitk.Image):
        geometry = geometry_of(geometry)
    expected = tuple(reversed(geometry["size"]))
    if tuple(array.shape) != expected:
        raise ValueError(f"Array shape {array.shape} does not match the geometry size {geometry['size']} (expected array shape {expected}).")
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(geometry["spacing"])
    image.SetOrigin(geometry["origin"])
    image.SetDirection(geometry["direction"])
    return image


def slice_thickness_info(image: sitk.Image) -> dict:
    """Return slice thickness and spacing between slices (mm) from DICOM metadata, None where absent."""
    info = {}
    for key, tag in (("slice_thickness", DICOM_SLICE_THICKNESS_TAG), ("spacing_between_slices", DICOM_SPACING_BETWEEN_SLICES_TAG)):
        value = image.GetMetaData(tag) if image.HasMetaDataKey(tag) else None
        try:
            info[key] = float(value) if value not in (None, "") else None
        except ValueError:
            info[key] = None
    return info


def find_images(folder: str | Path, endings: Sequence[str] = SUPPORTED_FILE_ENDINGS) -> list[Path]:
    """List image files and DICOM series folders directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for child in sorted(folder.iterdir()):
        if child.name.startswith("."):
            continue
        if child.is_dir():
            found.append(child)
        elif any(child.name.lower().endswith(e) for e in endings):
            found.append(child)
    return found
