"""ortho_demo: stage runner, work folder, stage list, result reading and (slow) the whole quick demo."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from ortho_nnd.cli import demo as demo_cli
from ortho_nnd.evaluation import compute_findings_metrics, compute_segmentation_metrics, summarize_case_metrics, write_json_atomic
from ortho_nnd.experiments import demo, stages, workspace
from ortho_nnd.experiments.stages import StageError, run_stage


# ---------------------------------------------------------------- stage runner


def _fake_entry_point(monkeypatch, function):
    monkeypatch.setattr(stages, "_entry_point", lambda command: function)


def test_run_stage_records_success(monkeypatch):
    calls = []
    _fake_entry_point(monkeypatch, lambda argv: calls.append(argv) or 0)
    records = []

    record = run_stage("first", "ortho_train", ["999", "pretrain", 3], records)

    assert calls == [["999", "pretrain", "3"]]
    assert records == [record]
    assert record.name == "first"
    assert "ortho_train 999 pretrain 3" in record.command


def test_run_stage_nonzero_exit_names_stage_and_rerun(monkeypatch):
    monkeypatch.setenv("ORTHO_results", "/some/results")
    _fake_entry_point(monkeypatch, lambda argv: 2)

    with pytest.raises(StageError) as error:
        run_stage("predict test exams", "ortho_predict", ["-i", "in dir"])

    message = str(error.value)
    assert "predict test exams" in message
    assert "exit code 2" in message
    assert "ORTHO_results=/some/results ortho_predict -i 'in dir'" in message


def test_run_stage_exception_is_chained(monkeypatch):
    def broken(argv):
        raise RuntimeError("out of memory")

    _fake_entry_point(monkeypatch, broken)
    with pytest.raises(StageError, match="RuntimeError: out of memory") as error:
        run_stage("train", "ortho_train", [])
    assert isinstance(error.value.__cause__, RuntimeError)


def test_run_stage_argparse_exit_is_failure(monkeypatch):
    def argparse_error(argv):
        raise SystemExit(2)

    _fake_entry_point(monkeypatch, argparse_error)
    with pytest.raises(StageError, match="exit code 2"):
        run_stage("plan", "ortho_plan_and_preprocess", ["--bad"])


def test_run_stage_unknown_command():
    with pytest.raises(ValueError, match="Unknown command 'ortho_nothing'"):
        run_stage("x", "ortho_nothing", [])


def test_stage_commands_are_console_scripts():
    setup_text = (Path(__file__).resolve().parents[1] / "setup.py").read_text()
    for command, target in stages.COMMANDS.items():
        assert f'"{command}={target}"' in setup_text


# ---------------------------------------------------------------- work folder


def test_work_dir_rejects_foreign_folder(tmp_path):
    (tmp_path / "thesis.tex").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        workspace.prepare_work_dir(tmp_path, demo.DEMO_MARKER, fresh=True)
    assert (tmp_path / "thesis.tex").read_text() == "keep me"


def test_work_dir_rerun_clears_only_ortho_folders(tmp_path):
    work_dir = workspace.prepare_work_dir(tmp_path / "work", demo.DEMO_MARKER, fresh=True)
    for folder in workspace.ortho_folders(work_dir).values():
        folder.mkdir()
        (folder / "old.txt").write_text("old")
    (work_dir / "notes.txt").write_text("mine")

    workspace.prepare_work_dir(work_dir, demo.DEMO_MARKER, fresh=True)

    for folder in workspace.ortho_folders(work_dir).values():
        assert not folder.exists()
    assert (work_dir / "notes.txt").read_text() == "mine"


def test_ortho_environment_restores_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("ORTHO_raw", "/before/raw")
    monkeypatch.delenv("ORTHO_results", raising=False)
    folders = workspace.ortho_folders(tmp_path)

    with workspace.ortho_environment(folders):
        assert os.environ["ORTHO_raw"] == str(tmp_path / "raw")
        assert os.environ["ORTHO_results"] == str(tmp_path / "results")
        assert (tmp_path / "preprocessed").is_dir()

    assert os.environ["ORTHO_raw"] == "/before/raw"
    assert "ORTHO_results" not in os.environ


# ---------------------------------------------------------------- settings and stage list


def test_quick_sizes_and_explicit_overrides():
    parser = demo_cli.build_parser()

    quick = demo_cli.settings_from_args(parser.parse_args(["--quick"]))
    overridden = demo_cli.settings_from_args(parser.parse_args(["--quick", "--cases", "7", "--iterations", "3"]))
    default = demo_cli.settings_from_args(parser.parse_args([]))

    assert quick.cases == demo.QUICK_SIZES["cases"]
    assert quick.seg_iterations == demo.QUICK_SIZES["seg_iterations"]
    assert overridden.cases == 7
    assert (overridden.pretrain_iterations, overridden.seg_iterations, overridden.cls_iterations) == (3, 3, 3)
    assert default.cases == demo.DemoSettings(work_dir=Path(".")).cases
    assert default.work_dir == demo_cli.DEFAULT_WORK_DIR


@pytest.mark.parametrize("field, value, message", [
    ("cases", 4, "at least 5 training exams"),
    ("test_cases", 0, "at least 1 test exam"),
    ("seg_iterations", 0, "seg_iterations 0"),
    ("dataset_id", 1000, "dataset_id 1000"),
])
def test_demo_settings_reject_invalid(tmp_path, field, value, message):
    settings = demo.DemoSettings(work_dir=tmp_path, **{field: value})
    with pytest.raises(ValueError, match=message):
        settings.check()


def test_demo_stage_list_connects_outputs_to_inputs(tmp_path):
    settings = demo.DemoSettings(work_dir=tmp_path, dataset_id=42)
    layout = demo.layout_for(settings)
    stage_list = demo.demo_stages(settings, layout, "cpu_small")
    by_name = {name: (command, argv) for name, command, argv in stage_list}

    names = [name for name, _, _ in stage_list]
    assert names.index("pretrain axial") < names.index("fine-tune segmentation") < names.index("predict test exams")
    assert names.index("fine-tune diagnosis") < names.index("predict test exams") < names.index("evaluate test segmentation")
    assert names[-1] == "summarize"

    assert by_name["plan and preprocess"][1][-2:] == ["--preset", "cpu_small"]
    assert by_name["fine-tune segmentation"][1][:3] == ["42", "seg", "fold0"]
    assert by_name["fine-tune diagnosis"][1][:3] == ["42", "cls", "fold0"]

    predict = by_name["predict test exams"][1]
    prediction_folder = predict[predict.index("-o") + 1]
    assert predict[predict.index("-i") + 1] == str(layout.raw_dataset / "imagesTs")
    segmentation = by_name["evaluate test segmentation"][1]
    assert segmentation[segmentation.index("-p") + 1] == prediction_folder
    assert segmentation[segmentation.index("-r") + 1] == str(layout.raw_dataset / "labelsTs")
    findings = by_name["evaluate test diagnosis"][1]
    assert findings[findings.index("-p") + 1] == str(Path(prediction_folder) / "findings.csv")
    assert findings[findings.index("-r") + 1] == str(layout.raw_dataset / "findingsTs.csv")
    assert layout.dataset_name == "Dataset042_KneePhantom"


# ---------------------------------------------------------------- results


def _write_test_summaries(layout: demo.DemoLayout) -> None:
    """Write evaluation summaries in the evaluation package's own format."""
    labels = {"background": 0, "femur": 1, "tibia": 2}
    reference = np.zeros((6, 8, 8), dtype=np.int16)
    reference[1:4, 1:4, 1:4] = 1
    reference[1:4, 5:7, 5:7] = 2
    prediction = reference.copy()
    prediction[1:4, 5:7, 5:7] = 0  # tibia missed entirely
    metrics = compute_segmentation_metrics(prediction, reference, (1.0, 1.0, 1.0), labels)
    write_json_atomic(summarize_case_metrics([{"case": "knee_0001_sagittal", "metrics": metrics}], labels),
                      layout.test_evaluation / "segmentation_summary.json")

    probabilities = np.array([[0.9, 0.2], [0.1, 0.8], [0.8, 0.6], [0.3, 0.4]])
    references = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=float)
    write_json_atomic(compute_findings_metrics(probabilities, references, ["effusion", "tear"], n_bootstrap=10),
                      layout.test_evaluation / "findings_summary.json")


