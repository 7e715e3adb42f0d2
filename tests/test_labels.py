"""Declared label values with gaps map to consecutive channels and back."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from ortho_nnd.geometry import canonical_transform, spacing_numpy_order
from ortho_nnd.labels import channel_values, channels_to_values, values_to_channels
from ortho_nnd.preprocessing.export import map_to_original
from ortho_nnd.preprocessing.preprocessor import preprocess_scan
from scan_factory import make_scan


def test_gapped_values_round_trip():
    values = channel_values([0, 5, 2, 46])
    label_map = np.array([[0, 2], [5, 46]])

    channels = values_to_channels(label_map, values)

    assert values == [0, 2, 5, 46]
    assert channels.tolist() == [[0, 1], [2, 3]]
    assert channels_to_values(channels, values).tolist() == label_map.tolist()


def test_consecutive_values_unchanged():
    label_map = np.array([0, 1, 2, 3])

    assert values_to_channels(label_map, [0, 1, 2, 3]).tolist() == [0, 1, 2, 3]


def test_background_required():
    with pytest.raises(ValueError, match="background 0"):
        channel_values([1, 2])


def test_preprocess_stores_channels_and_export_restores_values():
    image = make_scan((16, 14, 6), (0.5, 0.5, 3.0), "PIR")
    array = np.zeros(tuple(reversed(image.GetSize())), dtype=np.uint8)
    array[2:4, 3:8, 3:9] = 46
    array[1:3, 8:12, 2:6] = 11
    label = sitk.GetImageFromArray(array)
    label.CopyInformation(image)

    spacing = canonical_transform(image, "sagittal").apply_to_spacing(spacing_numpy_order(image))
    plans = {"target_spacing": spacing, "normalization": "zscore", "resampling": {}}

    result = preprocess_scan(image, plans, "sagittal", "case", label_image=label, label_values={0, 11, 46})
    restored = map_to_original(result.seg, result.properties, is_label=True, label_values=[0, 11, 46])

    assert set(np.unique(result.seg).tolist()) == {0, 1, 2}
    assert result.properties["label_channel_values"] == [0, 11, 46]
    assert np.array_equal(sitk.GetArrayFromImage(restored), array)
