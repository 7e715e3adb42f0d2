"""Multi-label diagnosis metrics on arrays: AUC, average precision, threshold metrics, ECE.

Labels are 0/1 with NaN for "not annotated". An unannotated case is left out of that
finding only. Everything is written with numpy so that no scikit-learn dependency is needed.
"""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)

# Decision threshold used when none is given for a finding.
DEFAULT_THRESHOLD = 0.5

# Bootstrap resamples for the AUC confidence interval and the seed that makes it reproducible.
DEFAULT_BOOTSTRAP_RESAMPLES = 1000
DEFAULT_BOOTSTRAP_SEED = 12345

# Two-sided confidence level of the bootstrap interval.
CONFIDENCE_LEVEL = 0.95

# Number of equal-width probability bins on [0, 1] for the expected calibration error.
DEFAULT_ECE_BINS = 10

THRESHOLD_RULES = ("youden", "f1")


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Return 1-based ranks of ``values``, giving tied values the mean of their ranks."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]

    # Each run of equal values shares the mean of ranks start+1 .. end.
    run_starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    run_ends = np.r_[run_starts[1:], sorted_values.size]
    run_ranks = (run_starts + 1 + run_ends) / 2.0

    ranks = np.empty(values.size, dtype=float)
    ranks[order] = np.repeat(run_ranks, run_ends - run_starts)
    return ranks


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Return the area under the ROC curve from the Mann-Whitney U statistic.

    A positive-negative pair with equal scores counts one half. Returns NaN when only one
    class is present.
    """
    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels).astype(bool)
    n_positive = int(labels.sum())
    n_negative = labels.size - n_positive
    if n_positive == 0 or n_negative == 0:
        return float("nan")

    rank_sum = average_ranks(scores)[labels].sum()
    u_statistic = rank_sum - n_positive * (n_positive + 1) / 2.0
    return float(u_statistic / (n_positive * n_negative))


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (false positive rate, true positive rate, thresholds) with one point per distinct score.

    The first point is (0, 0) at threshold +inf. A case is positive when its score >= threshold.
    """
    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels).astype(bool)
    true_positives, false_positives, thresholds = _cumulative_counts(scores, labels)

    n_positive = max(int(labels.sum()), 1)
    n_negative = max(labels.size - int(labels.sum()), 1)
    tpr = np.r_[0.0, true_positives / n_positive]
    fpr = np.r_[0.0, false_positives / n_negative]
    return fpr, tpr, np.r_[np.inf, thresholds]


def _cumulative_counts(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return true and false positive counts when thresholding at each distinct score, highest first."""
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores = scores[order]
    sorted_labels = labels[order]

    # The last index of each run of equal scores: all tied cases switch to positive together.
    last_of_run = np.r_[np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]), sorted_scores.size - 1]
    true_positives = np.cumsum(sorted_labels)[last_of_run]
    false_positives = (last_of_run + 1) - true_positives
    return true_positives.astype(float), false_positives.astype(float), sorted_scores[last_of_run]


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Return the average precision, sum over distinct thresholds of (R_n - R_{n-1}) * P_n.

    This is the step-wise area under the precision-recall curve, without interpolation (the
    definition scikit-learn uses). Returns NaN without positive cases.
    """
    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels).astype(bool)
    n_positive = int(labels.sum())
    if n_positive == 0 or labels.size == 0:
        return float("nan")

    true_positives, false_positives, _ = _cumulative_counts(scores, labels)
    precision = true_positives / (true_positives + false_positives)
    recall = true_positives / n_positive
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def confusion_counts(decisions: np.ndarray, labels: np.ndarray) -> dict[str, int]:
    """Return true/false positive/negative counts of boolean decisions against 0/1 labels."""
    decisions = np.asarray(decisions).astype(bool)
    labels = np.asarray(labels).astype(bool)
    return {
        "tp": int(np.count_nonzero(decisions & labels)),
        "fp": int(np.count_nonzero(decisions & ~labels)),
        "tn": int(np.count_nonzero(~decisions & ~labels)),
        "fn": int(np.count_nonzero(~decisions & labels)),
    }


def threshold_metrics(counts: Mapping[str, int]) -> dict[str, float]:
    """Return sensitivity, specificity, precision and F1 from confusion counts (NaN when undefined)."""
    tp, fp, tn, fn = counts["tp"], counts["fp"], counts["tn"], counts["fn"]
    sensitivity = tp / (tp + fn) if tp + fn else float("nan")
    specificity = tn / (tn + fp) if tn + fp else float("nan")
    precision = tp / (tp + fp) if tp + fp else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else float("nan")
    return {"sensitivity": sensitivity, "specificity": specificity, "precision": precision, "f1": f1}


