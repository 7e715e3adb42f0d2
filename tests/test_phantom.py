"""Tests of the knee phantom: dataset layout, geometry, view consistency, findings, sides, determinism."""
from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk

from ortho_nnd.cli.make_demo_dataset import main as make_demo_dataset_main
from ortho_nnd.phantom import (
    FINDINGS,
    LABELS,
    TISSUES,
    VIEWS,
    evaluate_model,
    generate_phantom_dataset,
    local_to_world,
    plan_exams,
    render_acquisition,
    sample_acquisition,
    sample_subject,
    world_to_local,
)
from ortho_nnd.phantom.grid import Grid

# World axis (LPS x, y, z) that each view's slice normal must follow.
SLICE_NORMAL_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}


def label_centroid_world(label: sitk.Image, value: int) -> np.ndarray:
    """Return the world centroid of the voxels with ``value``, using SimpleITK's own geometry."""
    zyx = np.argwhere(sitk.GetArrayFromImage(label) == value)
    assert len(zyx) > 0, f"label {value} is absent"
    mean_index = zyx[:, ::-1].mean(axis=0)
    return np.asarray(label.TransformContinuousIndexToPhysicalPoint(mean_index.tolist()))


def voxel_centres_world(image: sitk.Image) -> np.ndarray:
    """Return the world position of every voxel, shape (z, y, x, 3)."""
    grid = Grid.from_image(image)
    nx, ny, nz = grid.size
    zz, yy, xx = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    index = np.stack([xx, yy, zz], axis=-1).reshape(-1, 3)
    return grid.index_to_world(index).reshape(nz, ny, nx, 3)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("raw")
    dataset = generate_phantom_dataset(folder, dataset_id=998, num_cases=3, num_test=1, num_unlabeled=1,
                                       seed=7, num_processes=1)
    return dataset


@pytest.fixture(scope="module")
def straight_subject():
    """A right knee of scale 1 without flexion, rotation or findings, at the world origin."""
    subject = sample_subject(np.random.default_rng(3), side="right")
    subject = replace(subject, scale=1.0, flexion_degrees=0.0, center=(0.0, 0.0, 0.0),
                      rotation=tuple(tuple(row) for row in np.eye(3)))
    return subject.with_findings(**{name: False for name in FINDINGS})


