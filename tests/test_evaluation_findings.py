"""Diagnosis metrics against hand-computed values, and the findings CSV evaluation."""
import json
import math

import numpy as np
import pytest

from ortho_nnd.evaluation.csv_io import read_validation_probabilities, write_validation_probabilities
from ortho_nnd.evaluation.findings import evaluate_findings_csv
from ortho_nnd.evaluation.findings_metrics import (
    average_precision,
    average_ranks,
    bootstrap_auc_ci,
    choose_threshold,
    compute_findings_metrics,
    expected_calibration_error,
    roc_auc,
    roc_curve,
)


def test_average_ranks_with_ties():
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_auc_hand_computed():
    # Positive-negative pairs: 0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4, so 3 of 4.
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)


def test_auc_ties_count_half():
    # Pairs: (0.5, 0.5) twice at 1/2 each, (0.9 > 0.5) twice at 1: total 3 of 4.
    assert roc_auc([0.5, 0.5, 0.5, 0.9], [0, 1, 0, 1]) == pytest.approx(0.75)
    assert roc_auc([0.3, 0.3, 0.3], [1, 0, 1]) == pytest.approx(0.5)


def test_auc_perfect_and_inverted():
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert roc_auc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0


def test_auc_one_class_is_nan():
    assert math.isnan(roc_auc([0.1, 0.2], [1, 1]))


def test_roc_curve_area_matches_auc():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(200), 1)
    labels = rng.random(200) < scores

    fpr, tpr, _ = roc_curve(scores, labels)

    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(scores, labels))


