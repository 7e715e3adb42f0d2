"""Preprocess a scan, map the result back, and compare with the original grid and voxels."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from ortho_nnd import io
from ortho_nnd.preprocessing.export import map_to_original, probabilities_to_original_array
from ortho_nnd.preprocessing.preprocessor import preprocess_scan
from ortho_nnd.preprocessing.resampling import resample_label
from scan_factory import make_label, make_scan

CASES = [
    # (orientation code, view, spacing x/y/z in mm, oblique degrees)
    ("PIR", "sagittal", (0.5, 0.5, 3.0), 0.0),
    ("ASL", "sagittal", (0.4, 0.4, 3.5), 8.0),
    ("LIP", "coronal", (0.5, 0.5, 3.0), 0.0),
    ("RSP", "coronal", (0.6, 0.6, 4.0), 5.0),
    ("LPS", "axial", (0.5, 0.5, 3.0), 0.0),
    ("RAI", "axial", (0.7, 0.7, 2.5), 12.0),
]


def _view_plans(target_spacing) -> dict:
    return {"target_spacing": list(target_spacing), "normalization": "zscore", "resampling": {}}


def _pad_with_zeros(image: sitk.Image, pad: int = 2) -> sitk.Image:
    """Surround the scan with zero voxels so that cropping to nonzero has an effect."""
    padded = sitk.ConstantPad(image, [pad] * 3, [pad] * 3, 0.0)
    return padded


@pytest.mark.parametrize("code,view,spacing,oblique", CASES)
def test_label_roundtrip_same_spacing_is_exact(code, view, spacing, oblique):
    image = _pad_with_zeros(make_scan((18, 16, 7), spacing, code, oblique_degrees=oblique, oblique_axis=(1 if view != "coronal" else 0)))
    label = make_label(image, num_classes=4)
    canonical_spacing = None

    # Plans at the scan's own spacing: resampling is the identity, so labels must come back voxel-exact.
    from ortho_nnd.geometry import canonical_transform, spacing_numpy_order
    canonical_spacing = canonical_transform(image, view).apply_to_spacing(spacing_numpy_order(image))
    result = preprocess_scan(image, _view_plans(canonical_spacing), view, "case", label_image=label, label_values={0, 1, 2, 3})
    restored = map_to_original(result.seg, result.properties, is_label=True)

    assert io.geometry_difference(io.geometry_of(restored), io.geometry_of(image)) == []
    assert restored.GetSize() == image.GetSize()
    assert restored.GetSpacing() == image.GetSpacing()
    assert restored.GetOrigin() == image.GetOrigin()
    assert restored.GetDirection() == image.GetDirection()
    assert np.array_equal(sitk.GetArrayFromImage(restored), sitk.GetArrayFromImage(label))


@pytest.mark.parametrize("code,view,spacing,oblique", CASES)
def test_roundtrip_other_spacing_keeps_geometry(code, view, spacing, oblique):
    image = _pad_with_zeros(make_scan((18, 16, 7), spacing, code, oblique_degrees=oblique, oblique_axis=2))
    label = make_label(image, num_classes=3)

    result = preprocess_scan(image, _view_plans([2.0, 1.0, 1.0]), view, "case", label_image=label, label_values={0, 1, 2})
    restored = map_to_original(result.seg, result.properties, is_label=True)

    assert io.geometry_difference(io.geometry_of(restored), io.geometry_of(image)) == []
    agreement = np.mean(sitk.GetArrayFromImage(restored) == sitk.GetArrayFromImage(label))
    # Downsampling by up to 2.5x in-plane and back loses only boundary voxels of the blocks.
    assert agreement > 0.8


def test_probabilities_map_back_to_original_shape():
    image = _pad_with_zeros(make_scan((18, 16, 7), (0.5, 0.5, 3.0), "PIR"))
    result = preprocess_scan(image, _view_plans([3.0, 1.0, 1.0]), "sagittal", "case")
    probabilities = np.random.default_rng(0).random((3, *result.data.shape[1:])).astype(np.float32)

    original = probabilities_to_original_array(probabilities, result.properties)
    restored = map_to_original(probabilities, result.properties, is_label=False)

    assert original.shape == (3, *reversed(image.GetSize()))
    assert restored.GetSize() == image.GetSize()
    # Outside the nonzero crop the background class has probability 1.
    assert original[0, 0, 0, 0] == pytest.approx(1.0)


def test_preprocessed_data_is_canonical_and_normalised():
    image = make_scan((18, 16, 7), (0.5, 0.5, 3.0), "ASL")

    result = preprocess_scan(image, _view_plans([3.0, 1.0, 1.0]), "sagittal", "case")

    # Sagittal canonical order puts the left-right (through-plane) axis first.
    assert result.data.shape[1] == 7
    assert result.data.dtype == np.float32
    assert abs(float(result.data.mean())) < 0.2
    assert result.properties["canonical"]["permutation"] != [0, 1, 2] or result.properties["canonical"]["flips"] != [False] * 3


def test_resample_label_keeps_thin_structure():
    label = np.zeros((4, 40, 40), dtype=np.int16)
    label[:, 20, 5:35] = 1  # a one-voxel-thick line

    downsampled = resample_label(label, (4, 30, 30), anisotropic=True)

    assert (downsampled == 1).sum() > 0
