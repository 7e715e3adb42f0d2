"""Dataset fingerprint: per-view geometry, intensity and label statistics (dataset_fingerprint.json).

Each scan of imagesTr and imagesUnlabeled is read once. Per view the fingerprint stores spacings
and shapes in canonical order (through-plane axis first), shapes after cropping to nonzero,
orientation codes, obliquity, DICOM slice thickness against spacing between slices, anisotropy,
foreground intensity percentiles, voxel counts per label and the prevalence of each finding.
Intensity samples are drawn with a generator seeded from the case id, so the fingerprint is
deterministic.
"""
from __future__ import annotations

import hashlib
import logging
import math
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from ortho_nnd import io
from ortho_nnd.dataset import RawDataset, ScanEntry, read_findings_csv, save_json
from ortho_nnd.geometry import canonical_transform, detect_view, spacing_numpy_order
from ortho_nnd.preprocessing.cropping import nonzero_bounding_box

logger = logging.getLogger(__name__)

# Foreground voxels sampled per scan for the intensity percentiles.
INTENSITY_SAMPLES_PER_SCAN = 10_000
INTENSITY_PERCENTILES = (0.5, 5.0, 50.0, 95.0, 99.5)

FINGERPRINT_VERSION = 1


def _seed_for(case: str, view: str) -> int:
    return int(hashlib.sha1(f"{case}_{view}".encode()).hexdigest()[:8], 16)


def fingerprint_scan(entry: ScanEntry) -> dict:
    """Measure one scan; returns JSON-compatible statistics or ``{"error": message}``."""
    try:
        image = io.read_image(entry.image)
        transform = canonical_transform(image, entry.view)
        view_info = detect_view(image)
        array = transform.apply(sitk.GetArrayFromImage(image).astype(np.float32))

        label = None
        if entry.label is not None:
            label = transform.apply(sitk.GetArrayFromImage(io.read_image(entry.label)))

        box = nonzero_bounding_box(array[None])
        foreground = array[label > 0] if label is not None and label.shape == array.shape and (label > 0).any() else array[array != 0]
        rng = np.random.default_rng(_seed_for(entry.case, entry.view))
        if foreground.size > INTENSITY_SAMPLES_PER_SCAN:
            foreground = rng.choice(foreground, INTENSITY_SAMPLES_PER_SCAN, replace=False)

        label_counts = {}
        if label is not None:
            values, counts = np.unique(label, return_counts=True)
            label_counts = {str(int(v)): int(c) for v, c in zip(values, counts)}

        return {
            "case": entry.case,
            "view": entry.view,
            "source": entry.source,
            "spacing": transform.apply_to_spacing(spacing_numpy_order(image)),
            "shape": list(array.shape),
            "shape_after_cropping": [stop - start for start, stop in box],
            "orientation_code": view_info.orientation_code,
            "detected_view": view_info.view,
            "obliquity_degrees": view_info.obliquity_degrees,
            **io.slice_thickness_info(image),
            "intensity_samples": [float(v) for v in foreground],
            "label_voxel_counts": label_counts,
        }
    except (io.ImageReadError, ValueError, RuntimeError) as error:
        return {"case": entry.case, "view": entry.view, "error": f"{entry.image}: {error}"}


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    array = np.asarray(values, dtype=np.float64)
    stats = {f"percentile_{p:g}": float(np.percentile(array, p)) for p in INTENSITY_PERCENTILES}
    stats.update(mean=float(array.mean()), std=float(array.std()), min=float(array.min()), max=float(array.max()))
    return stats