def test_collect_results_reads_evaluation_format(tmp_path):
    layout = demo.layout_for(demo.DemoSettings(work_dir=tmp_path))
    _write_test_summaries(layout)

    results = demo.collect_results(layout)

    assert results["dice_per_structure"]["femur"] == pytest.approx(1.0)
    assert results["dice_per_structure"]["tibia"] == pytest.approx(0.0)
    assert results["mean_foreground_dice"] == pytest.approx(0.5)
    assert results["macro_auc"] == pytest.approx(1.0)
    assert results["macro_auc_findings"] == 2
    assert results["test_cases"] == 1


def test_run_demo_wiring_with_recorded_stages(tmp_path, monkeypatch):
    """run_demo runs every stage in order inside the work folder and prints the test results."""
    settings = demo.DemoSettings(work_dir=tmp_path / "work", preset="cpu_small")
    layout = demo.layout_for(settings)
    seen = []

    def record_stage(name, command, argv, records=None):
        seen.append((name, command, os.environ["ORTHO_results"]))
        if name == "evaluate test diagnosis":
            _write_test_summaries(layout)
        record = stages.StageRecord(name, command, 0.5)
        records.append(record)
        return record

    monkeypatch.setattr(demo, "run_stage", record_stage)
    summary = demo.run_demo(settings)

    assert [name for name, _, _ in seen] == [name for name, _, _ in demo.demo_stages(settings, layout, "cpu_small")]
    assert {results for _, _, results in seen} == {str(layout.work_dir / "results")}
    stored = json.loads((layout.work_dir / demo.DEMO_SUMMARY).read_text())
    assert stored["results"]["mean_foreground_dice"] == pytest.approx(0.5)
    text = demo.format_summary(summary)
    assert "femur                    1.000" in text
    assert "Diagnosis macro AUC: 1.000" in text
    assert str(layout.results_dataset / "report.html") in text