def bootstrap_auc_ci(
    scores: np.ndarray,
    labels: np.ndarray,
    n_resamples: int = DEFAULT_BOOTSTRAP_RESAMPLES,
    seed: int = DEFAULT_BOOTSTRAP_SEED,
    confidence_level: float = CONFIDENCE_LEVEL,
) -> tuple[float, float]:
    """Return a percentile bootstrap confidence interval of the AUC.

    Resampling is stratified: positives and negatives are each drawn with replacement in their
    original numbers, so every resample has both classes. Returns (NaN, NaN) with one class.
    """
    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels).astype(bool)
    positives = scores[labels]
    negatives = scores[~labels]
    if positives.size == 0 or negatives.size == 0 or n_resamples < 1:
        return float("nan"), float("nan")

    rng = np.random.default_rng(seed)
    resample_labels = np.r_[np.ones(positives.size, dtype=bool), np.zeros(negatives.size, dtype=bool)]
    aucs = np.empty(n_resamples)
    for index in range(n_resamples):
        resample = np.r_[rng.choice(positives, positives.size), rng.choice(negatives, negatives.size)]
        aucs[index] = roc_auc(resample, resample_labels)

    tail = (1.0 - confidence_level) / 2.0 * 100.0
    low, high = np.percentile(aucs, [tail, 100.0 - tail])
    return float(low), float(high)


def calibration_bins(
    probabilities: np.ndarray, labels: np.ndarray, n_bins: int = DEFAULT_ECE_BINS
) -> dict[str, list]:
    """Group predictions into ``n_bins`` equal-width bins on [0, 1].

    Bin i contains probabilities in [i/n, (i+1)/n), and the last bin also contains 1.0. Returns per bin
    the count, the mean probability and the observed positive fraction (NaN for empty bins).
    """
    probabilities = np.clip(np.asarray(probabilities, dtype=float), 0.0, 1.0)
    labels = np.asarray(labels, dtype=float)
    bin_index = np.minimum((probabilities * n_bins).astype(int), n_bins - 1)

    counts = np.bincount(bin_index, minlength=n_bins)
    probability_sums = np.bincount(bin_index, weights=probabilities, minlength=n_bins)
    positive_sums = np.bincount(bin_index, weights=labels, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_probability = np.where(counts > 0, probability_sums / counts, np.nan)
        positive_fraction = np.where(counts > 0, positive_sums / counts, np.nan)
    return {
        "bin_edges": np.linspace(0.0, 1.0, n_bins + 1).tolist(),
        "count": counts.tolist(),
        "mean_probability": mean_probability.tolist(),
        "positive_fraction": positive_fraction.tolist(),
    }


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, n_bins: int = DEFAULT_ECE_BINS) -> float:
    """Return ECE = sum over bins of (n_bin / N) * |mean probability - positive fraction|."""
    probabilities = np.asarray(probabilities, dtype=float)
    if probabilities.size == 0:
        return float("nan")

    bins = calibration_bins(probabilities, labels, n_bins)
    counts = np.asarray(bins["count"], dtype=float)
    gaps = np.abs(np.asarray(bins["mean_probability"]) - np.asarray(bins["positive_fraction"]))
    filled = counts > 0
    return float(np.sum(counts[filled] * gaps[filled]) / counts.sum())


