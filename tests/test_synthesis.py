"""Tests of label-map synthesis on a small synthetic map and on the real knee label maps."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ortho_nnd.cli.synthesize_from_labels import main as synthesize_main
from ortho_nnd.phantom.grid import VIEWS
from ortho_nnd.synthesis import DEFAULT_KNEE_LABELS, synthesize_dataset
from ortho_nnd.synthesis.labels import validate_label_names

REAL_MRI = Path(__file__).resolve().parents[2] / "shared/data/real_mri"
KNEE_LABEL_MAP = REAL_MRI / "knee_labelmaps/knee_b_labels.nii.gz"
SLICE_NORMAL_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}
# Coarse output grids keep the tests fast.
FAST = dict(in_plane_spacing_range=(1.2, 1.5), slice_thickness_range=(3.0, 4.0), supersampling=3)


def sample_source_at(label: sitk.Image, source: sitk.Image) -> np.ndarray:
    """Sample ``source`` at the voxel centres of ``label`` by nearest neighbour, with numpy only."""
    size = label.GetSize()
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    index = np.stack([xx, yy, zz], axis=-1).reshape(-1, 3).astype(np.float64)
    direction = np.asarray(label.GetDirection()).reshape(3, 3)
    world = (index * label.GetSpacing()) @ direction.T + label.GetOrigin()

    source_direction = np.asarray(source.GetDirection()).reshape(3, 3)
    source_index = (world - source.GetOrigin()) @ source_direction / source.GetSpacing()
    rounded = np.rint(source_index).astype(int)
    inside = np.all((rounded >= 0) & (rounded < np.asarray(source.GetSize())), axis=1)
    source_array = sitk.GetArrayFromImage(source)
    values = np.zeros(len(world), dtype=source_array.dtype)
    values[inside] = source_array[rounded[inside, 2], rounded[inside, 1], rounded[inside, 0]]
    return values.reshape(size[::-1])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


@pytest.fixture(scope="module")
def small_label_map(tmp_path_factory) -> Path:
    """A 60 x 50 x 40 map with a ball (label 5) and a slab (label 6) on an oblique PIR grid."""
    zz, yy, xx = np.meshgrid(np.arange(40), np.arange(50), np.arange(60), indexing="ij")
    array = np.zeros((40, 50, 60), dtype=np.uint8)
    array[(xx - 30) ** 2 + (yy - 20) ** 2 + ((zz - 20) * 1.5) ** 2 < 15 ** 2] = 5
    array[(yy > 35) & (yy < 45) & (xx > 10) & (xx < 50) & (zz > 5) & (zz < 35)] = 6
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.8, 1.2))
    image.SetOrigin((12.0, -30.0, 40.0))
    # Sagittal PIR rotated by 8 degrees, like a real oblique sagittal series.
    angle = np.deg2rad(8.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    pir = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]]).T
    image.SetDirection(tuple((rotation @ pir).ravel()))
    path = tmp_path_factory.mktemp("maps") / "ball.nii.gz"
    sitk.WriteImage(image, str(path))
    return path


def test_small_map_dataset(small_label_map, tmp_path):
    dataset = synthesize_dataset([small_label_map], tmp_path, 902, "Synth", exams_per_map=2, seed=3,
                                 label_names={"background": 0, "ball": 5, "slab": 6}, **FAST)
    dataset_json = json.loads((dataset / "dataset.json").read_text(encoding="utf-8"))
    assert dataset_json["labelled_views"] == list(VIEWS)
    assert dataset_json["labels"] == {"background": 0, "ball": 5, "slab": 6}
    assert dataset_json["numTraining"] == 2
    source = sitk.ReadImage(str(small_label_map))

    for case in ("ball_001", "ball_002"):
        for view in VIEWS:
            image = sitk.ReadImage(str(dataset / "imagesTr" / f"{case}_{view}.nii.gz"))
            label = sitk.ReadImage(str(dataset / "labelsTr" / f"{case}_{view}.nii.gz"))
            assert image.GetSize() == label.GetSize()
            assert np.allclose(image.GetOrigin(), label.GetOrigin(), atol=1e-4)
            assert np.allclose(image.GetDirection(), label.GetDirection(), atol=1e-6)
            assert np.allclose(image.GetSpacing(), label.GetSpacing())
            normal = np.asarray(image.GetDirection()).reshape(3, 3)[:, 2]
            assert np.argmax(np.abs(normal)) == SLICE_NORMAL_AXIS[view], (case, view)
            assert 3.0 <= image.GetSpacing()[2] <= 4.0

            written = sitk.GetArrayFromImage(label)
            expected = sample_source_at(label, source)
            for value in (5, 6):
                assert dice(written == value, expected == value) > 0.99, (case, view, value)


def test_image_follows_labels(small_label_map, tmp_path):
    dataset = synthesize_dataset([small_label_map], tmp_path, 903, "Synth", exams_per_map=1, seed=4,
                                 label_names={"background": 0, "ball": 5, "slab": 6}, **FAST)
    parameters = json.loads((dataset / "synthesis_parameters.json").read_text(encoding="utf-8"))["ball_001"]
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(dataset / "imagesTr" / "ball_001_sagittal.nii.gz")))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(dataset / "labelsTr" / "ball_001_sagittal.nii.gz")))
    for name, value in (("ball", 5), ("slab", 6)):
        median = np.median(image[label == value]) / 1000.0
        # Bias field (a few per cent over the small map), partial volume at the edges and noise.
        assert abs(median - parameters["label_means"][name]) < 0.1 + 0.2 * parameters["label_means"][name], name


def test_seed_reproducible(small_label_map, tmp_path):
    arrays = []
    for folder in ("a", "b"):
        dataset = synthesize_dataset([small_label_map], tmp_path / folder, 904, "Synth", exams_per_map=1, seed=5,
                                     views=("coronal",), label_names={"background": 0, "ball": 5, "slab": 6}, **FAST)
        arrays.append(sitk.GetArrayFromImage(sitk.ReadImage(str(dataset / "imagesTr" / "ball_001_coronal.nii.gz"))))
    assert np.array_equal(arrays[0], arrays[1])


def test_unknown_label_value_rejected(small_label_map, tmp_path):
    with pytest.raises(ValueError, match=r"label value\(s\) \[6\]"):
        synthesize_dataset([small_label_map], tmp_path, 905, "Synth", label_names={"background": 0, "ball": 5})


def test_label_names_checked():
    assert validate_label_names({"liver": 1}) == {"background": 0, "liver": 1}
    with pytest.raises(ValueError, match="'background' must be 0"):
        validate_label_names({"background": 3})
    with pytest.raises(ValueError, match="share a value"):
        validate_label_names({"a": 1, "b": 1})
    with pytest.raises(ValueError, match="integer from 0 to 255"):
        validate_label_names({"a": 1.5})


def test_missing_map_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        synthesize_dataset([tmp_path / "absent.nii.gz"], tmp_path, 906, "Synth")


def test_cli_runs(small_label_map, tmp_path):
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"background": 0, "ball": 5, "slab": 6}), encoding="utf-8")
    code = synthesize_main(["-i", str(small_label_map.parent), "-d", "907", "--name", "Synth", "--exams_per_map",
                            "1", "--views", "axial", "--label_names", str(names), "--in_plane_spacing", "1.5,2",
                            "-o", str(tmp_path)])
    assert code == 0
    assert (tmp_path / "Dataset907_Synth" / "labelsTr" / "ball_001_axial.nii.gz").is_file()


@pytest.mark.real_data
def test_real_knee_map_labels_match(tmp_path):
    if not KNEE_LABEL_MAP.is_file():
        pytest.skip(f"real knee label map not found at {KNEE_LABEL_MAP}")
    # Half the in-plane resolution keeps the test fast, and SimpleITK slicing keeps the geometry.
    source = sitk.ReadImage(str(KNEE_LABEL_MAP))[::2, ::2, :]
    map_path = tmp_path / "knee_b_half.nii.gz"
    sitk.WriteImage(source, str(map_path))

    dataset = synthesize_dataset([map_path], tmp_path / "raw", 908, "KneeSynth", exams_per_map=1, seed=6, **FAST)
    assert json.loads((dataset / "dataset.json").read_text(encoding="utf-8"))["labels"] == DEFAULT_KNEE_LABELS
    present = set(np.unique(sitk.GetArrayFromImage(source)).tolist()) - {0}
    for view in VIEWS:
        label = sitk.ReadImage(str(dataset / "labelsTr" / f"knee_b_half_001_{view}.nii.gz"))
        written = sitk.GetArrayFromImage(label)
        expected = sample_source_at(label, source)
        for value in present:
            if (expected == value).sum() < 50:
                continue  # a thin structure may all but vanish on a coarse grid
            assert dice(written == value, expected == value) > 0.98, (view, value)
        # Bones must survive reslicing: femur (5) and tibia (6) are large in every view.
        assert (written == 5).sum() > 1000, view
        assert (written == 6).sum() > 1000, view
