"""Paired confirmation: judge a candidate against its incumbent measured in the same time window.

Owns: when a decision is paired (`enabled`), how the runs of one decision form pairs (`pairs`),
the order of the next pair (`next_pair`), the noise of a paired difference pooled over the tag
(`pair_noise`), the classes of pairs by the CPU their runs got and each class's noise
(`pair_class`, `class_noise`, `weighted_test`), and the machine-load summary shown with the
evidence (`load_summary`, `conditions`). The decision itself is Confirm's (policy_confirm.py),
which calls these.

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

Noisy pairs count less. On a shared machine a run that waited for a CPU is slowed by however
long it waited: on drift.py's real runs a pair's difference had sd ~0.07 (of log time) when both
runs got their quiet CPU share and the same share, ~0.3 when the machine was busy or the load
changed between them. Each pair is put in a class by its runs' CPU time / wall time (busy: the
lower share under BUSY_SHARE of the program's quiet share; uneven: the two shares differ by more
than UNEVEN), each class's sd is pooled over the tag, and the test weights each pair by one over
its class's variance (Satterthwaite's degrees of freedom). The classes are symmetric in the two
runs, so nothing favours either side under a null change; the difference of each pair is never
adjusted by CPU time (that would credit a change that waits: sleeps, I/O); and Confirm keeps only
when the plain mean favours the candidate too. Without load records (or while a class has fewer
than MIN_CLASS_DF degrees of freedom) every pair counts alike.

When (policy.paired): "auto" (default) pairs the decisions of metrics with metric.noise =
"relative" — timings, whose noise is the machine's and drifts with its load — and leaves the
others (losses, scores: noise from seeds and data order, which does not drift) on the unpaired
test, whose figures (benchmarks/noise_gate.py) are unchanged; "always" / "never" force it.
benchmarks/drift.py measures both under a switching load.

Not covered: a change whose slow runs are exactly its noisy ones (intermittent stalls that also
lower its CPU share: its pairs weigh less; the plain-mean rule stops it only when the stalls
outweigh the gain); a load that changes faster than one run (it adds noise, which the pooled
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


# -- noisy pairs count less: the CPU share of each run ---------------------------------------------------
BUSY_SHARE = 0.8  # a pair is busy when a run got less than this fraction of the program's quiet CPU share
UNEVEN = 0.1  # a pair is uneven when its two runs' CPU shares differ by more than this (in log)
QUIET_QUANTILE = 0.9  # the program's quiet CPU share: this quantile of its runs' CPU time / wall time
MIN_SHARES = 6  # fewer runs with a load record than this: no quiet share, pairs are not told apart
MIN_CLASS_DF = 2  # a class needs this many degrees of freedom of its own before its pairs are weighted
CLASSES = ("quiet, even", "busy, even", "quiet, uneven", "busy, uneven")


def share(m: dict[str, Any]) -> Optional[float]:
    """A run's CPU time / wall time (from its load record), or None when none was recorded."""
    v = (m.get("load") or {}).get("cpu_per_wall")
    return v if v is not None and v > 0 else None


def quiet_share(runs: Iterable[dict[str, Any]]) -> Optional[float]:
    """The CPU share the program gets on a quiet machine: a high quantile of its runs' CPU/wall."""
    got = sorted(v for v in map(share, runs) if v is not None)
    if len(got) < MIN_SHARES:
        return None
    return got[min(len(got) - 1, int(QUIET_QUANTILE * len(got)))]


def pair_class(a: dict[str, Any], b: dict[str, Any], quiet: Optional[float]) -> Optional[int]:
    """The class of a pair by the CPU its two runs got (an index into CLASSES; None: unknown).

    Busy: the run that got less of a CPU got less than BUSY_SHARE of the program's quiet share.
    Uneven: the two runs' shares differ by more than UNEVEN in log (the load changed between
    them). Both are symmetric in the two runs — which one is the candidate does not matter — so
    under a null change a pair of any class favours either side alike, and a candidate that waits
    (lower CPU share on every run) only puts its pairs in noisier classes: never credited for it.
    """
    sa, sb = share(a), share(b)
    if quiet is None or sa is None or sb is None:
        return None
    return int(min(sa, sb) < BUSY_SHARE * quiet) + 2 * int(abs(math.log(sa / sb)) > UNEVEN)


