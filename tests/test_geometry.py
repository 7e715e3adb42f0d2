"""View detection, obliquity and exact canonical reorientation."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk

from ortho_nnd.geometry import (
    CANONICAL_ORIENTATION, STRONG_OBLIQUITY_DEGREES, ViewMismatchError, canonical_transform, check_declared_view,
    detect_view, orientation_code, spacing_numpy_order,
)
from scan_factory import direction_from_code, make_scan

# The slice normal is index axis 2 for these thick-slice scans; its world axis decides the view.
NORMAL_LETTER_TO_VIEW = {"L": "sagittal", "R": "sagittal", "A": "coronal", "P": "coronal", "S": "axial", "I": "axial"}


def _all_orientation_codes() -> list[str]:
    codes = []
    for axes in itertools.permutations("LPS"):
        for flips in itertools.product([False, True], repeat=3):
            opposite = {"L": "R", "P": "A", "S": "I"}
            codes.append("".join(opposite[a] if f else a for a, f in zip(axes, flips)))
    return codes


ALL_CODES = _all_orientation_codes()


def test_all_48_orientation_codes_enumerated():
    assert len(ALL_CODES) == 48
    assert len(set(ALL_CODES)) == 48


@pytest.mark.parametrize("code", ALL_CODES)
def test_view_detected_for_every_code(code):
    image = make_scan((8, 7, 5), spacing=(0.5, 0.5, 3.0), code=code)

    info = detect_view(image)

    assert info.view == NORMAL_LETTER_TO_VIEW[code[2]]
    assert info.obliquity_degrees == pytest.approx(0.0, abs=1e-6)
    assert info.orientation_code == code
    assert info.through_plane_index_axis == 2


@pytest.mark.parametrize("degrees", [5.0, 12.5, 25.0, 40.0])
@pytest.mark.parametrize("code", ["PIR", "LIP", "LPS", "ASL"])
def test_oblique_angle_measured(code, degrees):
    # Tilt about a world axis perpendicular to the slice normal, so the normal moves by exactly `degrees`.
    normal_axis = int(np.argmax(np.abs(direction_from_code(code)[:, 2])))
    tilt_axis = (normal_axis + 1) % 3
    image = make_scan((8, 7, 5), spacing=(0.5, 0.5, 3.0), code=code, oblique_degrees=degrees, oblique_axis=tilt_axis)

    info = detect_view(image)

    assert info.view == NORMAL_LETTER_TO_VIEW[code[2]]
    assert info.obliquity_degrees == pytest.approx(degrees, abs=1e-6)


def test_through_plane_axis_from_largest_spacing():
    # A scan stored with its thick axis first (index axis 0) is still recognised by its spacing.
    image = make_scan((5, 8, 7), spacing=(3.5, 0.5, 0.5), code="RSA")

    info = detect_view(image)

    assert info.through_plane_index_axis == 0
    assert info.view == "sagittal"


def test_declared_view_mismatch_names_file_views_angle():
    image = make_scan(code="LPS", oblique_degrees=10.0, oblique_axis=0)

    with pytest.raises(ViewMismatchError) as error:
        check_declared_view(image, "sagittal", "knee01_sagittal.nii.gz")

    message = str(error.value)
    assert "knee01_sagittal.nii.gz" in message
    assert "sagittal" in message
    assert "axial" in message
    assert "10.0 degrees" in message


def test_strong_obliquity_warns(caplog):
    image = make_scan(code="PIR", oblique_degrees=STRONG_OBLIQUITY_DEGREES + 5, oblique_axis=1)

    with caplog.at_level("WARNING"):
        check_declared_view(image, "sagittal", "tilted.nii.gz")

    assert any("strongly oblique" in record.message and "tilted.nii.gz" in record.message for record in caplog.records)


@pytest.mark.parametrize("code", ALL_CODES)
@pytest.mark.parametrize("view", list(CANONICAL_ORIENTATION))
def test_canonical_transform_matches_dicomorient(code, view):
    image = make_scan((6, 5, 4), spacing=(0.4, 0.7, 3.0), code=code)
    array = sitk.GetArrayFromImage(image)

    transform = canonical_transform(image, view)
    reference = sitk.DICOMOrient(image, CANONICAL_ORIENTATION[view])

    assert np.array_equal(transform.apply(array), sitk.GetArrayFromImage(reference))
    assert transform.apply_to_spacing(spacing_numpy_order(image)) == pytest.approx(list(reversed(reference.GetSpacing())))
    assert np.array_equal(transform.invert(transform.apply(array)), array)
    assert orientation_code(reference) == CANONICAL_ORIENTATION[view]


def test_canonical_transform_with_channel_axis():
    image = make_scan((6, 5, 4), code="RAS")
    array = np.stack([sitk.GetArrayFromImage(image)] * 2)

    transform = canonical_transform(image, "axial")

    assert np.array_equal(transform.invert(transform.apply(array)), array)
    assert transform.apply(array).shape[0] == 2
