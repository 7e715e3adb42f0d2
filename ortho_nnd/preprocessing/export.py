"""Mapping predictions from preprocessed space back onto the original scan's grid."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ortho_nnd import io
from ortho_nnd.geometry import CanonicalTransform
from ortho_nnd.labels import channels_to_values
from ortho_nnd.preprocessing.cropping import paste_into_box
from ortho_nnd.preprocessing.resampling import resample_label, resample_probabilities


def probabilities_to_original_array(probabilities: np.ndarray, properties: dict) -> np.ndarray:
    """Resample (C, Z, Y, X) probabilities to the cropped shape, paste them into the full canonical
    extent (background probability 1 outside the crop) and undo the canonical reorientation.

    Returns a (C, z, y, x) float32 array in the original scan's numpy order.
    """
    probabilities = resample_probabilities(
        probabilities.astype(np.float32), properties["shape_after_cropping"], properties["anisotropic"]
    )
    background = np.zeros((probabilities.shape[0],), dtype=np.float32)
    background[0] = 1.0
    full = np.empty((probabilities.shape[0], *properties["shape_before_cropping"]), dtype=np.float32)
    for channel in range(probabilities.shape[0]):
        full[channel] = paste_into_box(probabilities[channel][None], properties["bbox_used_for_cropping"],
                                       properties["shape_before_cropping"], fill_value=background[channel])[0]
    return CanonicalTransform.from_json(properties["canonical"]).invert(full)


def segmentation_to_original_array(segmentation: np.ndarray, properties: dict) -> np.ndarray:
    """Resample a (Z, Y, X) label map to the cropped shape, paste it and undo the reorientation."""
    segmentation = resample_label(segmentation, properties["shape_after_cropping"], properties["anisotropic"])
    full = paste_into_box(segmentation, properties["bbox_used_for_cropping"], properties["shape_before_cropping"], 0)
    return CanonicalTransform.from_json(properties["canonical"]).invert(full)


def map_to_original(array: np.ndarray, properties: dict, is_label: bool, label_values: list[int] | None = None) -> sitk.Image:
    """Return a SimpleITK image on the original scan's grid (size, spacing, origin, direction).

    ``array`` is a label map (Z, Y, X) when ``is_label`` is true, otherwise (C, Z, Y, X) probabilities,
    whose argmax becomes the label map. ``label_values`` maps channel indices back to the declared
    label values (see ortho_nnd.labels); without it the indices are written as they are. Use
    probabilities_to_original_array to keep the probabilities.
    """
    if is_label:
        channels = segmentation_to_original_array(array, properties)
    else:
        channels = np.argmax(probabilities_to_original_array(array, properties), axis=0)
    if label_values is not None:
        values = label_values
    else:
        # Without declared values the channel indices are written as they are.
        highest = int(channels.max()) if channels.size else 0
        values = list(range(highest + 1))
    return io.image_from_array(channels_to_values(channels, values), properties["original_geometry"])
