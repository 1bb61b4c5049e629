"""levels.py: the empirical-Bayes estimate of each commit's true level, on synthetic histories."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

import pytest

from autoresearch import levels as L


@dataclass
class Row:  # the fields of ledger.Experiment that levels.estimate reads
    id: int
    kind: str
    status: str
    commit: str
    parent: Optional[str]


def test_the_prior_of_effects_is_recovered_from_first_looks():
    rng = random.Random(3)
    looks = [((2.0 if rng.random() < 0.2 else 0.0) + rng.gauss(0, 1), 1.0) for _ in range(600)]
    g = L.fit_prior(looks)
    near = lambda lo, hi: sum(w for w, d in zip(g, L.GRID) if lo <= d <= hi)
    assert sum(g) == pytest.approx(1.0)
    assert near(-0.5, 0.5) == pytest.approx(0.8, abs=0.12)
    assert near(1.0, 3.0) == pytest.approx(0.2, abs=0.1)
    assert near(-6, -1.5) < 0.05 and g[L.WIDE] < 0.05


def test_a_child_far_outside_the_grid_says_nothing_of_its_parent():
    parent = L.Level(1.0, 0.01 / 3, 3)
    g = L.default_prior()
    after = L.parent_given_child(parent, 1.0 + 30 * 0.1, 1, 0.1, g)  # a run 30 sd worse: broken, not news
    assert after.mean == pytest.approx(parent.mean, abs=1e-4) and after.var == pytest.approx(parent.var, rel=1e-3)
    near = L.parent_given_child(parent, 1.05, 1, 0.1, g)  # a child like its parent: most likely a null change
    assert parent.mean < near.mean < 1.05 and near.var < parent.var


def ratchet(seed: int, proposals: int = 60, sd: float = 1.0):
    """A ratchet of null changes only, kept greedily when one run beats the incumbent's raw mean by 1 sd."""
    rng = random.Random(seed)
    rows, runs = [Row(1, "baseline", "keep", "c1", None)], {1: [("c1", rng.gauss(0, sd)) for _ in range(3)]}
    inc, raw = "c1", sum(v for _, v in runs[1]) / 3
    for i in range(2, proposals + 2):
        y = rng.gauss(0, sd)  # every commit's true level is 0: nothing ever helps
        keep = y < raw - sd
        rows.append(Row(i, "candidate", "keep" if keep else "discard", f"c{i}", inc))
        runs[i] = [(f"c{i}", y)]
        if keep:
            inc, raw = f"c{i}", y
    return rows, runs, inc, raw


def test_a_lucky_incumbent_is_pulled_back_to_where_its_children_put_it():
    raw_err, est_err = [], []
    for seed in range(40):
        rows, runs, inc, raw = ratchet(seed)
        found, _ = L.estimate(rows, runs, 1.0, lower=True)
        raw_err.append(raw)  # the truth is 0: the error is the value itself
        est_err.append(found[inc].mean)
    mean = lambda xs: sum(xs) / len(xs)
    assert mean(raw_err) < -1.5  # the winner's curse: the raw runs flatter the incumbent by well over 1 sd
    assert abs(mean(est_err)) < 0.5  # the estimate is (nearly) unbiased
    assert mean([e * e for e in est_err]) < 0.25 * mean([r * r for r in raw_err])


def test_the_judged_experiment_never_informs_its_own_reference():
    rows, runs, inc, _ = ratchet(7, proposals=20)
    judged = Row(len(rows) + 1, "candidate", "running", "cj", inc)
    base, _ = L.estimate(rows, runs, 1.0, lower=True)
    for y in (-5.0, 0.0, 5.0):
        with_judged = {**runs, judged.id: [(inc, 0.3), ("cj", y)]}  # a re-measure of the incumbent, then its own run
        found, _ = L.estimate(rows + [judged], with_judged, 1.0, lower=True, judged_id=judged.id)
        assert "cj" not in found  # it has no level of its own yet
        assert found[inc].runs == base[inc].runs + 1  # the re-measure counts ...
        assert found[inc].mean == pytest.approx(L.estimate(rows + [judged], {**runs, judged.id: [(inc, 0.3)]}, 1.0,
                                                           lower=True, judged_id=judged.id)[0][inc].mean)  # ... its run not


def test_higher_is_better_mirrors_lower_is_better():
    rows, runs, inc, _ = ratchet(11, proposals=15)
    lo, _ = L.estimate(rows, runs, 1.0, lower=True)
    hi, _ = L.estimate(rows, {k: [(c, -v) for c, v in rs] for k, rs in runs.items()}, 1.0, lower=False)
    assert hi[inc].mean == pytest.approx(lo[inc].mean) and hi[inc].var == pytest.approx(lo[inc].var)
