"""Fold assignment: deterministic, stratified within ±1, patients never split."""

from __future__ import annotations

import random
from collections import Counter, defaultdict

import pytest

from lesiondata.folds import assign_folds, fold_table


def _cases(n: int) -> list[str]:
    return [f"case_{i:03d}" for i in range(n)]


@pytest.mark.parametrize("n", [5, 23, 50, 101])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_stratified_balance_within_one(n: int, seed: int) -> None:
    cases = _cases(n)
    rng = random.Random(n + seed)
    classes = [rng.choice(["a", "b", "b", "c", "c", "c"]) for _ in cases]
    folds = assign_folds(cases, classes, seed=seed)
    for name in set(classes):
        per_fold = Counter(f for f, c in zip(folds, classes, strict=True) if c == name)
        counts = [per_fold[f] for f in range(5)]
        assert max(counts) - min(counts) <= 1, (name, counts)
    sizes = Counter(folds)
    assert max(sizes.values()) - min(sizes[f] for f in range(5)) <= 1


def test_deterministic_and_order_independent() -> None:
    cases = _cases(40)
    classes = ["x" if i % 3 else "y" for i in range(40)]
    first = assign_folds(cases, classes, seed=3)
    assert assign_folds(cases, classes, seed=3) == first
    order = list(range(40))
    random.Random(0).shuffle(order)
    shuffled = assign_folds([cases[i] for i in order], [classes[i] for i in order], seed=3)
    assert {cases[i]: f for i, f in zip(order, shuffled, strict=True)} == dict(zip(cases, first, strict=True))
    assert assign_folds(cases, classes, seed=4) != first


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_patients_never_in_two_folds(seed: int) -> None:
    rng = random.Random(seed)
    cases = _cases(120)
    patients = [f"p{rng.randint(0, 19)}" for _ in cases]
    classes = [rng.choice(["benign", "malignant"]) for _ in cases]
    folds = assign_folds(cases, classes, patients, seed=seed)
    by_patient: dict[str, set[int]] = defaultdict(set)
    for patient, fold in zip(patients, folds, strict=True):
        by_patient[patient].add(fold)
    assert all(len(f) == 1 for f in by_patient.values())
    sizes = Counter(folds)
    assert set(sizes) == set(range(5))
    assert max(sizes.values()) - min(sizes.values()) <= 12  # groups of ~6 cases: near, not exactly, equal


def test_groups_balance_sizes_when_groups_are_equal() -> None:
    cases = _cases(50)
    patients = [f"p{i // 5}" for i in range(50)]  # 10 patients x 5 cases
    folds = assign_folds(cases, None, patients, seed=0)
    assert sorted(Counter(folds).values()) == [10, 10, 10, 10, 10]


def test_cases_without_patient_are_singletons() -> None:
    cases = _cases(12)
    patients = ["a", "a", "a", "b", "b", None, None, None, None, None, None, None]
    folds = assign_folds(cases, None, patients, seed=0)
    assert len({folds[0], folds[1], folds[2]}) == 1 and folds[3] == folds[4]
    assert set(folds) == set(range(5))


def test_too_few_cases_warns_about_empty_folds() -> None:
    with pytest.warns(UserWarning, match="empty"):
        folds = assign_folds(_cases(3), seed=0)
    assert sorted(folds) == [0, 1, 2]


def test_rejects_duplicates_and_bad_fold_count() -> None:
    with pytest.raises(ValueError, match="unique"):
        assign_folds(["a", "a"])
    with pytest.raises(ValueError, match="at least 2"):
        assign_folds(["a", "b"], n_folds=1)


def test_fold_table_counts() -> None:
    table = fold_table([0, 0, 1, 4], ["x", "y", "x", "x"], n_folds=5)
    assert table["0"] == {"cases": 2, "classes": {"x": 1, "y": 1}}
    assert table["2"] == {"cases": 0, "classes": {}}
    assert table["4"]["cases"] == 1


def test_many_small_patients_keep_classes_balanced() -> None:
    cases = _cases(200)
    patients = [f"p{i // 2}" for i in range(200)]  # 100 patients x 2 cases, one class per patient
    classes = ["melanoma" if (i // 2) % 4 == 0 else "nevus" for i in range(200)]
    folds = assign_folds(cases, classes, patients, seed=5)
    for name, total in Counter(classes).items():
        counts = [sum(1 for f, c in zip(folds, classes, strict=True) if f == k and c == name) for k in range(5)]
        assert max(counts) - min(counts) <= 2 and sum(counts) == total
