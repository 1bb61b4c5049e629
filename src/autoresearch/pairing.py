"""Paired confirmation: judge a candidate against its incumbent measured in the same time window.

Owns: when a decision is paired (`enabled`), how the runs of one decision form pairs (`pairs`),
the order of the next pair (`next_pair`), the noise of a paired difference pooled over the tag
(`pair_noise`), and the machine-load summary shown with the evidence (`load_summary`,
`conditions`). The decision itself is Confirm's (policy_confirm.py), which calls these.

Why. The unpaired test assumes each run's noise is independent of when it ran. On a shared
machine the load comes and goes: the incumbent's runs taken at another time (calibration, an
older decision) may all have landed in a busy period and the candidate's in a quiet one, and a
change that does nothing looks like a speed-up (seen: +18.8% kept, then +1.3%, p = 0.45 when
re-measured side by side). Here the incumbent is run again *interleaved* with the candidate —
C I, then I C or C I in an order drawn per pair — and the test is a one-sided t-test on the paired
differences (on log(metric) with metric.noise = "relative"), so a load that shifts both runs of a
pair cancels out. The incumbent's older runs are context (shown), never the reference.

Guarantees:
- Pure functions of the ledger's measurements: the pairs are recovered from the decision's own
  rows in the order they were taken (measurement id), and the order of each next pair is a hash of
  (experiment id, pair index), so a decision re-made after a crash is the same.
- The noise of a paired difference is pooled over the tag: each decision's pairs around their own
  mean difference (n - 1 degrees of freedom), plus the baseline's calibration runs taken back to
  back, paired two by two (an A/A pair: mean difference 0, one degree of freedom each).
- No keep rests on one pair (Confirm): a load switching between the two runs of a pair makes one
  difference huge; a keep needs at least two pairs and must survive dropping its best pair.

When (policy.paired): "auto" (default) pairs the decisions of metrics with metric.noise =
"relative" — timings, whose noise is the machine's and drifts with its load — and leaves the
others (losses, scores: noise from seeds and data order, which does not drift) on the unpaired
test, whose figures (benchmarks/noise_gate.py) are unchanged; "always" / "never" force it.
benchmarks/drift.py measures both under a switching load.

Not covered: a load that changes faster than one run (it adds noise, which the pooled
difference measures, but cannot be paired away); experiments that change the load themselves
(a parallel program is slowed more by a busy machine than a serial one).
"""

from __future__ import annotations

import hashlib
import math
import statistics
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from . import stats

MODES = ("auto", "always", "never")
LOAD_DIFFERS = 0.25  # cpu/wall (or load average per CPU) this different from calibration's: other conditions


def enabled(paired: str, relative: bool) -> bool:
    """Whether decisions are paired: policy.paired, where "auto" means "for relative noise (timings)"."""
    return paired == "always" or (paired == "auto" and relative)


@dataclass
class Pair:
    """One candidate run and one incumbent run taken back to back; `diff` is the candidate's gain
    (incumbent minus candidate on the judged scale, sign-flipped when higher is better)."""

    candidate: dict[str, Any]
    incumbent: dict[str, Any]
    first: str  # "candidate" or "incumbent": which ran first
    diff: float


def pairs(runs: Iterable[dict[str, Any]], candidate: str, incumbent: str, lower: bool
          ) -> tuple[list[Pair], Optional[dict[str, Any]]]:
    """(complete pairs, the run still waiting for its partner) from one decision's usable runs.

    `runs`: the decision's measurements of the two commits in the order taken, metric on the
    judged scale. Consecutive runs of the two commits form a pair; a run followed by another of
    the same commit (not something Confirm asks for) is superseded by the later one.
    """
    out: list[Pair] = []
    waiting: Optional[dict[str, Any]] = None
    for m in runs:
        if m["commit"] not in (candidate, incumbent):
            continue
        if waiting is None or waiting["commit"] == m["commit"]:
            waiting = m
            continue
        c, i = (waiting, m) if waiting["commit"] == candidate else (m, waiting)
        gain = i["metric"] - c["metric"] if lower else c["metric"] - i["metric"]
        out.append(Pair(c, i, "candidate" if waiting is c else "incumbent", gain))
        waiting = None
    return out, waiting


