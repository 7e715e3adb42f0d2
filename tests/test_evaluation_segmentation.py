"""Segmentation metrics on hand-built volumes and folder evaluation with geometry checks."""
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from ortho_nnd.evaluation.segmentation import GeometryMismatchError, evaluate_segmentation_folder
from ortho_nnd.evaluation.segmentation_metrics import compute_segmentation_metrics, surface_voxels

LABELS = {"background": 0, "bone": 1, "cartilage": 2}


def cube(shape, start, size, value=1):
    array = np.zeros(shape, dtype=np.uint8)
    slices = tuple(slice(s, s + size) for s in start)
    array[slices] = value
    return array


def test_surface_voxels_of_cube():
    mask = cube((10, 10, 10), (3, 3, 3), 4).astype(bool)

    surface = surface_voxels(mask)

    # A 4x4x4 cube minus its 2x2x2 interior.
    assert surface.sum() == 64 - 8
    assert not surface[4:6, 4:6, 4:6].any()


def test_identical_masks_are_perfect():
    reference = cube((12, 12, 12), (3, 3, 3), 5)

    metrics = compute_segmentation_metrics(reference, reference, (2.0, 1.0, 0.5), {"bone": 1})["bone"]

    assert metrics["dice"] == 1.0
    assert metrics["iou"] == 1.0
    assert metrics["hd95"] == 0.0
    assert metrics["nsd"] == 1.0
    assert metrics["volume_difference_ml"] == 0.0


def test_shifted_cube_anisotropic_spacing():
    # Cubes of 4 voxels shifted by one voxel along axis 0, spacing 3 mm there.
    # Surface distances of either cube to the other (56 voxels each), counted by hand:
    # 36 voxels at 0 mm, 4 voxels at 1 mm (in-plane to the side ring), 16 at 3 mm (the far face).
    spacing = (3.0, 1.0, 1.0)
    reference = cube((16, 12, 12), (5, 4, 4), 4)
    prediction = cube((16, 12, 12), (6, 4, 4), 4)

    at_half_mm = compute_segmentation_metrics(prediction, reference, spacing, {"bone": 1}, nsd_tolerance_mm=0.5)["bone"]
    at_one_mm = compute_segmentation_metrics(prediction, reference, spacing, {"bone": 1}, nsd_tolerance_mm=1.0)["bone"]
    at_three_mm = compute_segmentation_metrics(prediction, reference, spacing, {"bone": 1}, nsd_tolerance_mm=3.0)["bone"]

    assert at_one_mm["dice"] == pytest.approx(0.75)
    assert at_one_mm["iou"] == pytest.approx(48 / 80)
    assert at_one_mm["hd95"] == pytest.approx(3.0)
    assert at_half_mm["nsd"] == pytest.approx(36 / 56)
    assert at_one_mm["nsd"] == pytest.approx(40 / 56)
    assert at_three_mm["nsd"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "axis, spacing, expected_mm",
    [(0, (3.0, 1.0, 0.5), 6.0), (2, (3.0, 1.0, 0.5), 1.0), (1, (1.0, 2.5, 1.0), 5.0)],
)
def test_hd95_scales_with_spacing(axis, spacing, expected_mm):
    # A shift of two voxels: the far faces (16 of 56 surface voxels) are two voxels apart.
    start = [6, 6, 6]
    shifted = list(start)
    shifted[axis] += 2
    reference = cube((18, 18, 18), start, 4)
    prediction = cube((18, 18, 18), shifted, 4)

    metrics = compute_segmentation_metrics(prediction, reference, spacing, {"bone": 1})["bone"]

    assert metrics["hd95"] == pytest.approx(expected_mm)


def test_volume_difference_in_ml():
    spacing = (2.0, 1.0, 1.0)
    reference = cube((10, 10, 10), (2, 2, 2), 5)
    prediction = cube((10, 10, 10), (2, 2, 2), 4)

    metrics = compute_segmentation_metrics(prediction, reference, spacing, {"bone": 1})["bone"]

    assert metrics["volume_reference_ml"] == pytest.approx(125 * 2.0 / 1000)
    assert metrics["volume_difference_ml"] == pytest.approx((64 - 125) * 2.0 / 1000)
    assert metrics["relative_volume_difference"] == pytest.approx((64 - 125) / 125)


