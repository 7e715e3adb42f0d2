"""Each bad input gives an error that names the file, the value and the fix."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from ortho_nnd import io
from ortho_nnd.dataset import DatasetFormatError, load_raw_dataset, read_findings_csv
from ortho_nnd.integrity import DatasetIntegrityError, verify_dataset_integrity
from scan_factory import make_label, make_scan, write_multiview_dataset


@pytest.fixture
def dataset_folder(tmp_path):
    return write_multiview_dataset(tmp_path, num_cases=2)


def _problems(folder) -> str:
    with pytest.raises(DatasetIntegrityError) as error:
        verify_dataset_integrity(load_raw_dataset(folder))
    return str(error.value)


def test_clean_dataset_passes(dataset_folder):
    verify_dataset_integrity(load_raw_dataset(dataset_folder))


def test_label_geometry_mismatch_prints_both(dataset_folder):
    image = io.read_image(dataset_folder / "imagesTr" / "knee_000_sagittal.nii.gz")
    label = make_label(image)
    label.SetOrigin([v + 5.0 for v in image.GetOrigin()])
    io.write_image(label, dataset_folder / "labelsTr" / "knee_000_sagittal.nii.gz")

    message = _problems(dataset_folder)

    assert "knee_000_sagittal.nii.gz" in message
    assert "origin" in message
    assert "image: size" in message
    assert "label: size" in message


def test_undeclared_label_values_listed_with_counts(dataset_folder):
    path = dataset_folder / "labelsTr" / "knee_001_sagittal.nii.gz"
    label = io.read_image(path)
    array = sitk.GetArrayFromImage(label)
    array[0, 0, :3] = 7
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(label)
    io.write_image(bad, path)

    message = _problems(dataset_folder)

    assert "7 (3 voxels)" in message
    assert "knee_001_sagittal.nii.gz" in message


@pytest.mark.parametrize("bad_value,expected", [(np.nan, "NaN or Inf"), (np.inf, "NaN or Inf")])
def test_non_finite_voxels_rejected(dataset_folder, bad_value, expected):
    # ITK's NIfTI reader turns NaN into 0, so the bad scan is stored as MetaImage, which keeps it.
    path = dataset_folder / "imagesTr" / "knee_000_coronal.nii.gz"
    image = io.read_image(path)
    array = sitk.GetArrayFromImage(image)
    array[1, 1, 1] = bad_value
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(image)
    path.unlink()
    io.write_image(bad, path.with_name("knee_000_coronal.mha"))

    message = _problems(dataset_folder)

    assert expected in message
    assert "knee_000_coronal.mha" in message


def test_constant_image_rejected(dataset_folder):
    path = dataset_folder / "imagesTr" / "knee_000_axial.nii.gz"
    image = io.read_image(path)
    constant = sitk.GetImageFromArray(np.full(sitk.GetArrayFromImage(image).shape, 5.0, dtype=np.float32))
    constant.CopyInformation(image)
    io.write_image(constant, path)

    assert "is constant" in _problems(dataset_folder)


def test_4d_image_rejected(dataset_folder):
    path = dataset_folder / "imagesTr" / "knee_001_axial.nii.gz"
    volume = sitk.GetImageFromArray(np.random.default_rng(0).random((2, 4, 5, 6)).astype(np.float32), isVector=False)
    sitk.WriteImage(volume, str(path))

    message = _problems(dataset_folder)

    assert "4D" in message
    assert "knee_001_axial.nii.gz" in message


def test_unreadable_file_rejected(dataset_folder):
    (dataset_folder / "imagesTr" / "knee_001_coronal.nii.gz").write_bytes(b"not a nifti file")

    message = _problems(dataset_folder)

    assert "truncated or corrupt" in message
    assert "knee_001_coronal.nii.gz" in message


def test_declared_view_disagrees(dataset_folder):
    axial = make_scan((24, 20, 8), (0.6, 0.6, 4.0), "LPS")
    io.write_image(axial, dataset_folder / "imagesTr" / "knee_000_coronal.nii.gz")

    message = _problems(dataset_folder)

    assert "declared coronal" in message
    assert "indicates axial" in message


def test_all_problems_reported_at_once(dataset_folder):
    (dataset_folder / "imagesTr" / "knee_001_coronal.nii.gz").write_bytes(b"broken")
    (dataset_folder / "labelsTr" / "knee_000_sagittal.nii.gz").unlink()

    with pytest.raises(DatasetIntegrityError) as error:
        verify_dataset_integrity(load_raw_dataset(dataset_folder))

    assert len(error.value.problems) == 2


def test_bad_file_name_needs_view(dataset_folder):
    io.write_image(make_scan(), dataset_folder / "imagesTr" / "knee_009.nii.gz")

    with pytest.raises(DatasetFormatError, match="knee_009.nii.gz"):
        load_raw_dataset(dataset_folder)


def test_findings_invalid_cell(dataset_folder):
    (dataset_folder / "findings.csv").write_text("case,acl_tear,joint_effusion\nknee_000,yes,0\n", encoding="utf-8")

    with pytest.raises(DatasetFormatError, match="line 2, column 'acl_tear'"):
        read_findings_csv(dataset_folder / "findings.csv")


def test_findings_blank_is_not_annotated(dataset_folder):
    table = read_findings_csv(dataset_folder / "findings.csv", ["acl_tear", "joint_effusion"])

    assert np.isnan(table.values["knee_000"][1])
    assert table.subjects["knee_001"] == "s0"


def test_region_labels_rejected(dataset_folder):
    path = dataset_folder / "dataset.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["labels"]["whole_knee"] = [1, 2]
    path.write_text(json.dumps(data), encoding="utf-8")

    with pytest.raises(DatasetFormatError, match="region"):
        load_raw_dataset(dataset_folder)


def test_nnunet_layout_read_as_single_view(tmp_path):
    folder = tmp_path / "Dataset005_Spine"
    image = make_scan((20, 18, 6), (0.8, 0.8, 3.0), "LPS")
    io.write_image(image, folder / "imagesTr" / "spine_001_0000.nii.gz")
    io.write_image(make_label(image), folder / "labelsTr" / "spine_001.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T2"}, "labels": {"background": 0, "a": 1, "b": 2}, "numTraining": 1, "file_ending": ".nii.gz",
    }), encoding="utf-8")

    dataset = load_raw_dataset(folder)

    assert dataset.layout == "nnunet"
    assert dataset.views == ["axial"]
    assert dataset.scans[0].case == "spine_001"
    assert dataset.scans[0].label is not None
    verify_dataset_integrity(dataset)


def test_label_without_image_reported(dataset_folder):
    image = io.read_image(dataset_folder / "imagesTr" / "knee_000_sagittal.nii.gz")
    io.write_image(make_label(image), dataset_folder / "labelsTr" / "knee_099_sagittal.nii.gz")

    assert "labelsTr/knee_099_sagittal has no matching image" in _problems(dataset_folder)
