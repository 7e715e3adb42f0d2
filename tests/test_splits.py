"""Cross-validation splits and label-fraction subsets."""
from __future__ import annotations

import json
import math

import pytest

from ortho_nnd.training.label_fraction import run_folder_name, select_label_subset, subset_size
from ortho_nnd.training.splits import fold_cases, fold_index, load_or_create_splits, make_splits


def _cases(count):
    return [f"case_{index:03d}" for index in range(count)]


def test_folds_never_share_subject():
    cases = _cases(40)
    # Four cases per subject, plus four cases without subject (each its own group).
    subjects = {case: f"subject_{index // 4}" for index, case in enumerate(cases[:36])}
    splits = make_splits(cases, subjects, num_folds=5, seed=3)

    assert len(splits) == 5
    for split in splits:
        val_subjects = {subjects.get(case, case) for case in split["val"]}
        train_subjects = {subjects.get(case, case) for case in split["train"]}
        assert not val_subjects & train_subjects
        assert sorted(split["train"] + split["val"]) == cases
    all_val = [case for split in splits for case in split["val"]]
    assert sorted(all_val) == cases


def test_stratification_keeps_positives_in_every_fold():
    cases = _cases(50)
    subjects = {case: f"subject_{index // 2}" for index, case in enumerate(cases)}
    # Finding 0: 5 positive subjects (10 cases), one per fold at best. Finding 1: 10 positive subjects.
    findings = {}
    for index, case in enumerate(cases):
        first = 1.0 if index < 10 else 0.0
        second = 1.0 if 20 <= index < 40 else 0.0
        if second == 0.0 and index % 7 == 0:
            second = math.nan
        findings[case] = [first, second]
    splits = make_splits(cases, subjects, findings, num_folds=5, seed=0)

    for split in splits:
        positives = [sum(findings[case][k] == 1.0 for case in split["val"]) for k in range(2)]
        assert positives[0] == 2, positives
        assert positives[1] == 4, positives
    sizes = [len(split["val"]) for split in splits]
    assert max(sizes) - min(sizes) <= 2


def test_splits_depend_only_on_seed():
    cases = _cases(23)
    assert make_splits(cases, seed=1) == make_splits(list(reversed(cases)), seed=1)
    assert make_splits(cases, seed=1) != make_splits(cases, seed=2)


def test_too_few_subjects_rejected():
    with pytest.raises(ValueError, match="splits_final.json"):
        make_splits(_cases(3), num_folds=5)


def test_user_splits_win(tmp_path):
    cases = _cases(6)
    user = [{"train": cases[:3], "val": cases[3:]}, {"train": cases[3:], "val": cases[:3]}]
    (tmp_path / "splits_final.json").write_text(json.dumps(user), encoding="utf-8")

    assert load_or_create_splits(tmp_path, cases, num_folds=5) == user
    assert fold_cases(user, 1, cases[1:]) == (cases[3:], cases[1:3])


def test_user_splits_with_unknown_case_rejected(tmp_path):
    cases = _cases(6)
    (tmp_path / "splits_final.json").write_text(json.dumps([{"train": cases, "val": ["ghost_case"]}]), encoding="utf-8")
    with pytest.raises(ValueError, match="ghost_case"):
        load_or_create_splits(tmp_path, cases)


def test_created_splits_saved(tmp_path):
    cases = _cases(10)
    splits = load_or_create_splits(tmp_path, cases, seed=4)
    assert json.loads((tmp_path / "splits_final.json").read_text(encoding="utf-8")) == splits


def test_fold_index_parsing():
    assert fold_index("fold3") == 3
    assert fold_index(2) == 2
    assert fold_index("all") is None
    with pytest.raises(ValueError, match="fold0"):
        fold_index("fifth")


def test_label_fraction_size_and_determinism():
    cases = _cases(37)
    strata = {case: index % 3 == 0 for index, case in enumerate(cases)}
    subset = select_label_subset(cases, 0.1, fold=2, seed=7, strata=strata)

    assert len(subset) == subset_size(37, 0.1) == 4
    assert set(subset) <= set(cases)
    # The subset depends only on cases, strata, fold, fraction and seed, not on the case order.
    assert select_label_subset(list(reversed(cases)), 0.1, fold=2, seed=7, strata=strata) == subset
    assert select_label_subset(cases, 0.1, fold=3, seed=7, strata=strata) != subset


def test_label_fraction_at_least_one_case():
    assert select_label_subset(_cases(3), 0.01, fold=0, seed=0) != []
    assert len(select_label_subset(_cases(3), 0.01, fold=0, seed=0)) == 1
    assert select_label_subset(_cases(3), 1.0, fold=0, seed=0) == _cases(3)
    with pytest.raises(ValueError, match="label_fraction"):
        select_label_subset(_cases(3), 0.0, fold=0, seed=0)


def test_label_fraction_stratified():
    cases = _cases(40)
    strata = {case: "positive" if index < 10 else "negative" for index, case in enumerate(cases)}
    subset = select_label_subset(cases, 0.2, fold=0, seed=5, strata=strata)
    # 8 cases; a quarter of the cases are positive, so 2 of the subset.
    assert sum(strata[case] == "positive" for case in subset) == 2


def test_run_folder_names_distinct():
    names = {
        run_folder_name("seg_sagittal", None, scratch=False),
        run_folder_name("seg_sagittal", 1.0, scratch=False),
        run_folder_name("seg_sagittal", 0.1, scratch=False),
        run_folder_name("seg_sagittal", 0.1, scratch=True),
        run_folder_name("seg_sagittal", None, scratch=True),
    }
    assert names == {"seg_sagittal", "seg_sagittal_lf0.1", "seg_sagittal_lf0.1_scratch", "seg_sagittal_scratch"}
