"""Deterministic k-fold assignment: stratified by class, grouped by patient.

Two regimes:

* **no groups** – every case is its own unit. The cases of each class are shuffled (seeded) and dealt round-robin,
  continuing the rotation from one class to the next. Every fold then holds ``n_c // k`` or ``n_c // k + 1`` cases of
  every class ``c`` and the fold sizes differ by at most one.
* **groups** (e.g. patients) – all cases of a group form one unit and land in the same fold. Units are placed
  largest first (ties in seeded random order) into the fold where they reduce the squared deviation from the per-class
  and total targets the most. This cannot always be exact (groups have different sizes), but no group is ever split.
"""

from __future__ import annotations

import random
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence

__all__ = ["assign_folds", "fold_table"]

NO_CLASS = ""
SIZE = "\0size"  # pseudo-class holding the case count of a fold
MAX_PASSES = 20
MAX_UNITS_FOR_SWAPS = 400
EPS = 1e-9


def assign_folds(
    cases: Sequence[str],
    classes: Sequence[str | None] | None = None,
    groups: Sequence[str | None] | None = None,
    n_folds: int = 5,
    seed: int = 0,
) -> list[int]:
    """Assign every case to one of ``n_folds`` folds.

    Args:
        cases: unique case ids; the result does not depend on their order.
        classes: per-case class to stratify by (``None`` entries form their own stratum); ``None`` for no
            stratification.
        groups: per-case group (patient); cases sharing a group always get the same fold. ``None`` entries are
            singleton groups. ``None`` for no grouping.
        n_folds: number of folds (>= 2).
        seed: random seed; the same inputs and seed always give the same folds.

    Returns:
        The fold (0..n_folds-1) of each case, in the order of ``cases``.
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    if len(set(cases)) != len(cases):
        raise ValueError("case ids passed to assign_folds must be unique")
    n = len(cases)
    cls = [NO_CLASS if c is None else str(c) for c in (classes if classes is not None else [None] * n)]
    grp = list(groups) if groups is not None else [None] * n
    if len(cls) != n or len(grp) != n:
        raise ValueError("cases, classes and groups must have the same length")
    order = sorted(range(n), key=lambda i: cases[i])  # independent of the caller's order
    units = _units(order, cases, grp)
    if all(len(members) == 1 for members in units):
        by_case = _deal_stratified(order, cls, n_folds, seed)
    else:
        by_case = _place_groups(units, cls, n_folds, seed)
    folds = [by_case[i] for i in range(n)]
    _warn_if_empty(folds, n_folds)
    return folds


def _units(order: list[int], cases: Sequence[str], groups: Sequence[str | None]) -> list[list[int]]:
    """Indices grouped into units: one per named group, one per case without a group."""
    named: dict[str, list[int]] = defaultdict(list)
    units: list[list[int]] = []
    for i in order:
        if groups[i] is None:
            units.append([i])
        else:
            named[str(groups[i])].append(i)
    units.extend(named[g] for g in sorted(named))
    units.sort(key=lambda members: cases[members[0]])
    return units


def _deal_stratified(order: list[int], classes: list[str], n_folds: int, seed: int) -> dict[int, int]:
    """Round-robin dealing of each class's shuffled cases, the rotation carried over between classes."""
    rng = random.Random(seed)
    by_class: dict[str, list[int]] = defaultdict(list)
    for i in order:
        by_class[classes[i]].append(i)
    result: dict[int, int] = {}
    start = 0
    for name in sorted(by_class):
        members = by_class[name]
        rng.shuffle(members)
        for k, i in enumerate(members):
            result[i] = (start + k) % n_folds
        start = (start + len(members)) % n_folds
    return result


def _place_groups(units: list[list[int]], classes: list[str], n_folds: int, seed: int) -> dict[int, int]:
    """Greedy placement of whole groups, largest first, minimising deviation from class and size targets."""
    rng = random.Random(seed)
    rng.shuffle(units)
    units.sort(key=len, reverse=True)  # stable: equal sizes keep the seeded order
    names = sorted(set(classes))
    totals = Counter(classes)
    target = {c: totals[c] / n_folds for c in names}
    target_size = len(classes) / n_folds
    counts = [Counter() for _ in range(n_folds)]
    sizes = [0] * n_folds
    result: dict[int, int] = {}
    for members in units:
        unit = Counter(classes[i] for i in members)
        best = min(
            range(n_folds),
            key=lambda f: (_cost(counts[f], sizes[f], unit, len(members), target, target_size), sizes[f], f),
        )
        counts[best].update(unit)
        sizes[best] += len(members)
        result.update({i: best for i in members})
    return _improve(units, classes, result, n_folds)


