"""Image reading and writing: geometry round trip, atomic writes, DICOM series handling."""
from __future__ import annotations

import locale
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from ortho_nnd import io
from scan_factory import make_scan


@pytest.mark.parametrize("ending", [".nii.gz", ".nrrd", ".mha"])
def test_write_read_keeps_geometry(tmp_path, ending):
    image = make_scan(code="ASL", oblique_degrees=7.0)

    path = io.write_image(image, tmp_path / f"scan{ending}")
    restored = io.read_image(path)

    assert io.geometry_difference(io.geometry_of(restored), io.geometry_of(image)) == []
    assert np.array_equal(sitk.GetArrayFromImage(restored), sitk.GetArrayFromImage(image))
    assert [p.name for p in tmp_path.iterdir()] == [f"scan{ending}"]


def test_unsupported_ending_rejected(tmp_path):
    path = tmp_path / "scan.png"
    path.write_bytes(b"x")

    with pytest.raises(io.ImageReadError, match="Unsupported file type"):
        io.read_image(path)


def test_missing_file_named(tmp_path):
    with pytest.raises(io.ImageReadError, match="not found"):
        io.read_image(tmp_path / "absent.nii.gz")


@pytest.mark.real_data
def test_two_series_in_one_folder_listed(tmp_path, real_mri_folder):
    folder = tmp_path / "mixed"
    shutil.copytree(real_mri_folder / "knee_t2_sagittal_dicom", folder)
    second = tmp_path / "second"
    shutil.copytree(real_mri_folder / "knee_t2_sagittal_dicom", second)
    # Rewrite three slices of the copy under a new series UID, then put them beside the originals.
    for index, path in enumerate(sorted(second.iterdir())[:3]):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.LoadPrivateTagsOn()
        with io.preserved_locale():
            image = reader.Execute()
        for key in reader.GetMetaDataKeys():
            image.SetMetaData(key, reader.GetMetaData(key))
        image.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.999.1")
        image.SetMetaData("0008|0018", f"1.2.826.0.1.3680043.2.1125.999.1.{index}")
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"extra{index}.dcm"))
        with io.preserved_locale():
            writer.Execute(image)

    series = io.list_dicom_series(folder)

    assert len(series) == 2
    with pytest.raises(io.ImageReadError, match="contains 2 DICOM series"):
        io.read_dicom_series(folder)
    chosen = max(series, key=lambda s: len(s.files))
    assert io.read_dicom_series(folder, chosen.series_uid).GetSize()[2] == 24


@pytest.mark.real_data
def test_dicom_read_keeps_locale(real_mri_folder):
    before = locale.setlocale(locale.LC_ALL)

    image = io.read_image(real_mri_folder / "knee_t2_sagittal_dicom")

    assert locale.setlocale(locale.LC_ALL) == before
    assert image.GetSize() == (256, 256, 24)
    assert io.slice_thickness_info(image)["slice_thickness"] == pytest.approx(3.0)


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_truncated_file_rejected(tmp_path, ending):
    path = io.write_image(make_scan((30, 28, 10)), tmp_path / f"scan{ending}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(io.ImageReadError) as error:
        io.read_image(path)

    assert f"scan{ending}" in str(error.value)