def test_average_precision_hand_computed():
    # Thresholds 0.8, 0.4, 0.35, 0.1: recall steps 0.5 at precision 1 and 0.5 at precision 2/3.
    assert average_precision([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_average_precision_ties_grouped():
    # The tied 0.5 scores switch together: recall 0 -> 1 at precision 1/3.
    assert average_precision([0.5, 0.5, 0.9], [1, 0, 0]) == pytest.approx(1 / 3)


def test_bootstrap_ci_contains_estimate_and_is_seeded():
    rng = np.random.default_rng(1)
    labels = rng.random(120) < 0.4
    scores = np.clip(labels * 0.3 + rng.random(120) * 0.7, 0, 1)
    auc = roc_auc(scores, labels)

    first = bootstrap_auc_ci(scores, labels, n_resamples=300, seed=7)
    second = bootstrap_auc_ci(scores, labels, n_resamples=300, seed=7)
    other_seed = bootstrap_auc_ci(scores, labels, n_resamples=300, seed=8)

    assert first[0] <= auc <= first[1]
    assert first[0] < first[1]
    assert first == second
    assert first != other_seed


def test_ece_exactly_calibrated_bins():
    # Each bin's mean probability equals its positive fraction.
    probabilities = [0.25] * 4 + [0.75] * 4
    labels = [1, 0, 0, 0] + [1, 1, 1, 0]

    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.0)


def test_ece_hand_computed():
    # Bin [0.9, 1.0]: mean 0.9, no positive; bin [0.1, 0.2): mean 0.1, all positive. Gaps 0.9 each.
    assert expected_calibration_error([0.9, 0.9, 0.1, 0.1], [0, 0, 1, 1]) == pytest.approx(0.9)


def test_ece_calibrated_versus_miscalibrated():
    rng = np.random.default_rng(2)
    true_probability = rng.random(20000)
    labels = rng.random(20000) < true_probability

    calibrated = expected_calibration_error(true_probability, labels)
    overconfident = expected_calibration_error(np.clip((true_probability - 0.5) * 3 + 0.5, 0, 1), labels)

    assert calibrated < 0.02
    assert overconfident > 0.1


def test_choose_threshold_separable():
    # Every midpoint between 0.2 and 0.6 separates perfectly; only 0.4 is a candidate there.
    assert choose_threshold([0.1, 0.2, 0.6, 0.7], [0, 0, 1, 1]) == pytest.approx(0.4)


def test_choose_threshold_tie_goes_closest_to_default():
    # Youden J is 0.5 at 0.225 and at 0.8; 0.225 is closer to 0.5.
    assert choose_threshold([0.1, 0.35, 0.7, 0.9], [0, 1, 0, 1]) == pytest.approx(0.225)


def test_choose_threshold_ignores_unannotated():
    assert choose_threshold([0.1, 0.2, 0.6, 0.7, 0.05], [0, 0, 1, 1, np.nan]) == pytest.approx(0.4)


def test_choose_threshold_one_class_returns_default():
    assert choose_threshold([0.1, 0.9], [1, 1]) == 0.5


def test_choose_threshold_f1_rule():
    # Positive when >= t. t=0.1 (all positive): tp 3, fp 1, F1 6/7; t=0.2: F1 4/6; t=0.45: F1 4/5.
    assert choose_threshold([0.1, 0.3, 0.6, 0.7], [1, 0, 1, 1], rule="f1") == pytest.approx(0.1)
    # Youden J on the same data: 0.45 gives sensitivity 2/3 and specificity 1.
    assert choose_threshold([0.1, 0.3, 0.6, 0.7], [1, 0, 1, 1]) == pytest.approx(0.45)
    with pytest.raises(ValueError, match="rule"):
        choose_threshold([0.1], [1], rule="accuracy")


def test_compute_findings_metrics_excludes_unannotated():
    probs = np.array([[0.1, 0.9], [0.4, 0.8], [0.35, 0.2], [0.8, 0.7], [0.99, 0.1]])
    labels = np.array([[0, 1], [0, 1], [1, np.nan], [1, 1], [np.nan, 1]])

    metrics = compute_findings_metrics(probs, labels, ["effusion", "tear"], n_bootstrap=50)

    effusion = metrics["per_finding"]["effusion"]
    assert effusion["n_annotated"] == 4
    assert effusion["auc"] == pytest.approx(0.75)
    # Threshold 0.5: tp 1 (0.8), fn 1 (0.35), tn 2.
    assert effusion["sensitivity"] == pytest.approx(0.5)
    assert effusion["specificity"] == pytest.approx(1.0)
    assert effusion["f1"] == pytest.approx(2 / 3)

    tear = metrics["per_finding"]["tear"]
    assert math.isnan(tear["auc"])
    assert "only positive" in tear["auc_undefined_reason"]
    assert metrics["macro"]["n_findings"] == 1
    assert metrics["macro"]["auc"] == pytest.approx(0.75)
    assert metrics["micro"]["n_annotated"] == 8


def test_compute_findings_metrics_thresholds_and_micro():
    probs = np.array([[0.2, 0.6], [0.7, 0.4], [0.3, 0.9], [0.9, 0.1]])
    labels = np.array([[0, 1], [1, 0], [1, 1], [1, 0]])

    metrics = compute_findings_metrics(probs, labels, ["a", "b"], thresholds={"a": 0.25}, n_bootstrap=10)

    assert metrics["per_finding"]["a"]["threshold"] == 0.25
    assert metrics["per_finding"]["a"]["sensitivity"] == 1.0
    assert metrics["per_finding"]["a"]["specificity"] == 1.0
    # Pooled decisions: a all correct; b at 0.5 all correct. Micro sensitivity 5/5.
    assert metrics["micro"]["sensitivity"] == 1.0
    assert metrics["micro"]["tp"] == 5


def test_compute_findings_metrics_rejects_bad_probabilities():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        compute_findings_metrics(np.array([[1.5]]), np.array([[1.0]]), ["a"])


def write_text(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def findings_csvs(tmp_path):
    reference = write_text(
        tmp_path / "reference.csv",
        "case,subject,effusion,tear\n"
        "k1,s1,0,1\n"
        "k2,s1,0,\n"
        "k3,s2,1,1\n"
        "k4,s3,1,0\n"
        "k5,s4,,0\n",
    )
    predictions = write_text(
        tmp_path / "predictions.csv",
        "case,effusion,tear\n"
        "k1,0.1,0.9\n"
        "k2,0.4,0.5\n"
        "k3,0.35,0.8\n"
        "k4,0.8,0.3\n"
        "k5,0.2,0.6\n",
    )
    return predictions, reference


def test_evaluate_csv_blank_cells_excluded(findings_csvs, tmp_path):
    predictions, reference = findings_csvs
    output = tmp_path / "out" / "summary.json"

    summary = evaluate_findings_csv(predictions, reference, output_json=output, plot_folder=tmp_path / "plots", n_bootstrap=50)

    assert summary["per_finding"]["effusion"]["n_annotated"] == 4
    assert summary["per_finding"]["effusion"]["auc"] == pytest.approx(0.75)
    assert summary["per_finding"]["tear"]["n_annotated"] == 4
    # Tear positives 0.9, 0.8 against negatives 0.3, 0.6: all four pairs ordered.
    assert summary["per_finding"]["tear"]["auc"] == pytest.approx(1.0)
    assert json.loads(output.read_text(encoding="utf-8"))["settings"]["n_bootstrap"] == 50
    assert (tmp_path / "plots" / "reliability.png").stat().st_size > 0
    assert (tmp_path / "plots" / "roc_curves.png").stat().st_size > 0


def test_evaluate_csv_thresholds_json(findings_csvs, tmp_path):
    predictions, reference = findings_csvs
    thresholds = write_text(tmp_path / "thresholds.json", json.dumps({"thresholds": {"effusion": 0.3}}))

    summary = evaluate_findings_csv(predictions, reference, thresholds=thresholds, n_bootstrap=10)

    assert summary["per_finding"]["effusion"]["threshold"] == 0.3
    assert summary["per_finding"]["effusion"]["sensitivity"] == 1.0
    assert summary["per_finding"]["tear"]["threshold"] == 0.5


def test_evaluate_csv_decision_columns(findings_csvs, tmp_path):
    _, reference = findings_csvs
    predictions = write_text(
        tmp_path / "with_decisions.csv",
        "case,effusion,effusion_decision,tear,tear_decision\n"
        "k1,0.1,1,0.9,1\nk2,0.4,1,0.5,1\nk3,0.35,1,0.8,1\nk4,0.8,1,0.3,1\nk5,0.2,1,0.6,1\n",
    )

    summary = evaluate_findings_csv(predictions, reference, n_bootstrap=10)

    assert summary["per_finding"]["effusion"]["decision_source"] == "decision_column"
    assert summary["per_finding"]["effusion"]["specificity"] == 0.0


def test_evaluate_csv_missing_case_raises(findings_csvs, tmp_path):
    _, reference = findings_csvs
    predictions = write_text(tmp_path / "short.csv", "case,effusion,tear\nk1,0.1,0.9\nk2,0.4,0.5\n")

    with pytest.raises(ValueError, match="k3"):
        evaluate_findings_csv(predictions, reference, n_bootstrap=10)

    summary = evaluate_findings_csv(predictions, reference, allow_missing=True, n_bootstrap=10)
    assert summary["missing_predictions"] == ["k3", "k4", "k5"]


def test_evaluate_csv_invalid_cell_names_file_and_row(findings_csvs, tmp_path):
    predictions, _ = findings_csvs
    reference = write_text(tmp_path / "bad_reference.csv", "case,effusion,tear\nk1,0,1\nk2,yes,0\n")

    with pytest.raises(ValueError, match=r"bad_reference.csv, row 3, column 'effusion'"):
        evaluate_findings_csv(predictions, reference)


def test_evaluate_csv_missing_finding_column(findings_csvs, tmp_path):
    _, reference = findings_csvs
    predictions = write_text(tmp_path / "no_tear.csv", "case,effusion\nk1,0.1\n")

    with pytest.raises(ValueError, match="tear"):
        evaluate_findings_csv(predictions, reference)


def test_validation_probabilities_round_trip(tmp_path):
    path = tmp_path / "probabilities.csv"
    probs = np.array([[0.1, 0.7], [0.8, 0.2], [0.6, 0.9]])
    refs = np.array([[0, 1], [1, np.nan], [1, 0]])

    write_validation_probabilities(path, ["a", "b", "c"], probs, refs, ["effusion", "tear"])
    probabilities, references = read_validation_probabilities(path)
    summary = evaluate_findings_csv(path, None, n_bootstrap=10)

    assert probabilities.cases == ["a", "b", "c"]
    np.testing.assert_allclose(probabilities.values, probs)
    np.testing.assert_array_equal(np.isnan(references.values), np.isnan(refs))
    assert summary["per_finding"]["tear"]["n_annotated"] == 2
    assert summary["per_finding"]["effusion"]["auc"] == 1.0


def test_cli_cls(findings_csvs, tmp_path):
    from ortho_nnd.cli.evaluate import main

    predictions, reference = findings_csvs
    output = tmp_path / "cli" / "summary.json"

    code = main(["cls", "-p", str(predictions), "-r", str(reference), "-o", str(output), "--n_bootstrap", "20"])

    assert code == 0
    assert (tmp_path / "cli" / "reliability.png").is_file()
    assert main(["cls", "-p", str(tmp_path / "absent.csv"), "-r", str(reference)]) == 1