def test_class_absent_in_both():
    reference = cube((8, 8, 8), (2, 2, 2), 3, value=1)

    metrics = compute_segmentation_metrics(reference, reference, (1, 1, 1), LABELS)["cartilage"]

    assert metrics["absent_in_both"] is True
    assert math.isnan(metrics["dice"])
    assert math.isnan(metrics["iou"])
    assert math.isnan(metrics["nsd"])
    assert math.isnan(metrics["hd95"])


def test_class_missing_in_prediction():
    reference = cube((8, 8, 8), (2, 2, 2), 3, value=1)
    prediction = np.zeros_like(reference)

    metrics = compute_segmentation_metrics(prediction, reference, (1, 1, 1), {"bone": 1})["bone"]

    assert metrics["dice"] == 0.0
    assert metrics["iou"] == 0.0
    assert metrics["nsd"] == 0.0
    assert math.isnan(metrics["hd95"])
    assert metrics["hd95_undefined"] == "empty_prediction"


def test_class_only_in_prediction():
    prediction = cube((8, 8, 8), (2, 2, 2), 3, value=1)

    metrics = compute_segmentation_metrics(prediction, np.zeros_like(prediction), (1, 1, 1), {"bone": 1})["bone"]

    assert metrics["dice"] == 0.0
    assert metrics["hd95_undefined"] == "empty_reference"
    assert math.isnan(metrics["relative_volume_difference"])


def test_background_is_not_evaluated():
    reference = cube((8, 8, 8), (2, 2, 2), 3)

    metrics = compute_segmentation_metrics(reference, reference, (1, 1, 1), LABELS)

    assert set(metrics) == {"bone", "cartilage"}


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        compute_segmentation_metrics(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), (1, 1, 1), {"bone": 1})


def write_label(array, path, spacing=(0.5, 0.5, 3.0), origin=(0.0, 0.0, 0.0)):
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))


@pytest.fixture
def label_folders(tmp_path):
    predictions = tmp_path / "predictions"
    references = tmp_path / "references"
    predictions.mkdir()
    references.mkdir()

    # case_a: perfect bone, cartilage absent in both.
    bone = cube((10, 12, 12), (2, 2, 2), 5, value=1)
    write_label(bone, references / "case_a_sagittal.nii.gz")
    write_label(bone, predictions / "case_a_sagittal_seg.nii.gz")

    # case_b: bone perfect, cartilage missed entirely.
    reference_b = bone.copy()
    reference_b[7:9, 2:6, 2:6] = 2
    write_label(reference_b, references / "case_b_sagittal.nii.gz")
    write_label(bone, predictions / "case_b_sagittal.nii.gz")
    return predictions, references


def test_folder_evaluation_summary(label_folders, tmp_path):
    predictions, references = label_folders
    output = tmp_path / "summary.json"

    summary = evaluate_segmentation_folder(predictions, references, LABELS, output_json=output)

    assert [case["case"] for case in summary["metric_per_case"]] == ["case_a_sagittal", "case_b_sagittal"]
    assert summary["mean"]["bone"]["dice"] == pytest.approx(1.0)
    # Cartilage: absent in case_a (excluded), missed in case_b (Dice 0).
    assert summary["mean"]["cartilage"]["dice"] == pytest.approx(0.0)
    assert summary["counts"]["cartilage"]["absent_in_both"] == 1
    assert summary["counts"]["cartilage"]["empty_prediction_only"] == 1
    assert summary["foreground_mean"]["dice"] == pytest.approx(0.5)

    written = json.loads(output.read_text(encoding="utf-8"))
    assert written["mean"]["cartilage"]["hd95"] is None
    assert written["settings"]["nsd_tolerance_mm"] == 1.0


def test_folder_evaluation_two_processes(label_folders):
    predictions, references = label_folders

    serial = evaluate_segmentation_folder(predictions, references, LABELS)
    parallel = evaluate_segmentation_folder(predictions, references, LABELS, num_processes=2)

    assert parallel["mean"]["bone"]["dice"] == serial["mean"]["bone"]["dice"]
    assert parallel["counts"] == serial["counts"]


