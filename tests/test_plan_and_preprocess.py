"""ortho_plan_and_preprocess end to end on small synthetic and real datasets."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ortho_nnd.cli.plan_and_preprocess import main_extract_fingerprint, main_plan_and_preprocess, main_plan_experiment, main_preprocess
from ortho_nnd.planning.plans import load_plans
from scan_factory import write_multiview_dataset


@pytest.fixture
def knee_dataset(ortho_folders):
    write_multiview_dataset(ortho_folders["raw"], num_cases=3)
    return ortho_folders


def test_full_run_writes_plans_and_arrays(knee_dataset):
    code = main_plan_and_preprocess(["-d", "101", "-np", "1", "--preset", "cpu_small", "--verify_dataset_integrity"])

    folder = knee_dataset["preprocessed"] / "Dataset101_Knee"
    plans = load_plans(folder / "plans.json")
    fingerprint = json.loads((folder / "dataset_fingerprint.json").read_text(encoding="utf-8"))
    assert code == 0
    assert sorted(plans["views"]) == ["axial", "coronal", "sagittal"]
    assert fingerprint["views"]["sagittal"]["num_labelled"] == 3
    assert fingerprint["views"]["coronal"]["num_unlabelled"] == 3
    assert fingerprint["findings"]["acl_tear"]["annotated"] == 3
    for view in ("sagittal", "coronal", "axial"):
        data = np.load(folder / f"orthoPlans_{view}" / "knee_000.npy", mmap_mode="r")
        assert data.ndim == 4
        assert data.dtype == np.float32
    seg = np.load(folder / "orthoPlans_sagittal" / "knee_000_seg.npy")
    assert seg.shape == np.load(folder / "orthoPlans_sagittal" / "knee_000.npy").shape
    assert not (folder / "orthoPlans_coronal" / "knee_000_seg.npy").exists()


def test_fingerprint_is_deterministic(knee_dataset):
    main_extract_fingerprint(["-d", "101", "-np", "1"])
    path = knee_dataset["preprocessed"] / "Dataset101_Knee" / "dataset_fingerprint.json"
    first = path.read_text(encoding="utf-8")

    main_extract_fingerprint(["-d", "101", "-np", "2", "--clean"])

    assert path.read_text(encoding="utf-8") == first


def test_preprocess_resumes_and_skips_done_cases(knee_dataset, caplog):
    main_plan_and_preprocess(["-d", "101", "-np", "1", "--preset", "cpu_small"])
    folder = knee_dataset["preprocessed"] / "Dataset101_Knee" / "orthoPlans_sagittal"
    (folder / "knee_001.json").unlink()
    mtime = (folder / "knee_000.npy").stat().st_mtime_ns

    with caplog.at_level("INFO"):
        code = main_preprocess(["-d", "101", "-np", "1"])

    assert code == 0
    assert (folder / "knee_001.json").is_file()
    assert (folder / "knee_000.npy").stat().st_mtime_ns == mtime
    assert any("Skipping 8 scans" in record.message for record in caplog.records)


def test_failing_case_named_others_finish(knee_dataset, caplog):
    main_extract_fingerprint(["-d", "101", "-np", "1"])
    main_plan_experiment(["-d", "101", "--preset", "cpu_small"])
    raw = knee_dataset["raw"] / "Dataset101_Knee"
    (raw / "imagesTr" / "knee_002_axial.nii.gz").write_bytes(b"corrupt")

    with caplog.at_level("ERROR"):
        code = main_preprocess(["-d", "101", "-np", "2"])

    folder = knee_dataset["preprocessed"] / "Dataset101_Knee"
    assert code == 1
    assert any("knee_002_axial.nii.gz" in record.getMessage() for record in caplog.records)
    assert (folder / "orthoPlans_axial" / "knee_001.json").is_file()
    assert not (folder / "orthoPlans_axial" / "knee_002.json").exists()


def test_num_parts_split_work(knee_dataset):
    main_extract_fingerprint(["-d", "101", "-np", "1"])
    main_plan_experiment(["-d", "101", "--preset", "cpu_small"])

    main_preprocess(["-d", "101", "-np", "1", "--num_parts", "2", "--part_id", "0"])
    folder = knee_dataset["preprocessed"] / "Dataset101_Knee"
    after_first = len(list(folder.glob("orthoPlans_*/*.json")))
    main_preprocess(["-d", "101", "-np", "1", "--num_parts", "2", "--part_id", "1"])
    after_second = len(list(folder.glob("orthoPlans_*/*.json")))

    assert 0 < after_first < 9
    assert after_second == 9


def test_invalid_part_id_rejected(knee_dataset):
    main_extract_fingerprint(["-d", "101", "-np", "1"])
    main_plan_experiment(["-d", "101", "--preset", "cpu_small"])

    with pytest.raises(SystemExit) as exit_info:
        main_preprocess(["-d", "101", "--num_parts", "2", "--part_id", "2"])

    assert exit_info.value.code == 2


def test_unknown_dataset_id_fails_cleanly(ortho_folders):
    assert main_plan_and_preprocess(["-d", "555"]) == 1


@pytest.mark.real_data
def test_real_scans_plan_and_preprocess(ortho_folders, real_mri_folder):
    knee = ortho_folders["raw"] / "Dataset101_RealKnee" / "imagesTr"
    knee.mkdir(parents=True)
    shutil.copyfile(real_mri_folder / "knee_dess_sagittal" / "dess_echo1.nii.gz", knee / "dess01_sagittal.nii.gz")
    shutil.copytree(real_mri_folder / "knee_t2_sagittal_dicom", knee / "t2map01_sagittal")
    (knee.parent / "dataset.json").write_text(json.dumps({"views": ["sagittal"], "labelled_views": [], "labels": {"background": 0}}), encoding="utf-8")

    abdomen = ortho_folders["raw"] / "Dataset102_Abdomen"
    (abdomen / "imagesTr").mkdir(parents=True)
    (abdomen / "labelsTr").mkdir()
    shutil.copyfile(real_mri_folder / "abdomen_mr_labeled" / "image.nii.gz", abdomen / "imagesTr" / "abdomen_0000.nii.gz")
    shutil.copyfile(real_mri_folder / "abdomen_mr_labeled" / "labels.nii.gz", abdomen / "labelsTr" / "abdomen.nii.gz")
    values = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 13, 14, 15, 19, 20, 21, 23, 24, 25, 46, 47, 48, 49]
    (abdomen / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, **{f"class_{v}": v for v in values[1:]}}, "file_ending": ".nii.gz",
    }), encoding="utf-8")

    knee_code = main_plan_and_preprocess(["-d", "101", "-np", "2", "--preset", "cpu_small", "--verify_dataset_integrity"])
    abdomen_code = main_plan_and_preprocess(["-d", "102", "-np", "1", "--preset", "cpu_small", "--verify_dataset_integrity"])

    knee_folder = ortho_folders["preprocessed"] / "Dataset101_RealKnee"
    fingerprint = json.loads((knee_folder / "dataset_fingerprint.json").read_text(encoding="utf-8"))
    t2 = json.loads((knee_folder / "orthoPlans_sagittal" / "t2map01.json").read_text(encoding="utf-8"))
    abdomen_plans = load_plans(ortho_folders["preprocessed"] / "Dataset102_Abdomen" / "plans.json")
    assert knee_code == 0
    assert abdomen_code == 0
    assert fingerprint["views"]["sagittal"]["num_scans"] == 2
    assert fingerprint["views"]["sagittal"]["slice_thickness"][0]["slice_thickness"] == pytest.approx(3.0)
    assert t2["view_detection"]["obliquity_degrees"] == pytest.approx(8.4, abs=0.2)
    assert list(abdomen_plans["views"]) == ["axial"]
    # Labels 2/3 and 46/47 are named class_N here, so mirroring stays allowed; the real names would forbid it.
    assert (ortho_folders["preprocessed"] / "Dataset102_Abdomen" / "orthoPlans_axial" / "abdomen_seg.npy").is_file()


def test_unreadable_scan_left_out_others_preprocessed(knee_dataset):
    raw = knee_dataset["raw"] / "Dataset101_Knee"
    (raw / "imagesTr" / "knee_001_coronal.nii.gz").write_bytes(b"corrupt")

    code = main_plan_and_preprocess(["-d", "101", "-np", "1", "--preset", "cpu_small"])

    folder = knee_dataset["preprocessed"] / "Dataset101_Knee"
    fingerprint = json.loads((folder / "dataset_fingerprint.json").read_text(encoding="utf-8"))
    assert code == 1
    assert len(fingerprint["failed_scans"]) == 1
    assert "knee_001_coronal.nii.gz" in fingerprint["failed_scans"][0]
    assert (folder / "orthoPlans_coronal" / "knee_000.json").is_file()
    assert (folder / "orthoPlans_sagittal" / "knee_001.json").is_file()
