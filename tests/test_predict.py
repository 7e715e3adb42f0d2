"""ortho_predict: input grouping, series choice, model selection, outputs and failure handling."""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ortho_nnd.cli.predict import EXIT_EXAM_FAILED, EXIT_OK, EXIT_USAGE, main as predict_main
from ortho_nnd.inference.input_discovery import discover_exams
from ortho_nnd.inference.model_loading import ModelNotFoundError, resolve_task_folders
from ortho_nnd.inference.outputs import read_exam_record, rebuild_findings_table

from prediction_fixtures import FINDINGS, LABELS, THRESHOLDS, make_results, make_scan, write_dicom_series

CANONICAL_CODES = {"sagittal": "PIR", "coronal": "LIP", "axial": "LPS"}


def _write_exam(folder: Path, case: str, views=("sagittal", "coronal", "axial"), seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, view in enumerate(views):
        sitk.WriteImage(make_scan(view, CANONICAL_CODES[view], seed=seed + index), str(folder / f"{case}_{view}.nii.gz"))


@pytest.fixture(scope="module")
def results_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("results")
    make_results(root, seg_views=("sagittal",), cls_views=("sagittal", "coronal", "axial"), folds=(0, 1))
    return root


@pytest.fixture
def with_results(results_folder, monkeypatch) -> Path:
    monkeypatch.setenv("ORTHO_results", str(results_folder))
    return results_folder


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


# ---------------------------------------------------------------- grouping and series choice


def test_grouping_by_case_view_names(tmp_path):
    _write_exam(tmp_path / "scans", "knee_01")
    _write_exam(tmp_path / "scans" / "nested", "knee_02", views=("sagittal",))

    exams = discover_exams(tmp_path / "scans")

    assert [exam.case for exam in exams] == ["knee_01", "knee_02"]
    assert sorted(exams[0].chosen) == ["axial", "coronal", "sagittal"]
    assert sorted(exams[1].chosen) == ["sagittal"]
    assert all(exam.is_valid for exam in exams)


def test_files_without_view_are_own_exams(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    sitk.WriteImage(make_scan("coronal", "LIP"), str(folder / "scan_a.nii.gz"))
    # The nnU-Net channel suffix _0000 is not part of the case name.
    sitk.WriteImage(make_scan("axial", "LPS"), str(folder / "scan_b_0000.nrrd"))

    exams = discover_exams(folder)

    assert [exam.case for exam in exams] == ["scan_a", "scan_b"]
    assert list(exams[0].chosen) == ["coronal"]
    assert list(exams[1].chosen) == ["axial"]


def test_declared_view_mismatch_invalid(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    # A coronal acquisition named as sagittal.
    sitk.WriteImage(make_scan("coronal", "LIP"), str(folder / "knee_sagittal.nii.gz"))

    exams = discover_exams(folder)

    assert len(exams) == 1
    assert not exams[0].is_valid
    assert "named as sagittal" in exams[0].errors[0]
    assert "coronal" in exams[0].errors[0]


def test_dicom_series_grouped_by_study(tmp_path):
    study = "1.2.826.0.1.3680043.2.1125.99"
    root = tmp_path / "dicom"
    write_dicom_series(root / "subject7" / "sag", make_scan("sagittal", "PIR"), "1.2.3.10.1", study_uid=study)
    write_dicom_series(root / "subject7" / "cor", make_scan("coronal", "LIP"), "1.2.3.10.2", study_uid=study)
    write_dicom_series(root / "other" / "ax", make_scan("axial", "LPS"), "1.2.3.11.1", study_uid="1.2.3.999", patient_id="P2")

    exams = discover_exams(root)

    assert [exam.case for exam in exams] == ["ax", "subject7"]
    assert sorted(exams[1].chosen) == ["coronal", "sagittal"]
    assert exams[1].chosen["sagittal"].series_uid == "1.2.3.10.1"


def test_several_series_per_folder(tmp_path):
    # Two sagittal series in one folder: the one with more voxels is chosen, the other is logged.
    folder = tmp_path / "dicom" / "exam1"
    small = make_scan("sagittal", "PIR")
    large = sitk.Resample(small, [small.GetSize()[0] * 2, small.GetSize()[1] * 2, small.GetSize()[2]],
                          sitk.Transform(), sitk.sitkLinear, small.GetOrigin(),
                          [small.GetSpacing()[0] / 2, small.GetSpacing()[1] / 2, small.GetSpacing()[2]], small.GetDirection())
    write_dicom_series(folder, small, "1.2.3.20.1", description="small")
    write_dicom_series(folder / "tmp", large, "1.2.3.20.2", description="large")
    for path in (folder / "tmp").iterdir():
        path.rename(folder / f"large_{path.name}")
    (folder / "tmp").rmdir()

    exams = discover_exams(tmp_path / "dicom")

    assert len(exams) == 1
    assert exams[0].chosen["sagittal"].series_uid == "1.2.3.20.2"
    assert len(exams[0].skipped) == 1
    assert exams[0].skipped[0][0].series_uid == "1.2.3.20.1"


def test_empty_input_folder_fails(tmp_path, with_results):
    (tmp_path / "empty").mkdir()

    exit_code = predict_main(["-i", str(tmp_path / "empty"), "-o", str(tmp_path / "out")])

    assert exit_code == EXIT_USAGE


# ---------------------------------------------------------------- model selection


def test_model_resolution_rules(tmp_path, monkeypatch):
    monkeypatch.setenv("ORTHO_results", str(tmp_path / "results"))
    (tmp_path / "results").mkdir()
    with pytest.raises(ModelNotFoundError, match="Trained datasets"):
        resolve_task_folders(None, None)

    dataset_folder = make_results(tmp_path / "results", seg_views=("sagittal",), cls_views=None)
    found_dataset, tasks = resolve_task_folders(None, None)
    assert found_dataset == dataset_folder
    assert [task.name for task in tasks] == ["seg_sagittal"]

    _, tasks = resolve_task_folders(None, str(dataset_folder / "seg_sagittal"))
    assert [task.name for task in tasks] == ["seg_sagittal"]

    with pytest.raises(ModelNotFoundError, match="checkpoint_best.pth"):
        resolve_task_folders("101", None, "checkpoint_best.pth")

    second = tmp_path / "results" / "Dataset102_Other"
    (second / "cls" / "fold_0").mkdir(parents=True)
    (second / "cls" / "fold_0" / "checkpoint_final.pth").write_bytes((dataset_folder / "seg_sagittal" / "fold_0" / "checkpoint_final.pth").read_bytes())
    with pytest.raises(ModelNotFoundError, match="Dataset102_Other"):
        resolve_task_folders(None, None)


def test_missing_fold_rejected(tmp_path, with_results):
    _write_exam(tmp_path / "in", "knee", views=("sagittal",))

    exit_code = predict_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-d", "101", "-f", "7"])

    assert exit_code == EXIT_USAGE
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- full runs


def test_full_exam_outputs(tmp_path, with_results):
    _write_exam(tmp_path / "in", "knee_01")

    exit_code = predict_main([
        "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-d", "101",
        "--save_probabilities", "--overlay", "--disable_tta",
    ])

    out = tmp_path / "out"
    assert exit_code == EXIT_OK
    for name in ["knee_01_sagittal_seg.nii.gz", "knee_01_sagittal_probabilities.npz", "knee_01_sagittal_probabilities.json",
                 "knee_01_overlay.png", "knee_01_findings.json", "labels.json", "findings.csv"]:
        assert (out / name).is_file(), name
    assert json.loads((out / "labels.json").read_text(encoding="utf-8"))["labels"] == LABELS

    probabilities = np.load(out / "knee_01_sagittal_probabilities.npz")["probabilities"]
    image = sitk.ReadImage(str(tmp_path / "in" / "knee_01_sagittal.nii.gz"))
    assert probabilities.dtype == np.float16
    assert probabilities.shape == (len(LABELS), *sitk.GetArrayFromImage(image).shape)
    np.testing.assert_allclose(probabilities.astype(np.float32).sum(axis=0), 1.0, atol=5e-3)
    segmentation = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "knee_01_sagittal_seg.nii.gz")))
    # The labels come from the float32 probabilities, so they may differ from the argmax of the
    # stored float16 values only where the two largest probabilities round to nearly the same value.
    differing = segmentation != np.argmax(probabilities, axis=0)
    top_two = np.sort(probabilities.astype(np.float32), axis=0)[-2:]
    assert np.all(top_two[1][differing] - top_two[0][differing] <= 1e-3)

    record = read_exam_record(out / "knee_01_findings.json")
    assert record is not None
    assert record["views_used"] == {"seg": ["sagittal"], "cls": ["sagittal", "coronal", "axial"]}
    assert record["fusion"] == "gated"
    assert Path(record["models"]["classification"]["task_folder"]).name == "cls_gated"
    assert sorted(record["view_weights"]) == sorted(FINDINGS)
    for finding in FINDINGS:
        weights = record["view_weights"][finding]
        assert sum(weights.values()) == pytest.approx(1.0, abs=1e-4)
        entry = record["findings"][finding]
        assert entry["threshold"] == pytest.approx(THRESHOLDS[finding])
        assert entry["decision"] == int(entry["probability"] >= THRESHOLDS[finding])
        assert entry["probability"] == pytest.approx(np.mean(entry["fold_probabilities"]))
        assert len(entry["fold_probabilities"]) == 2

    rows = _read_csv(out / "findings.csv")
    assert [row["case"] for row in rows] == ["knee_01"]
    assert list(rows[0]) == ["case", *FINDINGS, *(f"{name}_decision" for name in FINDINGS)]
    assert float(rows[0]["effusion"]) == pytest.approx(record["findings"]["effusion"]["probability"], abs=1e-6)