def test_demo_cli_reports_stage_failure(tmp_path, monkeypatch, capsys):
    def fail(name, command, argv, records=None):
        raise StageError(f"Stage '{name}' failed with exit code 1")

    monkeypatch.setattr(demo, "run_stage", fail)
    code = demo_cli.main(["--work_dir", str(tmp_path / "work"), "--preset", "cpu_small"])
    assert code == 1


# ---------------------------------------------------------------- the real thing


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path, capsys):
    import SimpleITK as sitk

    code = demo_cli.main(["--quick", "--work_dir", str(tmp_path / "work")])
    assert code == 0

    work_dir = tmp_path / "work"
    summary = json.loads((work_dir / demo.DEMO_SUMMARY).read_text())
    dice = summary["results"]["mean_foreground_dice"]
    assert dice is not None and 0.0 <= dice <= 1.0
    assert summary["results"]["test_cases"] == demo.QUICK_SIZES["test_cases"]
    assert Path(summary["paths"]["report"]).is_file()

    images = work_dir / "raw" / "Dataset999_KneePhantom" / "imagesTs"
    for image_file in sorted(images.glob("*_sagittal.nii.gz")):
        prediction = sitk.ReadImage(str(work_dir / "test_predictions" / image_file.name.replace(".nii.gz", "_seg.nii.gz")))
        image = sitk.ReadImage(str(image_file))
        assert prediction.GetSize() == image.GetSize()
        assert np.allclose(prediction.GetSpacing(), image.GetSpacing())
        assert np.allclose(prediction.GetOrigin(), image.GetOrigin())
        assert np.allclose(prediction.GetDirection(), image.GetDirection())
    assert "Dice per structure" in capsys.readouterr().out


def test_getting_started_lists_demo_commands():
    """The command list in getting_started.md is exactly what the default demo runs."""
    import re
    import shlex

    markdown = (Path(__file__).resolve().parents[1] / "documentation" / "getting_started.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S) if "ortho_make_demo_dataset" in b)
    documented = [line for line in block.strip().splitlines() if not line.startswith("export ")]

    settings = demo_cli.settings_from_args(demo_cli.build_parser().parse_args([]))
    layout = demo.layout_for(settings)
    preset = settings.preset or demo.CPU_PRESET
    expected = [
        " ".join([command, *(shlex.quote(argument) for argument in argv)]).replace(str(layout.work_dir), "ortho_demo_work")
        for _, command, argv in demo.demo_stages(settings, layout, preset)
    ]
    assert documented == expected