@dataclass
class ClassNoise:
    """The sd of one paired difference in each class of pairs (CLASSES), pooled over the tag, with
    its degrees of freedom."""

    sd: dict[int, float]
    df: dict[int, float]

    def usable(self, classes: Iterable[Optional[int]]) -> bool:
        """Whether pairs of these classes can be weighted: each class measured well enough."""
        return all(k is not None and self.sd.get(k) and self.df.get(k, 0) >= MIN_CLASS_DF for k in classes)

    def var(self, k: int) -> float:
        return self.sd[k] ** 2

    def as_dict(self) -> dict[str, Any]:
        return {CLASSES[k]: {"sd": self.sd[k], "df": round(self.df[k], 1)} for k in sorted(self.sd)}


def class_noise(decisions: Iterable[list[tuple[float, Optional[int]]]],
                calibration: Iterable[tuple[float, Optional[int]]]) -> ClassNoise:
    """Each class's noise, pooled over the tag like `pair_noise`.

    `decisions`: each decision's (difference, class) pairs; `calibration`: the A/A pairs of the
    baseline's back-to-back runs (true difference 0: one degree of freedom each). A decision's
    pairs count around their own weighted mean (first with equal weights, then once more with
    the weights that gives), each pair giving 1 - w/W of a degree of freedom to its class: a
    decision of n pairs gives n - 1 in all. Pairs of unknown class are left out.
    """
    decisions = [[(d, k) for d, k in dec if k is not None] for dec in decisions]
    base_ss: dict[int, float] = {}
    base_df: dict[int, float] = {}
    for d, k in calibration:
        if k is not None:
            base_ss[k] = base_ss.get(k, 0.0) + d * d
            base_df[k] = base_df.get(k, 0.0) + 1
    var: dict[int, float] = {}
    for _ in range(2):
        ss, df = dict(base_ss), dict(base_df)
        for dec in decisions:
            if len(dec) < 2:
                continue
            w = [1.0 / var[k] if var.get(k) else 1.0 for _, k in dec] if var else [1.0] * len(dec)
            total = math.fsum(w)
            m = math.fsum(wi * d for wi, (d, _) in zip(w, dec)) / total
            for wi, (d, k) in zip(w, dec):
                ss[k] = ss.get(k, 0.0) + (d - m) ** 2
                df[k] = df.get(k, 0.0) + 1 - wi / total
        fine = {k: ss[k] / df[k] for k in ss if df[k] >= MIN_CLASS_DF and ss[k] > 0}
        if len(fine) < len(ss):  # a class too thin to weight by: every pair counts alike
            break
        var = fine
    return ClassNoise({k: math.sqrt(ss[k] / df[k]) for k in ss if df[k] > 0}, {k: df[k] for k in ss if df[k] > 0})


def weighted_test(diffs: list[float], classes: list[int], noise: ClassNoise
                  ) -> tuple[float, float, float, float, float]:
    """(weighted mean difference, its standard error, t, one-sided p, degrees of freedom) of "the
    candidate is better", each pair weighted by 1 / the variance of its class (needs `noise.usable`).

    The degrees of freedom are Satterthwaite's for the weights' total: a mean resting on quiet pairs
    is as sure as the quiet pairs' own variance estimate, however many busy pairs the tag has seen.
    """
    w = [1.0 / noise.var(k) for k in classes]
    total = math.fsum(w)
    m = math.fsum(wi * d for wi, d in zip(w, diffs)) / total
    se = 1.0 / math.sqrt(total)
    t = m / se
    parts: dict[int, float] = {}
    for wi, k in zip(w, classes):
        parts[k] = parts.get(k, 0.0) + wi
    df = total ** 2 / math.fsum(v ** 2 / noise.df[k] for k, v in parts.items())
    return m, se, t, stats.t_sf(t, df), df


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
