"""The real-scan examples: simulated views, dataset builders, short runs on real MRI and (slow) the example scripts.

Tests marked real_data read ../shared/data/real_mri beside the repository and skip without it.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ortho_nnd import io
from ortho_nnd.dataset import load_raw_dataset
from ortho_nnd.experiments import real_data
from ortho_nnd.experiments.simulated_views import simulate_view, view_direction, world_bounds
from ortho_nnd.experiments.stages import run_stage
from ortho_nnd.geometry import detect_view

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]

# Largest allowed gap between the field of view of a simulated view and that of its source, in
# units of the output voxel size along each axis (the output grid rounds the extent up).
FIELD_OF_VIEW_TOLERANCE_VOXELS = 1.0


def _load_example(name: str):
    path = REPOSITORY_ROOT / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _assert_same_geometry(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    assert np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
    assert np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    assert np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


# ---------------------------------------------------------------- simulated views (synthetic input)


def _sagittal_step_image() -> sitk.Image:
    """A sagittal 3D scan (PIR, 1 mm voxels) that is 0 in the anterior half and 100 in the posterior half."""
    array = np.zeros((20, 40, 40), dtype=np.float32)  # (left-right, inferior, posterior) index order reversed
    array[:, :, 20:] = 100.0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 1.0))
    image.SetDirection(tuple(view_direction("sagittal").flatten()))
    return image


@pytest.mark.parametrize("view", ["sagittal", "coronal", "axial"])
def test_view_direction_is_proper_rotation(view):
    direction = view_direction(view)
    assert np.allclose(direction.T @ direction, np.eye(3))
    assert np.linalg.det(direction) == pytest.approx(1.0)


@pytest.mark.parametrize("view", ["coronal", "axial"])
def test_simulated_view_geometry(view):
    source = _sagittal_step_image()
    simulated = simulate_view(source, view, 0.5, 3.0)

    info = detect_view(simulated)
    assert info.view == view
    assert info.obliquity_degrees == pytest.approx(0.0, abs=1e-6)
    assert simulated.GetSpacing() == pytest.approx((0.5, 0.5, 3.0))

    direction = view_direction(view)
    source_low, source_high = world_bounds(source, direction)
    output_low, output_high = world_bounds(simulated, direction)
    tolerance = FIELD_OF_VIEW_TOLERANCE_VOXELS * np.array(simulated.GetSpacing())
    assert np.all(output_low <= source_low + 1e-6)
    assert np.all(output_high >= source_high - 1e-6)
    assert np.all(output_high - source_high <= tolerance + 1e-6)


def test_simulated_slices_average_the_slice_thickness():
    # Coronal slices run along anterior-posterior, across the step. A slice whose 3 mm span is
    # two thirds posterior must be about 67, which a thin-slice sample (0 or 100) never is.
    simulated = simulate_view(_sagittal_step_image(), "coronal", 1.0, 3.0)
    array = sitk.GetArrayFromImage(simulated)  # (slices, rows, columns)
    slice_means = array[:, 5:-5, 5:-5].mean(axis=(1, 2))

    assert slice_means.min() == pytest.approx(0.0, abs=1e-3)
    assert slice_means.max() == pytest.approx(100.0, abs=1e-3)
    intermediate = slice_means[(slice_means > 1.0) & (slice_means < 99.0)]
    assert intermediate.size >= 1
    assert np.all(np.isin(np.round(intermediate), [17, 33, 50, 67, 83]))


def test_simulate_view_rejects_invalid_spacing():
    with pytest.raises(ValueError, match="both must be positive"):
        simulate_view(_sagittal_step_image(), "axial", 0.5, 0.0)
    with pytest.raises(ValueError, match="Invalid view 'oblique'"):
        simulate_view(_sagittal_step_image(), "oblique", 0.5, 3.0)


def test_missing_real_mri_names_folder_and_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="Pass --real_mri"):
        real_data.build_abdomen_dataset(tmp_path / "nowhere", tmp_path / "raw", 203)


# ---------------------------------------------------------------- real data, short


@pytest.mark.real_data
def test_knee_pretrain_dataset_from_real_scans(real_mri_folder, tmp_path):
    folder = real_data.build_knee_pretrain_dataset(real_mri_folder, tmp_path, 201)

    dataset = load_raw_dataset(folder)
    scans = {(scan.case, scan.view) for scan in dataset.scans_of(sources=("imagesUnlabeled",))}
    assert scans == {("dess", "sagittal"), ("dess", "coronal"), ("dess", "axial"), ("t2", "sagittal")}

    images = folder / "imagesUnlabeled"
    _assert_same_geometry(io.read_image(images / "dess_sagittal.nii.gz"), io.read_image(real_mri_folder / real_data.KNEE_DESS_FILE))
    t2_dicom = io.read_image(real_mri_folder / real_data.KNEE_T2_DICOM_FOLDER)
    _assert_same_geometry(io.read_image(images / "t2_sagittal.nii.gz"), t2_dicom)
    assert detect_view(t2_dicom).obliquity_degrees > 1.0  # the real series is oblique; conversion keeps it
    for view in ("coronal", "axial"):
        simulated = io.read_image(images / f"dess_{view}.nii.gz")
        assert detect_view(simulated).view == view
        assert simulated.GetSpacing()[2] == pytest.approx(real_data.SIMULATED_SLICE_THICKNESS_MM)
    assert "SIMULATED" in json.loads((folder / "dataset.json").read_text())["description"]


@pytest.mark.real_data
def test_abdomen_plan_train_predict_keeps_geometry(real_mri_folder, ortho_folders, tmp_path):
    folder = real_data.build_abdomen_dataset(real_mri_folder, ortho_folders["raw"], 203)
    labels = json.loads((folder / "dataset.json").read_text())["labels"]
    assert labels["spleen"] == 1
    assert labels["iliopsoas_right"] == 49

    run_stage("plan", "ortho_plan_and_preprocess", ["-d", 203, "-np", 1, "--preset", "cpu_small"])
    run_stage("train", "ortho_train", [203, "seg", "all", "--iterations", 2, "--pretrained", "none", "--device", "cpu"])
    predictions = tmp_path / "predictions"
    # A run from random weights is stored as seg_axial_scratch, which ortho_predict -d does not pick.
    model_folder = ortho_folders["results"] / folder.name / "seg_axial_scratch"
    run_stage("predict", "ortho_predict", ["-i", folder / "imagesTr", "-o", predictions, "-m", model_folder, "-f", "all",
                                            "--disable_tta", "--device", "cpu"])

    prediction_files = sorted(predictions.glob("*_seg.nii.gz"))
    assert len(prediction_files) == 1
    prediction = io.read_image(prediction_files[0])
    _assert_same_geometry(prediction, io.read_image(real_mri_folder / real_data.ABDOMEN_IMAGE_FILE))
    assert set(np.unique(sitk.GetArrayFromImage(prediction))) <= set(labels.values())


# ---------------------------------------------------------------- the example scripts (slow)


@pytest.mark.real_data
@pytest.mark.slow
def test_example_real_knee_pretrain(real_mri_folder, tmp_path):
    example = _load_example("real_knee_pretrain")
    checkpoints = example.run(example.build_parser().parse_args(
        ["--real_mri", str(real_mri_folder), "--work_dir", str(tmp_path / "work"), "--iterations", "2"]
    ))
    assert sorted(checkpoints) == ["axial", "coronal", "sagittal"]
    for checkpoint in checkpoints.values():
        assert checkpoint.is_file()


@pytest.mark.real_data
@pytest.mark.slow
def test_example_real_knee_segmentation(real_mri_folder, tmp_path):
    example = _load_example("real_knee_segmentation")
    report = example.run(example.build_parser().parse_args([
        "--real_mri", str(real_mri_folder), "--work_dir", str(tmp_path / "work"), "--exams_per_map", "2",
        "--pretrain_iterations", "2", "--seg_iterations", "2",
    ]))
    for name in ("dess", "t2"):
        assert report[name]["prediction_has_scan_geometry"]
        assert Path(report[name]["overlay"]).is_file()


@pytest.mark.real_data
@pytest.mark.slow
def test_example_real_abdomen(real_mri_folder, tmp_path):
    example = _load_example("real_abdomen_single_view")
    summary = example.run(example.build_parser().parse_args([
        "--real_mri", str(real_mri_folder), "--work_dir", str(tmp_path / "work"), "--pretrain_iterations", "2",
        "--seg_iterations", "2",
    ]))
    assert 0.0 <= summary["foreground_mean"]["dice"] <= 1.0
    assert len(summary["metric_per_case"]) == 1
