"""A tag's run-to-run noise: its runs by commit on the scale the tests work on, and their pooled sd.

Owns: reading a tag's measurements by commit on the judged scale (`runs_by_commit`: log(metric)
with metric.noise = "relative", where a run with a metric <= 0 counts as failed, status
`not_positive`), splitting one commit's runs into usable and failed ones (`runs`, `usable`), and
the noise pooled over every commit measured more than once (`pooled`, `pooled_noise`).

Used alike by the policies (the confirm test, the one-run rules' effect in sigmas), by
`autoresearch confirm` and by the improvement figure (figures.py), so every view states the
same noise. Guarantees: pure functions of the ledger's `measurements` rows; a seed measured twice
for one commit counts once; interrupted runs are neither usable nor failed.
Not covered: what the noise means for a decision (policy_confirm.py) or a paired difference's
noise (pairing.py, which pools differences, not runs).
"""

from __future__ import annotations

import math
from typing import Any, Optional

from . import stats
from .ledger import Ledger

NOT_POSITIVE = 'metric.noise = "relative" needs a positive metric'


def usable(m: dict[str, Any]) -> bool:
    """A measurement that counts: status ok and a finite metric."""
    return m["status"] == "ok" and m["metric"] is not None and math.isfinite(m["metric"])


def runs_by_commit(ledger: Ledger, tag: str, scale: stats.Scale = stats.Scale()) -> dict[str, list[dict[str, Any]]]:
    """The tag's measurements by commit, the metric on the test's scale; with relative noise a run
    with a metric <= 0 counts as failed (status `not_positive`)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for m in ledger.measurements(tag=tag):
        v = m["metric"]
        if scale.relative and m["status"] == "ok" and v is not None and math.isfinite(v):
            m = dict(m, metric=scale.judged(v)) if v > 0 else dict(m, status="not_positive")
        out.setdefault(m["commit"], []).append(m)
    return out


def runs(by_commit: dict[str, list[dict[str, Any]]], commit: Optional[str]) -> tuple[list[dict], list[dict]]:
    """(usable runs, failed runs) of one commit; a seed measured twice counts once."""
    ok, failed, seen = [], [], set()
    for m in by_commit.get(commit or "", []):
        if usable(m) and m["seed"] not in seen:
            seen.add(m["seed"])
            ok.append(m)
        elif not usable(m) and m["status"] != "interrupted":
            failed.append(m)
    return ok, failed


def pooled(by_commit: dict[str, list[dict[str, Any]]]) -> tuple[Optional[float], int]:
    """(sd, degrees of freedom) pooled over the commits of `by_commit` measured more than once."""
    return stats.pooled_sd([[m["metric"] for m in runs(by_commit, c)[0]] for c in by_commit])


def pooled_noise(ledger: Ledger, tag: str, scale: stats.Scale = stats.Scale()) -> tuple[Optional[float], int]:
    """(sd, degrees of freedom) of run-to-run noise, pooled over the tag's commits measured more
    than once, on the test's scale."""
    return pooled(runs_by_commit(ledger, tag, scale))