def _summarise_view(scans: list[dict]) -> dict:
    spacings = np.asarray([s["spacing"] for s in scans], dtype=np.float64)
    shapes = np.asarray([s["shape"] for s in scans], dtype=np.float64)
    in_plane = np.minimum(spacings[:, 1], spacings[:, 2])
    anisotropy = spacings[:, 0] / in_plane

    label_counts: dict[str, int] = {}
    for scan in scans:
        for value, count in scan["label_voxel_counts"].items():
            label_counts[value] = label_counts.get(value, 0) + count

    intensities = [v for s in scans for v in s["intensity_samples"]]
    thickness = [
        {"case": s["case"], "slice_thickness": s["slice_thickness"], "spacing_between_slices": s["spacing_between_slices"]}
        for s in scans if s["slice_thickness"] is not None or s["spacing_between_slices"] is not None
    ]
    return {
        "num_scans": len(scans),
        "num_labelled": sum(1 for s in scans if s["label_voxel_counts"]),
        "num_unlabelled": sum(1 for s in scans if not s["label_voxel_counts"]),
        "spacings": spacings.tolist(),
        "shapes": shapes.astype(int).tolist(),
        "shapes_after_cropping": [s["shape_after_cropping"] for s in scans],
        "median_spacing": np.median(spacings, axis=0).tolist(),
        "median_shape": np.median(shapes, axis=0).tolist(),
        "orientation_codes": {code: sum(1 for s in scans if s["orientation_code"] == code) for code in sorted({s["orientation_code"] for s in scans})},
        "obliquity_degrees": {"median": float(np.median([s["obliquity_degrees"] for s in scans])), "max": float(max(s["obliquity_degrees"] for s in scans))},
        "anisotropy": {"median": float(np.median(anisotropy)), "max": float(anisotropy.max())},
        "slice_thickness": thickness,
        "foreground_intensity": _percentiles(intensities),
        "label_voxel_counts": dict(sorted(label_counts.items(), key=lambda item: int(item[0]))),
        "cases": [s["case"] for s in scans],
    }


def extract_fingerprint(dataset: RawDataset, num_processes: int = 1, output_file: Path | None = None) -> dict:
    """Compute the fingerprint of ``dataset`` and write it to ``output_file`` when given.

    Scans that cannot be read are logged, listed under ``failed_scans`` and left out, so the other
    scans go on; preprocessing names them again. ValueError when no scan could be read.
    """
    entries = dataset.scans_of(sources=("imagesTr", "imagesUnlabeled"))
    all_results = _map(fingerprint_scan, entries, num_processes, "Fingerprint")

    failures = [r["error"] for r in all_results if "error" in r]
    results = [r for r in all_results if "error" not in r]
    if failures:
        logger.error("Fingerprint failed for %d scan(s), left out:\n  %s", len(failures), "\n  ".join(failures))
    if not results:
        raise ValueError(f"No scan of {dataset.folder} could be read; the first error: {failures[0]}")

    views = {}
    for view in dataset.views:
        scans = [r for r in results if r["view"] == view]
        if scans:
            views[view] = _summarise_view(scans)
        else:
            logger.warning("No scans of view %s in %s; the view gets no plans.", view, dataset.folder)

    fingerprint = {
        "fingerprint_version": FINGERPRINT_VERSION,
        "dataset_name": dataset.name,
        "layout": dataset.layout,
        "labels": dataset.labels,
        "labelled_views": dataset.labelled_views,
        "views": views,
        "num_training_cases": len(dataset.cases(("imagesTr",))),
        "num_unlabelled_cases": len(dataset.cases(("imagesUnlabeled",))),
        "findings": _finding_prevalence(dataset),
        "failed_scans": failures,
    }
    if output_file is not None:
        save_json(fingerprint, output_file)
        logger.info("Fingerprint written to %s", output_file)
    return fingerprint


def _finding_prevalence(dataset: RawDataset) -> dict:
    path = dataset.folder / "findings.csv"
    if not dataset.findings or not path.is_file():
        return {}
    table = read_findings_csv(path, dataset.findings)
    prevalence = {}
    for index, finding in enumerate(table.findings):
        column = [row[index] for row in table.values.values()]
        annotated = [v for v in column if not math.isnan(v)]
        prevalence[finding] = {
            "positive": int(sum(annotated)),
            "annotated": len(annotated),
            "prevalence": float(np.mean(annotated)) if annotated else None,
        }
    return prevalence


def _map(function, items: list, num_processes: int, description: str) -> list:
    """Apply ``function`` to ``items`` in ``num_processes`` processes with a progress bar, keeping order."""
    if num_processes <= 1 or len(items) <= 1:
        return [function(item) for item in tqdm(items, desc=description, unit="scan")]
    with ProcessPoolExecutor(max_workers=num_processes) as pool:
        return list(tqdm(pool.map(function, items), total=len(items), desc=description, unit="scan"))