def choose_threshold(probabilities: np.ndarray, labels: np.ndarray, rule: str = "youden") -> float:
    """Choose a decision threshold on training data (positive when probability >= threshold).

    ``rule="youden"`` maximises sensitivity + specificity - 1, ``rule="f1"`` maximises F1.
    Candidates are the midpoints between adjacent distinct probabilities (so a threshold
    between two classes never sits on a training value), plus the lowest probability (all
    positive) and the next float above the highest (all negative). Ties go to the candidate closest to DEFAULT_THRESHOLD,
    then to the lower one. NaN labels are ignored. With one class only, DEFAULT_THRESHOLD is
    returned and a warning is logged.
    """
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"Invalid threshold rule {rule!r}: expected one of {THRESHOLD_RULES}.")

    probabilities = np.asarray(probabilities, dtype=float).ravel()
    labels = np.asarray(labels, dtype=float).ravel()
    if probabilities.shape != labels.shape:
        raise ValueError(f"probabilities {probabilities.shape} and labels {labels.shape} differ in length.")

    annotated = np.isfinite(labels)
    probabilities = probabilities[annotated]
    positives = labels[annotated].astype(bool)
    if positives.all() or not positives.any():
        logger.warning("Cannot choose a threshold from one class only, so using %s.", DEFAULT_THRESHOLD)
        return DEFAULT_THRESHOLD

    distinct = np.unique(probabilities)
    # The lowest probability makes every case positive. The next float above the highest makes every case negative.
    candidates = np.r_[distinct[0], (distinct[1:] + distinct[:-1]) / 2.0, np.nextafter(distinct[-1], np.inf)]

    scores = np.empty(candidates.size)
    for index, candidate in enumerate(candidates):
        metrics = threshold_metrics(confusion_counts(probabilities >= candidate, positives))
        if rule == "youden":
            scores[index] = metrics["sensitivity"] + metrics["specificity"] - 1.0
        else:
            scores[index] = 0.0 if np.isnan(metrics["f1"]) else metrics["f1"]

    best = np.flatnonzero(np.isclose(scores, scores.max(), rtol=0.0, atol=1e-12))
    distances = np.abs(candidates[best] - DEFAULT_THRESHOLD)
    # Candidates are sorted ascending, so argmin picks the lower one among equal distances.
    return float(candidates[best[np.argmin(distances)]])


def _finding_metrics(
    probabilities: np.ndarray,
    labels: np.ndarray,
    threshold: float,
    decisions: np.ndarray | None,
    n_bootstrap: int,
    seed: int,
    n_bins: int,
) -> dict:
    positives = labels.astype(bool)
    n_positive = int(positives.sum())
    n_negative = int(positives.size - n_positive)
    both_classes = n_positive > 0 and n_negative > 0

    if decisions is None:
        decisions = probabilities >= threshold
        decision_source = "threshold"
    else:
        decision_source = "decision_column"
    counts = confusion_counts(decisions, positives)

    reason = None
    if positives.size == 0:
        reason = "no annotated cases"
    elif not both_classes:
        reason = f"only {'positive' if n_positive else 'negative'} cases in the reference"

    ci_low, ci_high = bootstrap_auc_ci(probabilities, positives, n_bootstrap, seed) if both_classes else (float("nan"),) * 2
    return {
        "auc": roc_auc(probabilities, positives) if both_classes else float("nan"),
        "auc_ci_low": ci_low,
        "auc_ci_high": ci_high,
        "average_precision": average_precision(probabilities, positives) if both_classes else float("nan"),
        "threshold": float(threshold),
        "decision_source": decision_source,
        **threshold_metrics(counts),
        "ece": expected_calibration_error(probabilities, positives, n_bins),
        "calibration": calibration_bins(probabilities, positives, n_bins),
        "n_annotated": int(positives.size),
        "n_positive": n_positive,
        "n_negative": n_negative,
        **counts,
        "auc_undefined_reason": reason,
    }


MACRO_METRICS = ("auc", "average_precision", "sensitivity", "specificity", "precision", "f1", "ece")


