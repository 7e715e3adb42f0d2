"""Output files of ``ortho_predict``: names, atomic JSON/CSV/NPZ writing and the findings table.

Every file is written to a temporary file in the output folder and renamed, so an interrupted
run leaves either the previous file or none under the final name.
"""
from __future__ import annotations

import csv
import io as text_io
import json
import logging
from pathlib import Path

import numpy as np

from ortho_nnd import io
from ortho_nnd.atomic_files import write_bytes_atomic, write_json_atomic  # noqa: F401 (write_json_atomic is used through this module)

logger = logging.getLogger(__name__)

EXAM_RECORD_SUFFIX = "_findings.json"
FINDINGS_TABLE = "findings.csv"
LABELS_FILE = "labels.json"
DECISION_SUFFIX = "_decision"
STATUS_COMPLETE = "complete"

# Output endings per input ending: .nrrd and .mha inputs keep their format. Header/data pairs
# (.nhdr, .mhd) become the single-file variant so the output can be renamed atomically, and
# .nii becomes .nii.gz.
_OUTPUT_ENDINGS = {".nii.gz": ".nii.gz", ".nii": ".nii.gz", ".nrrd": ".nrrd", ".nhdr": ".nrrd", ".mha": ".mha", ".mhd": ".mha"}
DICOM_OUTPUT_ENDING = ".nii.gz"


def output_ending(path: Path, is_dicom: bool) -> str:
    """Return the file ending of a segmentation written for the input at ``path``."""
    if is_dicom:
        return DICOM_OUTPUT_ENDING
    return _OUTPUT_ENDINGS[io.file_ending_of(path)]


def exam_record_path(output_folder: Path, case: str) -> Path:
    return output_folder / f"{case}{EXAM_RECORD_SUFFIX}"


def write_npz_atomic(path: Path, **arrays: np.ndarray) -> Path:
    """Write ``np.savez_compressed`` output atomically."""
    buffer = text_io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return write_bytes_atomic(buffer.getvalue(), Path(path))


def read_exam_record(path: Path) -> dict | None:
    """Return a per-exam record, or None when it is missing, unreadable or not complete."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("status") != STATUS_COMPLETE:
        return None
    return record


def rebuild_findings_table(output_folder: Path, findings: list[str] | None = None) -> Path | None:
    """Write findings.csv from the complete per-exam records that contain findings.

    ``findings`` fixes the column order (the current model's findings); records whose findings
    differ are left out with a warning. Without ``findings`` the first record's order is used.
    Returns the table path, or None when no record has findings (an old table is removed then).
    """
    output_folder = Path(output_folder)
    table_path = output_folder / FINDINGS_TABLE
    rows = []
    for record_path in sorted(output_folder.glob(f"*{EXAM_RECORD_SUFFIX}")):
        record = read_exam_record(record_path)
        if record is None or not record.get("findings"):
            continue
        names = list(record["findings"])
        if findings is None:
            findings = names
        if sorted(names) != sorted(findings):
            logger.warning("%s has findings %s instead of %s; it is left out of %s.", record_path, names, findings, FINDINGS_TABLE)
            continue
        rows.append(record)

    if not rows:
        table_path.unlink(missing_ok=True)
        return None

    stream = text_io.StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(["case", *findings, *(name + DECISION_SUFFIX for name in findings)])
    for record in sorted(rows, key=lambda item: item["case"]):
        values = record["findings"]
        probabilities = [f"{float(values[name]['probability']):.6f}" for name in findings]
        decisions = [str(int(values[name]["decision"])) for name in findings]
        writer.writerow([record["case"], *probabilities, *decisions])
    write_bytes_atomic(stream.getvalue().encode("utf-8"), table_path)
    logger.info("Wrote %s with %d exams.", table_path, len(rows))
    return table_path