def test_missing_view_and_corrupt_file(tmp_path, with_results, caplog):
    caplog.set_level(logging.INFO)
    _write_exam(tmp_path / "in", "good", views=("sagittal", "coronal", "axial"))
    _write_exam(tmp_path / "in", "nosag", views=("coronal", "axial"), seed=5)
    (tmp_path / "in" / "broken_sagittal.nii.gz").write_bytes(b"this is not a NIfTI file")

    exit_code = predict_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-d", "101", "--disable_tta", "--tasks", "seg,cls"])

    out = tmp_path / "out"
    assert exit_code == EXIT_EXAM_FAILED
    assert (out / "good_sagittal_seg.nii.gz").is_file()
    assert read_exam_record(out / "good_findings.json") is not None

    # The exam without a sagittal series gets a diagnosis but no segmentation.
    nosag = read_exam_record(out / "nosag_findings.json")
    assert nosag is not None
    assert nosag["segmentation"] == {}
    assert nosag["views_used"]["cls"] == ["coronal", "axial"]
    assert any("no sagittal series" in warning for warning in nosag["warnings"])
    assert not (out / "nosag_sagittal_seg.nii.gz").exists()

    # The corrupt exam fails alone and leaves no record.
    assert not (out / "broken_findings.json").exists()
    assert "broken" in caplog.text
    assert "1 failed" in caplog.text
    assert [row["case"] for row in _read_csv(out / "findings.csv")] == ["good", "nosag"]


