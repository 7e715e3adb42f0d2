"""Preprocessing of one scan: canonical order, crop, normalise, resample, class locations.

``preprocess_scan`` is used both for the training data (``ortho_preprocess``) and, in memory, for
new scans at prediction time, so both paths produce identical arrays for identical inputs.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ortho_nnd import io
from ortho_nnd.geometry import canonical_transform, check_declared_view, spacing_numpy_order
from ortho_nnd.labels import channel_values, values_to_channels
from ortho_nnd.preprocessing.cropping import crop_to_box, nonzero_bounding_box
from ortho_nnd.preprocessing.normalization import normalize
from ortho_nnd.preprocessing.resampling import compute_new_shape, is_anisotropic, resample_image, resample_label

logger = logging.getLogger(__name__)

# Voxel positions stored per foreground class for foreground oversampling during training. A
# thousand positions keep the properties JSON small while covering even thin structures well.
MAX_CLASS_LOCATIONS = 1000


class InvalidScanError(ValueError):
    """Raised when a scan or its label map fails a check; the message names the file and the fix."""


@dataclass
class PreprocessedScan:
    """Arrays and properties of one preprocessed scan."""

    data: np.ndarray
    seg: np.ndarray | None
    properties: dict


def plans_identifier(view_plans: dict) -> str:
    """Hash the parts of a view's plans that change the preprocessed arrays."""
    relevant = {
        "target_spacing": view_plans["target_spacing"],
        "normalization": view_plans["normalization"],
        "resampling": view_plans.get("resampling", {}),
        "view": view_plans.get("view"),
    }
    return hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def check_image_values(array: np.ndarray, file_name: str) -> None:
    """Raise InvalidScanError for NaN/Inf voxels or a constant image."""
    finite = np.isfinite(array)
    if not finite.all():
        raise InvalidScanError(
            f"{file_name} contains {int((~finite).sum())} NaN or Inf voxels. Fix or re-export the scan."
        )
    if array.size and float(array.max()) == float(array.min()):
        raise InvalidScanError(f"{file_name} is constant (every voxel is {float(array.flat[0])}) and contains no image data.")


def check_label(label_image: sitk.Image, image: sitk.Image, label_values: set[int], label_name: str, image_name: str) -> np.ndarray:
    """Check a label map against its image and the declared labels; return its numpy array."""
    image_geometry = io.geometry_of(image)
    label_geometry = io.geometry_of(label_image)
    differences = io.geometry_difference(image_geometry, label_geometry)
    if differences:
        raise InvalidScanError(
            f"Label {label_name} does not match image {image_name} in {', '.join(differences)}.\n"
            f"  image: {io.format_geometry(image_geometry)}\n  label: {io.format_geometry(label_geometry)}\n"
            f"Resample the label onto the image grid or fix the header."
        )

    array = sitk.GetArrayFromImage(label_image)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise InvalidScanError(f"Label {label_name} has non-integer values; labels must be integers from {sorted(label_values)}.")
        array = array.astype(np.int64)

    values, counts = np.unique(array, return_counts=True)
    unexpected = {int(v): int(c) for v, c in zip(values, counts) if int(v) not in label_values}
    if unexpected:
        listing = ", ".join(f"{v} ({c} voxels)" for v, c in unexpected.items())
        raise InvalidScanError(
            f"Label {label_name} contains values not declared in dataset.json: {listing}. Declared: "
            f"{sorted(label_values)}. Add them to 'labels' or fix the label map."
        )
    return array


def _class_locations(seg: np.ndarray, seed: int) -> dict[str, list[list[int]]]:
    rng = np.random.default_rng(seed)
    locations = {}
    for value in np.unique(seg):
        if value <= 0:
            continue
        coordinates = np.argwhere(seg == value)
        if len(coordinates) > MAX_CLASS_LOCATIONS:
            coordinates = coordinates[rng.choice(len(coordinates), MAX_CLASS_LOCATIONS, replace=False)]
        locations[str(int(value))] = coordinates.astype(int).tolist()
    return locations


def preprocess_scan(
    image: sitk.Image,
    view_plans: dict,
    view: str,
    case: str,
    source: str = "imagesTr",
    label_image: sitk.Image | None = None,
    label_values: set[int] | None = None,
    image_name: str = "<image>",
    label_name: str = "<label>",
) -> PreprocessedScan:
    """Bring one scan (and optionally its label map) into the preprocessed space of ``view_plans``.

    With ``label_values`` the stored label map contains channel indices (see ortho_nnd.labels).
    """
    view_info = check_declared_view(image, view, image_name)
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    check_image_values(array, image_name)

    seg = None
    if label_image is not None:
        values = label_values if label_values is not None else set(range(256))
        seg = check_label(label_image, image, values, label_name, image_name)
        if label_values is not None:
            # Channel indices, so that declared labels with gaps get consecutive network outputs.
            seg = values_to_channels(seg, channel_values(label_values))

    # Reorient exactly (permutation and flips only) so the through-plane axis comes first.
    transform = canonical_transform(image, view)
    data = transform.apply(array)[None]
    spacing = transform.apply_to_spacing(spacing_numpy_order(image))
    if seg is not None:
        seg = transform.apply(seg)

    shape_before_cropping = list(data.shape[1:])
    box = nonzero_bounding_box(data, seg)
    data = crop_to_box(data, box)
    if seg is not None:
        seg = crop_to_box(seg, box)
    shape_after_cropping = list(data.shape[1:])

    data, normalization = normalize(data, view_plans["normalization"])

    target_spacing = [float(v) for v in view_plans["target_spacing"]]
    new_shape = compute_new_shape(shape_after_cropping, spacing, target_spacing)
    anisotropic = is_anisotropic(spacing)
    data = resample_image(data, new_shape, anisotropic)
    if seg is not None:
        seg = resample_label(seg, new_shape, anisotropic).astype(np.int16)

    properties = {
        "case": case,
        "view": view,
        "source": source,
        "has_label": seg is not None,
        "image_file": image_name,
        "original_geometry": io.geometry_of(image),
        "view_detection": {"obliquity_degrees": view_info.obliquity_degrees, "orientation_code": view_info.orientation_code},
        "canonical": transform.to_json(),
        "spacing_canonical": spacing,
        "shape_before_cropping": shape_before_cropping,
        "bbox_used_for_cropping": box,
        "shape_after_cropping": shape_after_cropping,
        "anisotropic": anisotropic,
        "target_spacing": target_spacing,
        "shape_after_resampling": new_shape,
        "normalization": normalization,
        "plans_identifier": plans_identifier({**view_plans, "view": view}),
    }
    if seg is not None:
        if label_values is not None:
            properties["label_channel_values"] = channel_values(label_values)
        seed = int(hashlib.sha1(case.encode()).hexdigest()[:8], 16)
        properties["class_locations"] = _class_locations(seg, seed)
    return PreprocessedScan(data=data.astype(np.float32), seg=seg, properties=properties)