def compute_findings_metrics(
    probs: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    thresholds: Mapping[str, float] | Sequence[float] | None = None,
    decisions: np.ndarray | None = None,
    n_bootstrap: int = DEFAULT_BOOTSTRAP_RESAMPLES,
    seed: int = DEFAULT_BOOTSTRAP_SEED,
    n_bins: int = DEFAULT_ECE_BINS,
) -> dict:
    """Compute per-finding, macro and micro metrics for multi-label predictions.

    ``probs`` and ``labels`` have shape (N, K). NaN labels mean "not annotated" and are left
    out for that finding. ``thresholds`` maps finding names (or gives a list in ``names``
    order) to decision thresholds, and findings without one use DEFAULT_THRESHOLD. ``decisions`` (N, K,
    optional, NaN = none) replaces thresholding for findings without an explicit threshold.

    Macro averages are means over the findings with both classes present. Micro averages pool
    every annotated (case, finding) pair, with each finding's own decisions.
    """
    probs = np.asarray(probs, dtype=float)
    labels = np.asarray(labels, dtype=float)
    names = [str(name) for name in names]
    if probs.ndim != 2 or probs.shape != labels.shape or probs.shape[1] != len(names):
        raise ValueError(
            f"Expected probs and labels of shape (N, {len(names)}) for findings {names}, got {probs.shape} and {labels.shape}."
        )
    if not np.all(np.isfinite(probs)):
        raise ValueError("Probabilities contain NaN or infinite values. Every case needs a probability for every finding.")
    if np.any((probs < 0) | (probs > 1)):
        raise ValueError(f"Invalid probabilities: expected values in [0, 1], found values from {probs.min()} to {probs.max()}.")
    finite_labels = labels[np.isfinite(labels)]
    if not np.all(np.isin(finite_labels, (0.0, 1.0))):
        raise ValueError(f"Invalid reference labels: expected 0, 1 or NaN, found {sorted(set(finite_labels.tolist()) - {0.0, 1.0})}.")

    explicit_thresholds = _threshold_per_finding(thresholds, names)
    per_finding: dict[str, dict] = {}
    pooled_probs, pooled_labels, pooled_decisions = [], [], []

    for column, name in enumerate(names):
        annotated = np.isfinite(labels[:, column])
        finding_probs = probs[annotated, column]
        finding_labels = labels[annotated, column]

        threshold = explicit_thresholds.get(name)
        finding_decisions = None
        if threshold is None and decisions is not None and np.all(np.isfinite(decisions[annotated, column])):
            finding_decisions = decisions[annotated, column].astype(bool)
        if threshold is None:
            threshold = DEFAULT_THRESHOLD

        per_finding[name] = _finding_metrics(finding_probs, finding_labels, threshold, finding_decisions, n_bootstrap, seed, n_bins)
        pooled_probs.append(finding_probs)
        pooled_labels.append(finding_labels)
        pooled_decisions.append(finding_probs >= threshold if finding_decisions is None else finding_decisions)

    evaluable = [name for name in names if per_finding[name]["auc_undefined_reason"] is None]
    macro = {metric: _nanmean([per_finding[name][metric] for name in evaluable]) for metric in MACRO_METRICS}
    macro["n_findings"] = len(evaluable)

    micro = _micro_metrics(np.concatenate(pooled_probs), np.concatenate(pooled_labels), np.concatenate(pooled_decisions), n_bins)
    return {
        "per_finding": per_finding,
        "macro": macro,
        "micro": micro,
        "findings_without_both_classes": {name: per_finding[name]["auc_undefined_reason"] for name in names if name not in evaluable},
        "settings": {
            "findings": names,
            "n_cases": int(probs.shape[0]),
            "n_bootstrap": n_bootstrap,
            "bootstrap_seed": seed,
            "bootstrap": "stratified percentile",
            "confidence_level": CONFIDENCE_LEVEL,
            "ece_bins": n_bins,
            "default_threshold": DEFAULT_THRESHOLD,
        },
    }


def _micro_metrics(probabilities: np.ndarray, labels: np.ndarray, decisions: np.ndarray, n_bins: int) -> dict:
    positives = labels.astype(bool)
    counts = confusion_counts(decisions, positives)
    return {
        "auc": roc_auc(probabilities, positives),
        "average_precision": average_precision(probabilities, positives),
        **threshold_metrics(counts),
        "ece": expected_calibration_error(probabilities, positives, n_bins),
        "n_annotated": int(positives.size),
        **counts,
    }


def _threshold_per_finding(thresholds: Mapping[str, float] | Sequence[float] | None, names: Sequence[str]) -> dict[str, float]:
    if thresholds is None:
        return {}
    if isinstance(thresholds, Mapping):
        unknown = sorted(set(thresholds) - set(names))
        if unknown:
            logger.warning("Thresholds given for unknown findings %s are ignored.", unknown)
        result = {name: float(thresholds[name]) for name in names if name in thresholds}
    else:
        values = list(thresholds)
        if len(values) != len(names):
            raise ValueError(f"Got {len(values)} thresholds for {len(names)} findings {list(names)}. Give one per finding.")
        result = {name: float(value) for name, value in zip(names, values)}

    for name, value in result.items():
        # choose_threshold may return a value just outside [0, 1] to mean "all negative" or "all positive".
        if not np.isfinite(value):
            raise ValueError(f"Invalid threshold {value} for finding {name!r}: expected a finite number, usually in [0, 1].")
    return result


def _nanmean(values: Sequence[float]) -> float:
    array = np.asarray(values, dtype=float)
    finite = array[np.isfinite(array)]
    return float(finite.mean()) if finite.size else float("nan")
