"""Geometry of ortho_predict outputs: same grid as the input, labels on the right voxels."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from ortho_nnd import io
from ortho_nnd.cli.predict import main as predict_main
from ortho_nnd.inference.input_discovery import discover_exams
from ortho_nnd.inference.model_loading import FoldModel, ModelSet, SegmentationModel
from ortho_nnd.inference.predictor import PredictionSettings, run_prediction

from prediction_fixtures import make_results, make_scan, rotate_direction, tiny_view_plans, write_dicom_series

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_mri"

# Geometry written to NIfTI passes through float32 header fields, so values match the input
# to about 1e-6; this tolerance is still far below any voxel size.
GEOMETRY_TOLERANCE = 1e-5

# Target spacing equal to the test scans' canonical spacing (3 mm slices, 1 mm pixels), so
# preprocessing does not resample and a pointwise network maps input voxels to output voxels.
IDENTITY_TARGET_SPACING = [3.0, 1.0, 1.0]


class ThresholdNetwork(nn.Module):
    """Pointwise two-class network: class 1 wherever the normalised intensity is above 0."""

    num_classes = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), 1000.0 * x], dim=1)


def _threshold_models(views) -> ModelSet:
    models = ModelSet(dataset_folder=None)
    for view in views:
        plans = tiny_view_plans(view, target_spacing=IDENTITY_TARGET_SPACING, patch_size=[16, 16, 16])
        fold = FoldModel("0", Path("threshold"), ThresholdNetwork(), plans)
        models.segmentation[view] = SegmentationModel(view, Path("threshold"), [fold], {"background": 0, "bright": 1})
    return models


def _assert_same_geometry(output: sitk.Image, reference: sitk.Image, name: str) -> None:
    out_geometry = io.geometry_of(output)
    ref_geometry = io.geometry_of(reference)
    assert out_geometry["size"] == ref_geometry["size"], f"{name}: size"
    np.testing.assert_allclose(out_geometry["spacing"], ref_geometry["spacing"], atol=GEOMETRY_TOLERANCE, err_msg=f"{name}: spacing")
    np.testing.assert_allclose(out_geometry["origin"], ref_geometry["origin"], atol=GEOMETRY_TOLERANCE, err_msg=f"{name}: origin")
    np.testing.assert_allclose(out_geometry["direction"], ref_geometry["direction"], atol=GEOMETRY_TOLERANCE, err_msg=f"{name}: direction")


def _expected_threshold_labels(image: sitk.Image) -> np.ndarray:
    """Return array > mean (the z-score threshold at 0) of the nonzero voxels.

    Preprocessing crops zero planes away before normalising, so in the test scans, whose only
    zero voxels are such planes, the mean is the mean of the nonzero voxels.
    """
    array = sitk.GetArrayFromImage(image).astype(np.float64)
    return (array > array[array != 0].mean()).astype(np.uint8)


ORIENTATION_CASES = [
    ("sagittal", "PIR", 0.0),
    ("sagittal", "RAS", 0.0),
    ("sagittal", "ASL", 0.0),
    ("coronal", "LIP", 0.0),
    ("coronal", "RSA", 0.0),
    ("axial", "LPS", 0.0),
    ("axial", "RAI", 0.0),
    ("sagittal", "PIR", 20.0),
    ("coronal", "LIP", 12.0),
]


@pytest.mark.parametrize("view, orientation, oblique_degrees", ORIENTATION_CASES)
def test_labels_keep_input_grid(tmp_path, view, orientation, oblique_degrees):
    image = make_scan(view, orientation, seed=3)
    if oblique_degrees:
        # Tilt about the superior-inferior axis for sagittal, about left-right for coronal.
        image = rotate_direction(image, oblique_degrees, world_axis=2 if view == "sagittal" else 0)
    # A zero margin on one side exercises cropping and pasting back.
    array = sitk.GetArrayFromImage(image)
    array[:, :, :2] = 0
    margin_image = sitk.GetImageFromArray(array)
    margin_image.CopyInformation(image)

    input_folder = tmp_path / "in"
    input_folder.mkdir()
    sitk.WriteImage(margin_image, str(input_folder / f"case1_{view}.nii.gz"))
    reference = sitk.ReadImage(str(input_folder / f"case1_{view}.nii.gz"))

    settings = PredictionSettings(output_folder=tmp_path / "out", device=torch.device("cpu"))
    summary = run_prediction(discover_exams(input_folder), _threshold_models([view]), settings)

    assert summary.failed == {}
    output = sitk.ReadImage(str(tmp_path / "out" / f"case1_{view}_seg.nii.gz"))
    _assert_same_geometry(output, reference, f"{view} {orientation}")
    predicted = sitk.GetArrayFromImage(output)
    expected = _expected_threshold_labels(reference)
    mismatched = int((predicted != expected).sum())
    assert mismatched == 0, f"{mismatched} voxels differ from the thresholded input"
    assert 0 < int(expected.sum()) < expected.size


@pytest.mark.parametrize("ending", [".nrrd", ".mha"])
def test_format_of_input_kept(tmp_path, ending):
    image = make_scan("sagittal", "PIR", seed=4)
    input_folder = tmp_path / "in"
    input_folder.mkdir()
    sitk.WriteImage(image, str(input_folder / f"case1_sagittal{ending}"))

    settings = PredictionSettings(output_folder=tmp_path / "out", device=torch.device("cpu"), use_mirroring=False)
    summary = run_prediction(discover_exams(input_folder), _threshold_models(["sagittal"]), settings)

    assert summary.failed == {}
    output_path = tmp_path / "out" / f"case1_sagittal_seg{ending}"
    assert output_path.is_file()
    output = sitk.ReadImage(str(output_path))
    _assert_same_geometry(output, image, ending)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(output), _expected_threshold_labels(image))


def test_dicom_series_output_geometry(tmp_path):
    scan = rotate_direction(make_scan("sagittal", "PIR", seed=5), 15.0, world_axis=2)
    series_folder = write_dicom_series(tmp_path / "in" / "patient1" / "t2_sag", scan, "1.2.826.0.1.3680043.2.1125.7.1")
    reference = io.read_image(series_folder)

    settings = PredictionSettings(output_folder=tmp_path / "out", device=torch.device("cpu"), use_mirroring=False)
    exams = discover_exams(tmp_path / "in")
    summary = run_prediction(exams, _threshold_models(["sagittal"]), settings)

    assert [exam.case for exam in exams] == ["t2_sag"]
    assert summary.failed == {}
    output = sitk.ReadImage(str(tmp_path / "out" / "t2_sag_sagittal_seg.nii.gz"))
    _assert_same_geometry(output, reference, "DICOM series")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(output), _expected_threshold_labels(reference))


def test_cli_geometry_with_trained_format(tmp_path, monkeypatch):
    # The full command with checkpoints on disk: random weights, but the grid must match.
    make_results(tmp_path / "results", seg_views=("sagittal",), cls_views=None)
    monkeypatch.setenv("ORTHO_results", str(tmp_path / "results"))
    input_folder = tmp_path / "in"
    input_folder.mkdir()
    oblique = rotate_direction(make_scan("sagittal", "ASL", seed=6), 10.0, world_axis=1)
    sitk.WriteImage(oblique, str(input_folder / "knee_sagittal.nii.gz"))

    exit_code = predict_main(["-i", str(input_folder), "-o", str(tmp_path / "out"), "--disable_tta"])

    assert exit_code == 0
    output = sitk.ReadImage(str(tmp_path / "out" / "knee_sagittal_seg.nii.gz"))
    _assert_same_geometry(output, sitk.ReadImage(str(input_folder / "knee_sagittal.nii.gz")), "CLI")


# ---------------------------------------------------------------- real data


def _require_real(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (../shared/data/real_mri beside the repository)")
    return path


@pytest.mark.real_data
@pytest.mark.parametrize("folder", ["knee_dess_sagittal", "knee_t2_sagittal_dicom"])
def test_real_scan_output_geometry(tmp_path, monkeypatch, folder):
    source = _require_real(REAL_DATA / folder)
    # Coarse target spacing keeps the preprocessed scans small (the DESS scan becomes 20 x 40 x 40).
    make_results(
        tmp_path / "results", seg_views=("sagittal",), cls_views=None,
        target_spacing=[6.0, 4.0, 4.0], patch_size=[16, 32, 32],
    )
    monkeypatch.setenv("ORTHO_results", str(tmp_path / "results"))

    exit_code = predict_main(["-i", str(source), "-o", str(tmp_path / "out"), "--disable_tta"])

    assert exit_code == 0
    reference = io.read_image(source if folder.endswith("dicom") else source / "dess_echo1.nii.gz")
    outputs = sorted((tmp_path / "out").glob("*_sagittal_seg.nii.gz"))
    assert len(outputs) == 1
    _assert_same_geometry(sitk.ReadImage(str(outputs[0])), reference, folder)