def test_dataset_layout(small_dataset):
    dataset_json = json.loads((small_dataset / "dataset.json").read_text(encoding="utf-8"))
    assert small_dataset.name == "Dataset998_KneePhantom"
    assert dataset_json["views"] == list(VIEWS)
    assert dataset_json["labelled_views"] == ["sagittal"]
    assert dataset_json["labels"] == LABELS
    assert dataset_json["findings"] == list(FINDINGS)
    assert set(dataset_json["findings_signs"]) == set(FINDINGS)
    assert dataset_json["numTraining"] == 3
    assert dataset_json["numTest"] == 1
    assert dataset_json["numUnlabeled"] == 1
    assert dataset_json["phantom"] == {"seed": 7, "size": "default"}

    with (small_dataset / "findings.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["case", "subject", *FINDINGS]
    cases = [row["case"] for row in rows]
    assert len(cases) == 3
    for case in cases:
        for view in VIEWS:
            assert (small_dataset / "imagesTr" / f"{case}_{view}.nii.gz").is_file()
        assert (small_dataset / "labelsTr" / f"{case}_sagittal.nii.gz").is_file()
        assert not (small_dataset / "labelsTr" / f"{case}_coronal.nii.gz").exists()
    assert len(list((small_dataset / "imagesTs").glob("*.nii.gz"))) == 3
    assert len(list((small_dataset / "labelsTs").glob("*.nii.gz"))) == 1
    assert len(list((small_dataset / "imagesUnlabeled").glob("*.nii.gz"))) == 3
    assert (small_dataset / "findingsTs.csv").is_file()


def test_written_geometry_agrees(small_dataset):
    for label_path in sorted(small_dataset.glob("labels*/*.nii.gz")):
        image_path = small_dataset / label_path.parent.name.replace("labels", "images") / label_path.name
        image, label = sitk.ReadImage(str(image_path)), sitk.ReadImage(str(label_path))
        assert label.GetSize() == image.GetSize(), label_path.name
        assert np.allclose(label.GetSpacing(), image.GetSpacing()), label_path.name
        assert np.allclose(label.GetOrigin(), image.GetOrigin(), atol=1e-4), label_path.name
        assert np.allclose(label.GetDirection(), image.GetDirection(), atol=1e-6), label_path.name
        assert label.GetPixelID() == sitk.sitkUInt8
        assert set(np.unique(sitk.GetArrayFromImage(label))) <= set(LABELS.values())


def test_slice_normal_per_view(small_dataset):
    for image_path in sorted(small_dataset.glob("images*/*.nii.gz")):
        view = image_path.name[: -len(".nii.gz")].rsplit("_", 1)[1]
        image = sitk.ReadImage(str(image_path))
        direction = np.asarray(image.GetDirection()).reshape(3, 3)
        assert np.allclose(direction.T @ direction, np.eye(3), atol=1e-5), image_path.name
        normal = direction[:, 2]
        assert np.argmax(np.abs(normal)) == SLICE_NORMAL_AXIS[view], image_path.name
        # Oblique, but by a few degrees only.
        assert np.abs(normal).max() > np.cos(np.deg2rad(6.0)), image_path.name
        assert image.GetSpacing()[2] >= 3.0, image_path.name


def test_determinism_for_seed(small_dataset):
    plan = plan_exams(3, 1, 1, seed=7)[0]
    acquisition = plan.acquisitions[VIEWS.index("sagittal")]
    image, label = render_acquisition(plan.subject, acquisition)
    written = sitk.ReadImage(str(small_dataset / "imagesTr" / f"{plan.case}_sagittal.nii.gz"))
    written_label = sitk.ReadImage(str(small_dataset / "labelsTr" / f"{plan.case}_sagittal.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(written))
    assert np.array_equal(sitk.GetArrayFromImage(label), sitk.GetArrayFromImage(written_label))

    other = plan_exams(3, 1, 1, seed=8)[0]
    assert other.subject != plan.subject


def test_cli_writes_dataset(tmp_path):
    code = make_demo_dataset_main(["-d", "997", "--cases", "1", "--test_cases", "0", "--unlabeled", "0",
                                   "-o", str(tmp_path), "-np", "1"])
    assert code == 0
    dataset = tmp_path / "Dataset997_KneePhantom"
    assert json.loads((dataset / "dataset.json").read_text(encoding="utf-8"))["numTraining"] == 1
    assert len(list((dataset / "imagesTr").glob("*.nii.gz"))) == 3


def test_existing_foreign_folder_kept(tmp_path):
    foreign = tmp_path / "Dataset996_KneePhantom"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("real data", encoding="utf-8")
    with pytest.raises(FileExistsError, match="not a phantom dataset"):
        generate_phantom_dataset(tmp_path, dataset_id=996, num_cases=1, num_test=0, num_unlabeled=0)
    assert (foreign / "notes.txt").is_file()


@pytest.fixture(scope="module")
def three_view_labels(straight_subject):
    rng = np.random.default_rng(11)
    labels = {}
    for view in VIEWS:
        acquisition = sample_acquisition(straight_subject, view, rng)
        _, labels[view] = render_acquisition(straight_subject, acquisition)
    return labels


def test_views_agree_on_model_points(straight_subject, three_view_labels):
    """Points deep inside a structure carry its label in every view's label map."""
    k = straight_subject.scale
    offset = straight_subject.condyle_offset * k
    landmarks = {
        # knee-local point (m, a, s) in mm: expected label
        (offset, -4.0 * k, 15.0 * k): "femur",
        (-offset, -4.0 * k, 15.0 * k): "femur",
        (0.0, -3.0 * k, -15.0 * k): "tibia",
        (-31.0 * k, -17.0 * k, -14.0 * k): "fibula",
        (0.0, 34.0 * k, 30.0 * k): "patella",
    }
    ball = np.random.default_rng(0).normal(size=(400, 3))
    ball /= np.linalg.norm(ball, axis=1, keepdims=True)
    for local, structure in landmarks.items():
        world = local_to_world(straight_subject, np.array([local]))[0]
        for view, label in three_view_labels.items():
            # The model must carry the label everywhere the voxel's slab and the in-plane
            # rounding could reach, or a correct geometry could still give another label.
            radius = 0.5 * label.GetSpacing()[2] + max(label.GetSpacing()[:2])
            _, around = evaluate_model(straight_subject, world + radius * ball)
            assert (around == LABELS[structure]).all(), (structure, view, "landmark too close to a boundary")

            index = label.TransformPhysicalPointToIndex(world.tolist())
            assert label[index] == LABELS[structure], (structure, view, index)


def test_views_agree_on_ligament_centroids(straight_subject, three_view_labels):
    """The cruciate ligaments' centroids land at the same world point in all views and in the model."""
    # Reference: the model sampled densely at 0.75 mm around the joint.
    grid = np.stack(np.meshgrid(np.arange(-45.0, 45.0, 0.75), np.arange(-35.0, 35.0, 0.75),
                                np.arange(-8.0, 25.0, 0.75), indexing="ij"), axis=-1).reshape(-1, 3)
    _, model_labels = evaluate_model(straight_subject, grid)

    for structure in ("acl", "pcl"):
        value = LABELS[structure]
        expected = grid[model_labels == value].mean(axis=0)
        for view, label in three_view_labels.items():
            array = sitk.GetArrayFromImage(label)
            # The structure must lie wholly inside the slab, or its centroid would be biased.
            assert not (array[0] == value).any(), (structure, view)
            assert not (array[-1] == value).any(), (structure, view)
            # Thick slices tilted by a few degrees label a thin structure unevenly along its
            # length, which moves its centroid by up to about one slice thickness.
            tolerance = label.GetSpacing()[2]
            found = label_centroid_world(label, value)
            assert np.linalg.norm(found - expected) < tolerance, (structure, view, found, expected)


@pytest.mark.parametrize("side", ["right", "left"])
def test_medial_side_in_world(straight_subject, side):
    """Medial is towards the midline: +x (patient left) for a right knee, -x for a left knee."""
    subject = straight_subject.with_side(side)
    acquisition = sample_acquisition(subject, "coronal", np.random.default_rng(5))
    _, label = render_acquisition(subject, acquisition)
    medial_x = label_centroid_world(label, LABELS["medial_meniscus"])[0]
    lateral_x = label_centroid_world(label, LABELS["lateral_meniscus"])[0]
    fibula_x = label_centroid_world(label, LABELS["fibula"])[0]
    if side == "right":
        assert medial_x > 10.0 > -10.0 > lateral_x
        assert fibula_x < -20.0
    else:
        assert medial_x < -10.0 < 10.0 < lateral_x
        assert fibula_x > 20.0


# Knee-local region (m towards medial, a towards anterior, s towards superior, in mm, scale 1)
# outside which a finding must not change any voxel, before the margin for blur and slices.
def _finding_region(finding: str, local: np.ndarray, margin: float) -> np.ndarray:
    m, a, s = local[..., 0], local[..., 1], local[..., 2]
    joint = (s > -margin) & (s < 7.0 + margin)
    regions = {
        "acl_tear": (np.abs(m) < 9.0 + margin) & (a > -16.0 - margin) & (a < 12.0 + margin)
                    & (s > -4.0 - margin) & (s < 20.0 + margin),
        "pcl_tear": (np.abs(m) < 12.0 + margin) & (a > -26.0 - margin) & (a < 8.0 + margin)
                    & (s > -6.0 - margin) & (s < 20.0 + margin),
        "medial_meniscus_tear": (m > 5.0 - margin) & joint,
        "lateral_meniscus_tear": (m < -5.0 + margin) & joint,
        "mcl_injury": m > 31.0 - margin,
        "lcl_injury": m < -31.0 + margin,
        "patellar_dislocation": a > 10.0 - margin,
        "joint_effusion": (a > 10.0 - margin) & (s > 28.0 - margin) & (np.abs(m) < 28.0 + margin),
    }
    return regions[finding]


def coarse(acquisition, in_plane_matrix: int = 48):
    """Return the acquisition on a coarser in-plane matrix over the same field of view, to save time."""
    grid = acquisition.grid
    factor = grid.size[0] / in_plane_matrix
    coarse_grid = Grid.centered(grid.center, grid.direction_matrix, (in_plane_matrix, in_plane_matrix, grid.size[2]),
                                (grid.spacing[0] * factor, grid.spacing[1] * factor, grid.spacing[2]))
    return replace(acquisition, grid=coarse_grid)


@pytest.fixture(scope="module")
def baseline_renders(straight_subject):
    rng = np.random.default_rng(21)
    acquisitions = {view: coarse(sample_acquisition(straight_subject, view, rng)) for view in VIEWS}
    images = {view: render_acquisition(straight_subject, acquisitions[view]) for view in VIEWS}
    return acquisitions, images


@pytest.fixture(scope="module")
def finding_renders(straight_subject, baseline_renders):
    """Each finding alone, rendered with the baseline's acquisitions and noise seeds."""
    acquisitions, _ = baseline_renders
    renders = {}
    for finding in FINDINGS:
        subject = straight_subject.with_findings(**{finding: True})
        renders[finding] = {view: render_acquisition(subject, acquisitions[view]) for view in VIEWS}
    return renders


@pytest.mark.parametrize("finding", FINDINGS)
def test_finding_changes_only_its_region(straight_subject, baseline_renders, finding_renders, finding):
    _, baseline = baseline_renders
    subject = straight_subject.with_findings(**{finding: True})
    changed_somewhere = False
    for view in VIEWS:
        image, label = finding_renders[finding][view]
        before = sitk.GetArrayFromImage(baseline[view][0]).astype(np.float32)
        after = sitk.GetArrayFromImage(image).astype(np.float32)
        changed = after != before
        if not changed.any():
            continue
        changed_somewhere = True

        spacing = image.GetSpacing()
        # Supersampled points lie within half a slice of the voxel centre, and the in-plane blur
        # reaches two voxels.
        margin = 0.5 * spacing[2] + 2.0 * max(spacing[:2]) + 1.0
        local = world_to_local(subject, voxel_centres_world(image).reshape(-1, 3)).reshape(*changed.shape, 3)
        outside = changed & ~_finding_region(finding, local, margin)
        assert not outside.any(), f"{finding} changed {outside.sum()} voxels outside its region in {view}"
    assert changed_somewhere, f"{finding} changed no voxel in any view"


@pytest.mark.parametrize("finding", ["acl_tear", "pcl_tear", "medial_meniscus_tear", "lateral_meniscus_tear",
                                     "mcl_injury", "lcl_injury", "joint_effusion"])
def test_finding_adds_bright_signal(baseline_renders, finding_renders, finding):
    """On fat-suppressed PD (sagittal) and T2 (axial), fluid and oedema signs make the image brighter."""
    _, baseline = baseline_renders
    total_change = 0.0
    for view in ("sagittal", "axial"):
        image, _ = finding_renders[finding][view]
        difference = sitk.GetArrayFromImage(image).astype(np.float64) - sitk.GetArrayFromImage(baseline[view][0])
        total_change += difference.sum()
    # At least the equivalent of two voxels turning from dark to fluid-bright (about 900 each).
    assert total_change > 1800.0, f"{finding}: summed intensity change {total_change:.0f}"


def test_effusion_enlarges_suprapatellar_fluid(straight_subject):
    local = np.stack(np.meshgrid(np.arange(-30.0, 30.0, 1.0), np.arange(5.0, 35.0, 1.0),
                                 np.arange(25.0, 75.0, 1.0), indexing="ij"), axis=-1).reshape(-1, 3)
    points = local_to_world(straight_subject, local)
    fluid = TISSUES.index("fluid")
    before, _ = evaluate_model(straight_subject, points)
    after, _ = evaluate_model(straight_subject.with_findings(joint_effusion=True), points)
    assert (after == fluid).sum() > 3 * (before == fluid).sum() > 0


def test_dislocation_moves_patella_laterally(straight_subject, baseline_renders, finding_renders):
    _, baseline = baseline_renders
    subject = straight_subject.with_findings(patellar_dislocation=True)
    _, label = finding_renders["patellar_dislocation"]["axial"]
    before = world_to_local(subject, label_centroid_world(baseline["axial"][1], LABELS["patella"])[None])[0]
    after = world_to_local(subject, label_centroid_world(label, LABELS["patella"])[None])[0]
    # Lateral is -m in the knee frame, and the shift is 20 mm.
    assert after[0] - before[0] < -12.0


def test_meniscal_tear_keeps_label(baseline_renders, finding_renders):
    _, baseline = baseline_renders
    _, label = finding_renders["medial_meniscus_tear"]["sagittal"]
    assert np.array_equal(sitk.GetArrayFromImage(label), sitk.GetArrayFromImage(baseline["sagittal"][1]))