def test_continue_skips_finished_exams(tmp_path, with_results):
    _write_exam(tmp_path / "in", "first", views=("sagittal",))
    arguments = ["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-d", "101", "--disable_tta", "--tasks", "seg"]
    assert predict_main(arguments) == EXIT_OK
    record_path = tmp_path / "out" / "first_findings.json"
    first_record = record_path.read_text(encoding="utf-8")

    _write_exam(tmp_path / "in", "second", views=("sagittal",), seed=9)
    assert predict_main(arguments + ["--continue"]) == EXIT_OK

    assert record_path.read_text(encoding="utf-8") == first_record
    assert read_exam_record(tmp_path / "out" / "second_findings.json") is not None


def test_findings_table_rebuilt_from_records(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "findings.csv").write_text("case,effusion\nstale,0.9\n", encoding="utf-8")
    complete = {"case": "a", "status": "complete", "findings": {"effusion": {"probability": 0.25, "decision": 0}}}
    running = {"case": "b", "status": "running", "findings": {"effusion": {"probability": 0.75, "decision": 1}}}
    (out / "a_findings.json").write_text(json.dumps(complete), encoding="utf-8")
    (out / "b_findings.json").write_text(json.dumps(running), encoding="utf-8")

    rebuild_findings_table(out, ["effusion"])

    rows = _read_csv(out / "findings.csv")
    assert [row["case"] for row in rows] == ["a"]
    assert rows[0]["effusion"] == "0.250000"
    assert rows[0]["effusion_decision"] == "0"


def test_prediction_is_deterministic(tmp_path, with_results):
    _write_exam(tmp_path / "in", "knee", views=("sagittal", "coronal"))
    for run in ("run1", "run2"):
        assert predict_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / run), "-d", "101", "--save_probabilities", "-f", "0"]) == EXIT_OK

    first = np.load(tmp_path / "run1" / "knee_sagittal_probabilities.npz")["probabilities"]
    second = np.load(tmp_path / "run2" / "knee_sagittal_probabilities.npz")["probabilities"]
    np.testing.assert_array_equal(first, second)
    assert (tmp_path / "run1" / "findings.csv").read_text(encoding="utf-8") == (tmp_path / "run2" / "findings.csv").read_text(encoding="utf-8")


def test_parts_split_exams(tmp_path, with_results):
    for index in range(3):
        _write_exam(tmp_path / "in", f"knee{index}", views=("sagittal",), seed=index)

    arguments = ["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-d", "101", "--tasks", "seg", "--disable_tta"]
    assert predict_main(arguments + ["--num_parts", "2", "--part_id", "1"]) == EXIT_OK

    assert sorted(path.name for path in (tmp_path / "out").glob("*_findings.json")) == ["knee1_findings.json"]
    assert predict_main(arguments + ["--num_parts", "2", "--part_id", "2"]) == EXIT_USAGE