def _improve(units: list[list[int]], classes: list[str], result: dict[int, int], n_folds: int) -> dict[int, int]:
    """Local search after the greedy pass: move single groups, then swap pairs, while the deviation drops."""
    unit_counts = [Counter(classes[i] for i in members) + Counter({SIZE: len(members)}) for members in units]
    where = [result[members[0]] for members in units]
    folds = [Counter() for _ in range(n_folds)]
    for count, fold in zip(unit_counts, where, strict=True):
        folds[fold].update(count)
    totals = sum(unit_counts, Counter())
    target = {k: v / n_folds for k, v in totals.items()}
    swaps = len(units) <= MAX_UNITS_FOR_SWAPS
    for _ in range(MAX_PASSES):
        if not (_moves(unit_counts, where, folds, target) or (swaps and _swaps(unit_counts, where, folds, target))):
            break
    return {i: where[u] for u, members in enumerate(units) for i in members}


def _deviation(fold: Counter, target: dict[str, float]) -> float:
    return sum((fold[k] - t) ** 2 for k, t in target.items())


def _gain(folds: list[Counter], a: int, b: int, delta: Counter, target: dict[str, float]) -> float:
    """How much the deviation drops if ``delta`` moves from fold ``a`` to fold ``b``."""
    before = _deviation(folds[a], target) + _deviation(folds[b], target)
    after = _deviation(folds[a] - delta, target) + _deviation(folds[b] + delta, target)
    return before - after


def _moves(unit_counts: list[Counter], where: list[int], folds: list[Counter], target: dict[str, float]) -> bool:
    improved = False
    for u, count in enumerate(unit_counts):
        gains = [(_gain(folds, where[u], f, count, target), -f) for f in range(len(folds)) if f != where[u]]
        gain, neg_f = max(gains)
        if gain > EPS:
            folds[where[u]] -= count
            folds[-neg_f] += count
            where[u], improved = -neg_f, True
    return improved


def _swaps(unit_counts: list[Counter], where: list[int], folds: list[Counter], target: dict[str, float]) -> bool:
    improved = False
    for u in range(len(unit_counts)):
        for v in range(u + 1, len(unit_counts)):
            a, b = where[u], where[v]
            if a == b:
                continue
            delta = Counter(unit_counts[u])
            delta.subtract(unit_counts[v])
            if _swap_gain(folds, a, b, delta, target) > EPS:
                folds[a].subtract(delta)
                folds[b].update(delta)
                where[u], where[v], improved = b, a, True
    return improved


def _swap_gain(folds: list[Counter], a: int, b: int, delta: Counter, target: dict[str, float]) -> float:
    before = _deviation(folds[a], target) + _deviation(folds[b], target)
    fa, fb = Counter(folds[a]), Counter(folds[b])
    fa.subtract(delta)
    fb.update(delta)
    return before - (_deviation(fa, target) + _deviation(fb, target))


def _cost(
    count: Counter, size: int, unit: Counter, unit_size: int, target: dict[str, float], target_size: float
) -> float:
    """Increase in squared deviation from the targets if ``unit`` joins a fold holding ``count``/``size``."""
    delta = sum((count[c] + k - target[c]) ** 2 - (count[c] - target[c]) ** 2 for c, k in unit.items())
    delta += (size + unit_size - target_size) ** 2 - (size - target_size) ** 2
    return delta


def _warn_if_empty(folds: list[int], n_folds: int) -> None:
    empty = sorted(set(range(n_folds)) - set(folds))
    if folds and empty:
        warnings.warn(f"folds {empty} are empty: too few cases or patients for {n_folds} folds", stacklevel=3)


def fold_table(folds: Sequence[int], classes: Sequence[str | None] | None = None, n_folds: int = 5) -> dict:
    """Per-fold case counts (and per-class counts) for reports.

    Args:
        folds: fold of each case.
        classes: class of each case, or ``None``.
        n_folds: number of folds.

    Returns:
        ``{"0": {"cases": n, "classes": {name: n}}, ...}`` (``classes`` only where given).
    """
    table: dict[str, dict] = {}
    for f in range(n_folds):
        idx = [i for i, fold in enumerate(folds) if fold == f]
        entry: dict = {"cases": len(idx)}
        if classes is not None:
            entry["classes"] = dict(sorted(Counter(str(classes[i]) for i in idx).items()))
        table[str(f)] = entry
    return table