def test_labels_inferred_from_references(label_folders):
    predictions, references = label_folders

    summary = evaluate_segmentation_folder(predictions, references, None)

    assert set(summary["mean"]) == {"label_1", "label_2"}


def test_geometry_mismatch_names_both_files(label_folders):
    predictions, references = label_folders
    write_label(cube((10, 12, 12), (2, 2, 2), 5), predictions / "case_a_sagittal_seg.nii.gz", spacing=(0.5, 0.5, 2.0))

    with pytest.raises(GeometryMismatchError) as error:
        evaluate_segmentation_folder(predictions, references, LABELS)

    assert "case_a_sagittal_seg.nii.gz" in str(error.value)
    assert "case_a_sagittal.nii.gz" in str(error.value)
    assert "spacing" in str(error.value)


def test_origin_mismatch_raises(label_folders):
    predictions, references = label_folders
    write_label(cube((10, 12, 12), (2, 2, 2), 5), predictions / "case_a_sagittal_seg.nii.gz", origin=(0.0, 1.0, 0.0))

    with pytest.raises(GeometryMismatchError):
        evaluate_segmentation_folder(predictions, references, LABELS)


def test_missing_prediction_listed(label_folders):
    predictions, references = label_folders
    (predictions / "case_b_sagittal.nii.gz").unlink()

    with pytest.raises(FileNotFoundError, match="case_b_sagittal"):
        evaluate_segmentation_folder(predictions, references, LABELS)

    summary = evaluate_segmentation_folder(predictions, references, LABELS, allow_missing=True)
    assert summary["missing_predictions"] == ["case_b_sagittal"]
    assert len(summary["metric_per_case"]) == 1


def test_cli_seg_writes_summary(label_folders, tmp_path):
    from ortho_nnd.cli.evaluate import main

    predictions, references = label_folders
    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text(json.dumps({"labels": LABELS}), encoding="utf-8")
    output = tmp_path / "cli_summary.json"

    code = main(["seg", "-p", str(predictions), "-r", str(references), "-l", str(dataset_json), "-o", str(output), "--nsd_tolerance", "2"])

    assert code == 0
    assert json.loads(output.read_text(encoding="utf-8"))["settings"]["nsd_tolerance_mm"] == 2.0


def test_cli_seg_missing_folder_fails(tmp_path):
    from ortho_nnd.cli.evaluate import main

    code = main(["seg", "-p", str(tmp_path / "nothing"), "-r", str(tmp_path)])

    assert code == 1


def full_volume_hd95_and_nsd(prediction, reference, spacing, tolerance):
    """Reference implementation without the bounding-box crop of the library."""
    from scipy import ndimage

    prediction_surface = surface_voxels(prediction)
    reference_surface = surface_voxels(reference)
    to_reference = ndimage.distance_transform_edt(~reference_surface, sampling=spacing)[prediction_surface]
    to_prediction = ndimage.distance_transform_edt(~prediction_surface, sampling=spacing)[reference_surface]
    hd95 = max(np.percentile(to_reference, 95), np.percentile(to_prediction, 95))
    nsd = (np.sum(to_reference <= tolerance) + np.sum(to_prediction <= tolerance)) / (to_reference.size + to_prediction.size)
    return hd95, nsd


def test_cropped_distances_match_full_volume():
    rng = np.random.default_rng(3)
    spacing = (2.0, 0.7, 0.5)
    reference = ndimage_blob(rng, (20, 24, 24))
    prediction = ndimage_blob(rng, (20, 24, 24))
    # Touch the array border so the crop clipping is exercised.
    reference[0, 5:10, 5:10] = True

    metrics = compute_segmentation_metrics(prediction.astype(np.uint8), reference.astype(np.uint8), spacing, {"bone": 1}, 1.5)["bone"]
    hd95, nsd = full_volume_hd95_and_nsd(prediction, reference, np.array(spacing), 1.5)

    assert metrics["hd95"] == pytest.approx(hd95)
    assert metrics["nsd"] == pytest.approx(nsd)


def ndimage_blob(rng, shape):
    from scipy import ndimage

    noise = ndimage.gaussian_filter(rng.random(shape), sigma=2)
    return noise > np.percentile(noise, 80)
