"""Noise gate ceiling: the most 2-sd gains a sequential threshold rule keeps within the gate's limits,
when the incumbent's level is known only as well as the ratchet lets `confirm` know it.

benchmarks/noise_gate.py asks `confirm` for three things at once: keep <= 5% of null changes,
spend <= 30% extra runs, keep >= 80% of 2-sd improvements. This script asks what is possible.

A candidate is judged against the incumbent's *level*, and in a ratchet that level is never
known exactly: the incumbent is the candidate that won, its own runs are lucky (the winner's
curse), and what is known of it comes from those runs, its parent's level and the children
judged against it. Call the error of the best estimate of that level `e`, with variance V
(in noise-sd² units). A candidate's observed gain after n runs is then effect + noise/sqrt(n) + e.

1. V in the real ratchet: run the production `confirm` policy on the noise-gate simulator
   (benchmarks/noise_gate.py's Session: a real Ledger, real policy) and record, at each
   decision, the error of its estimate of the incumbent's level (levels.py) against the truth.
   Also the mean number of children judged against each incumbent.
2. The ceiling at each V: the best sequential rule for "null (effect 0, p = 0.8) or real
   (effect 2, p = 0.2)", up to 4 looks, with the noise sd known, V known, the error drawn
   afresh for every candidate; optionally r re-measures of the incumbent, counted as if shared
   by all its children (cost r / children per candidate, V -> 1 / (1/V + r)). The mean of a
   candidate's runs is sufficient and its likelihood ratio monotone, so (as backward induction
   confirms for this model) the best rule is a threshold rule: discard below a_n, keep at or above
   b_n, else one more run. The thresholds are searched on a grid, the winner refined one threshold
   at a time, and the winner's figures re-measured on fresh draws (each V its own stream). The
   budget is noise_gate.py's: extra runs, calibration included, over primary runs, baseline
   included, so 30% leaves (0.30 * 101 - 2) / 100 = 0.283 extra runs per candidate.
   Some simplifications favour the rule (the noise sd and V known, re-measures shared by every
   child); others do not (V the same for every decision, a Gaussian error, V taken as given though
   it depends on the policy). An exact solver for this model (a review) put the optimum about a
   point above a coarser version of this search, and letting the thresholds depend on how well
   each incumbent is known added under a point at the measured spread. Read the figures as the
   ceiling of rules of this kind, not as a proof about every rule.

    python benchmarks/noise_gate_ceiling.py             # about 5 minutes
    python benchmarks/noise_gate_ceiling.py --quick     # fewer sessions and draws

The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import noise_gate  # noqa: E402  (the simulator of the reported benchmark)

P_NULL, EFFECT, NULL_LIMIT, EXTRA_LIMIT = 0.8, 2.0, 0.05, 0.30
CANDIDATES, CALIBRATION_RUNS = 100, 3  # noise_gate.py's session: extra runs are counted over 101 primary runs
PER_CANDIDATE = (EXTRA_LIMIT * (CANDIDATES + 1) - (CALIBRATION_RUNS - 1)) / CANDIDATES  # 0.283
STEP = 0.05  # the refinement's step
A1 = [0.4, 0.6, 0.8, 1.0, 1.2]
B1 = [1.8, 2.0, 2.3, 2.6, 3.0]
A2 = [0.8, 1.1, 1.4, 1.7]
B2 = [1.5, 1.7, 1.9, 2.2]
A3 = [1.4, 1.7, 2.0]
B3 = [1.5, 1.8, 2.1]
B4 = [1.4, 1.6, 1.8, 2.0]


def ratchet_reference_error(sessions: int) -> dict[str, float]:
    """V and children per incumbent, measured on the production policy in the simulated ratchet."""
    errors, children, keeps = [], 0, 0
    with tempfile.TemporaryDirectory(prefix="ceiling-") as tmp:
        for s in range(sessions):
            root = Path(tmp) / f"s{s}"
            root.mkdir()
            session = noise_gate.Session(root, {"name": "confirm"}, 100_003 + s, P_NULL, EFFECT)
            plain, seen = session.policy._level, set()

            def level(ledger, candidate, incumbent, by_commit, sd, plain=plain, session=session, seen=seen):
                found = plain(ledger, candidate, incumbent, by_commit, sd)
                if found is not None and candidate.id not in seen:  # the first look of each decision
                    seen.add(candidate.id)
                    errors.append(found.mean - session.true[incumbent.commit])
                return found

            session.policy._level = level
            tally = session.run(100)
            children += tally.null + tally.real
            keeps += 1 + tally.null_kept + tally.real_kept
    return {"V": statistics.fmean(e * e for e in errors), "bias": statistics.fmean(errors),
            "children_per_incumbent": children / keeps, "decisions": len(errors)}


def best_rule(V: float, draws: int, children: float, rng: np.random.Generator) -> dict[str, Any]:
    """The most power of any threshold rule (and 0-2 shared incumbent re-measures) within the limits:
    a grid, then one threshold at a time in steps of STEP, then the winner re-measured on fresh draws."""
    best: dict[str, Any] = {"power": 0.0}
    for r in (0, 1, 2):
        v = 1.0 / (1.0 / V + r) if V > 0 else 0.0
        z = _draws(v, draws, rng)

        def score(rule: tuple) -> dict[str, Any]:
            return _score(z, rule, r / children)

        found = max((score(rule) for rule in itertools.product(A1, B1, A2, B2, A3, B3, B4)
                     if rule[2] <= rule[3] and rule[4] <= rule[5]), key=lambda x: x["power"])
        while found["power"] > 0:  # refine: move one threshold by a step while that helps
            better = max((score(tuple(t + d * (k == i) for k, t in enumerate(found["thresholds"])))
                          for i in range(7) for d in (-STEP, STEP)), key=lambda x: x["power"])
            if better["power"] <= found["power"]:
                break
            found = better
        if found["power"] > best["power"]:
            best = found | {"incumbent_remeasures": r, "v": v}
    if best["power"] > 0:  # the search kept the luckiest rule: its figures again, on fresh draws
        again = _score(_draws(best["v"], draws, rng), tuple(best["thresholds"]),
                       best["incumbent_remeasures"] / children, limits=False)
        best |= {k: again[k] for k in ("power", "null_keep_rate", "extra_run_fraction")}
    return best


def _draws(v: float, draws: int, rng: np.random.Generator) -> dict[float, np.ndarray]:
    """z_n of a null and of a real candidate after n = 1..4 runs, the reference error held per candidate."""
    n = np.arange(1, 5)
    z = {}
    for effect in (0.0, EFFECT):
        gain = effect + np.cumsum(rng.standard_normal((draws, 4)), axis=1) / n
        gain += math.sqrt(v) * rng.standard_normal(draws)[:, None]
        z[effect] = gain / np.sqrt(1.0 / n + v)
    return z


def _score(z: dict[float, np.ndarray], rule: tuple, cost: float, limits: bool = True) -> dict[str, Any]:
    """Power, null keeps and extra runs (as noise_gate.py counts them) of one rule; power 0 outside the limits."""
    a1, b1, a2, b2, a3, b3, b4 = rule
    (null_rate, x0), (power, x1) = (_apply(z[e], ((a1, b1), (a2, b2), (a3, b3), (b4, b4))) for e in (0.0, EFFECT))
    runs = P_NULL * x0 + (1 - P_NULL) * x1 + cost
    ok = null_rate <= NULL_LIMIT and runs <= PER_CANDIDATE
    return {"power": power if ok or not limits else 0.0, "null_keep_rate": null_rate,
            "extra_run_fraction": (runs * CANDIDATES + CALIBRATION_RUNS - 1) / (CANDIDATES + 1),
            "thresholds": [round(t, 3) for t in rule]}


def _apply(z: np.ndarray, looks) -> tuple[float, float]:
    alive = np.ones(z.shape[0], bool)
    kept = np.zeros(z.shape[0], bool)
    runs = np.zeros(z.shape[0])
    for i, (a, b) in enumerate(looks):
        runs += alive
        keep = alive & (z[:, i] >= b)
        kept |= keep
        alive &= ~keep & (z[:, i] >= a)
    return float(kept.mean()), float(runs.mean() - 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=30, help="ratchet sessions to measure V on (default 30)")
    ap.add_argument("--draws", type=int, default=40_000, help="Monte Carlo draws per arm (default 40000)")
    ap.add_argument("--quick", action="store_true", help="8 sessions, 10000 draws")
    args = ap.parse_args(argv)
    if args.quick:
        args.sessions, args.draws = 8, 10_000
    t0 = time.monotonic()
    measured = ratchet_reference_error(args.sessions)
    print(f"the ratchet (production confirm, {args.sessions} sessions x 100 proposals, {measured['decisions']} "
          f"decisions): error of the incumbent's estimated level: bias {measured['bias']:+.3f} sd, "
          f"V = {measured['V']:.3f} sd^2; {measured['children_per_incumbent']:.1f} children per incumbent")
    rows = {}
    print(f"{'V (sd^2)':>9} {'best power':>11} {'null kept':>10} {'extra runs':>11} {'re-measures':>12}")
    for i, V in enumerate((0.0, 0.05, 0.1, 0.15, 0.2, round(measured["V"], 3))):
        best = best_rule(V, args.draws, measured["children_per_incumbent"], np.random.default_rng([7, i]))
        rows[str(V)] = best
        print(f"{V:>9.3f} {best['power'] * 100:>10.1f}% {best.get('null_keep_rate', 0) * 100:>9.1f}% "
              f"{best.get('extra_run_fraction', 0) * 100:>10.1f}% {best.get('incumbent_remeasures', 0):>12}")
    print(f"limits: null kept <= {NULL_LIMIT:.0%}, extra runs <= {EXTRA_LIMIT:.0%}; the goal asks >= 80% power "
          f"({time.monotonic() - t0:.0f}s)")
    print(json.dumps({"ratchet": measured, "ceiling": rows, "draws": args.draws, "sessions": args.sessions}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