def test_unknown_task_rejected(tmp_path, with_results):
    _write_exam(tmp_path / "in", "knee", views=("sagittal",))

    assert predict_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--tasks", "seg,detect"]) == EXIT_USAGE


def test_phantom_exam_passes_through(tmp_path, monkeypatch):
    from ortho_nnd import io
    from ortho_nnd.phantom import render_acquisition, sample_acquisition, sample_subject

    # Coarse plans keep the 80 x 80 phantom scans at 4 windows each.
    make_results(tmp_path / "results", target_spacing=[6.0, 4.0, 4.0], patch_size=[16, 32, 32])
    monkeypatch.setenv("ORTHO_results", str(tmp_path / "results"))
    rng = np.random.default_rng(7)
    subject = sample_subject(rng)
    (tmp_path / "in").mkdir()
    for view in ("sagittal", "coronal", "axial"):
        image, _ = render_acquisition(subject, sample_acquisition(subject, view, rng))
        sitk.WriteImage(image, str(tmp_path / "in" / f"phantom1_{view}.nii.gz"))

    exit_code = predict_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--overlay", "--disable_tta"])

    out = tmp_path / "out"
    assert exit_code == EXIT_OK
    assert sorted(path.name for path in out.iterdir()) == [
        "findings.csv", "labels.json", "phantom1_findings.json", "phantom1_overlay.png", "phantom1_sagittal_seg.nii.gz",
    ]
    record = read_exam_record(out / "phantom1_findings.json")
    assert record["views_present"] == ["axial", "coronal", "sagittal"]
    assert all(record["series"][view]["detected_view"] == view for view in record["views_present"])
    source = io.geometry_of(sitk.ReadImage(str(tmp_path / "in" / "phantom1_sagittal.nii.gz")))
    output = io.geometry_of(sitk.ReadImage(str(out / "phantom1_sagittal_seg.nii.gz")))
    assert io.geometry_difference(output, source) == []


def test_concat_fusion_preferred_folder(tmp_path, monkeypatch):
    # With both cls and cls_gated trained, -d uses cls; concat fusion reports no view weights.
    make_results(tmp_path / "results", seg_views=(), cls_views=("sagittal", "axial"), fusion="concat")
    make_results(tmp_path / "results", seg_views=(), cls_views=("sagittal", "axial"), fusion="gated")
    monkeypatch.setenv("ORTHO_results", str(tmp_path / "results"))
    _write_exam(tmp_path / "in", "knee", views=("axial",))

    assert predict_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-d", "101"]) == EXIT_OK

    record = read_exam_record(tmp_path / "out" / "knee_findings.json")
    assert Path(record["models"]["classification"]["task_folder"]).name == "cls"
    assert record["fusion"] == "concat"
    assert record["view_weights"] is None
    assert record["views_used"] == {"seg": [], "cls": ["axial"]}
    assert not (tmp_path / "out" / "labels.json").exists()


def test_output_inside_input_rejected(tmp_path, with_results):
    _write_exam(tmp_path / "in", "knee", views=("sagittal",))

    exit_code = predict_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "in" / "predictions")])

    assert exit_code == EXIT_USAGE
    assert not (tmp_path / "in" / "predictions").exists()


def test_next_exam_prepared_during_prediction(tmp_path, monkeypatch):
    import threading

    import torch

    from ortho_nnd.inference import predictor
    from ortho_nnd.inference.input_discovery import Exam
    from ortho_nnd.inference.model_loading import ModelSet
    from ortho_nnd.inference.preparation import PreparedExam

    second_prepared = threading.Event()
    events = []

    def fake_prepare(exam, models):
        events.append(("prepare", exam.case, threading.current_thread().name))
        if exam.case == "b":
            second_prepared.set()
        return PreparedExam(exam=exam)

    def fake_predict(prepared, models, settings):
        if prepared.exam.case == "a":
            # Exam b must be prepared while exam a is still being predicted.
            assert second_prepared.wait(timeout=10), "exam b was not prepared in the background"
        events.append(("predict", prepared.exam.case, threading.current_thread().name))

    monkeypatch.setattr(predictor, "prepare_exam", fake_prepare)
    monkeypatch.setattr(predictor, "predict_exam", fake_predict)
    settings = predictor.PredictionSettings(output_folder=tmp_path / "out", device=torch.device("cpu"))

    summary = predictor.run_prediction([Exam("a"), Exam("b")], ModelSet(dataset_folder=None), settings)

    assert summary.succeeded == ["a", "b"]
    assert [event[:2] for event in events] == [("prepare", "a"), ("prepare", "b"), ("predict", "a"), ("predict", "b")]
    assert all(event[2].startswith("prepare") for event in events if event[0] == "prepare")
    assert all(event[2] == threading.main_thread().name for event in events if event[0] == "predict")