def next_pair(experiment_id: int, index: int, candidate: tuple[str, int], incumbent: tuple[str, int]
              ) -> list[tuple[str, int]]:
    """The (commit, seed) runs of pair number `index` in a drawn but reproducible order."""
    h = hashlib.blake2b(f"pair:{experiment_id}:{index}".encode(), digest_size=1).digest()[0]
    return [candidate, incumbent] if h & 1 else [incumbent, candidate]


def pair_noise(decisions: Iterable[list[float]], calibration: Iterable[list[float]]) -> tuple[Optional[float], int]:
    """(sd of one paired difference, degrees of freedom), pooled over the tag.

    `decisions`: each decision's paired differences (deviations from their own mean count);
    `calibration`: each calibration's runs of one commit in the order taken, paired two by two
    (A/A pairs: the true difference is 0).
    """
    ss, df = 0.0, 0
    for d in decisions:
        if len(d) >= 2:
            m = stats.mean(d)
            ss += math.fsum((x - m) ** 2 for x in d)
            df += len(d) - 1
    for runs in calibration:
        for a, b in zip(runs[0::2], runs[1::2]):
            ss += (a - b) ** 2
            df += 1
    return (math.sqrt(ss / df), df) if df else (None, 0)


def paired_test(diffs: list[float], sd: float, df: int) -> tuple[float, float, float]:
    """(mean difference, t, one-sided p) of "the candidate is better" with a pooled difference sd."""
    m = stats.mean(diffs)
    if sd == 0:
        t = math.inf if m > 0 else (-math.inf if m < 0 else 0.0)
        return m, t, (0.0 if m > 0 else (1.0 if m < 0 else 0.5))
    t = m / (sd / math.sqrt(len(diffs)))
    return m, t, stats.t_sf(t, df)


# -- the machine's load around the runs ---------------------------------------------------------------
def load_summary(runs: Iterable[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """Median load average (per CPU) and CPU-time/wall-time of runs that recorded their load."""
    rec = [m.get("load") or {} for m in runs]
    la = [r["loadavg_before"] / max(1, r.get("cpus") or 1) for r in rec if r.get("loadavg_before") is not None]
    cw = [r["cpu_per_wall"] for r in rec if r.get("cpu_per_wall") is not None]
    if not la and not cw:
        return None
    out: dict[str, Any] = {"runs": len(rec)}
    if la:
        out["loadavg_per_cpu"] = round(statistics.median(la), 2)
    if cw:
        out["cpu_per_wall"] = round(statistics.median(cw), 3)
    return out


def conditions(calibration: Iterable[dict[str, Any]], now: Iterable[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """The load when the baseline's noise was calibrated beside the load now, and a note when they differ.

    Differ: the median CPU-time/wall-time ratio, or the load average per CPU, moved by more than
    LOAD_DIFFERS (a quarter of a CPU's worth). None when either side recorded no load.
    """
    then, cur = load_summary(calibration), load_summary(now)
    if not then or not cur:
        return None
    out: dict[str, Any] = {"calibration": then, "now": cur}
    moved = [k for k in ("cpu_per_wall", "loadavg_per_cpu")
             if k in then and k in cur and abs(then[k] - cur[k]) > LOAD_DIFFERS]
    if moved:
        out["note"] = ("the baseline's noise was measured under other load than now ("
                       + ", ".join(f"{k.replace('_', ' ')} {then[k]:g} then, {cur[k]:g} now" for k in moved)
                       + "): runs of different times are not comparable, only runs taken side by side")
    return out
