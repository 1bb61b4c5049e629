"""Noise gate ceiling: the most 2-sd gains any rule can keep within the gate's limits, in a ratchet.

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
   by all its children (cost r / children per candidate, V -> 1 / (1/V + r)). The likelihood
   ratio is monotone in the observed gain at every look, so the best rule is a threshold rule:
   discard below a_n, keep at or above b_n, else one more run; the thresholds are searched on a
   grid, by Monte Carlo with the same draws for every rule. Most simplifications favour the
   rule (the noise sd and V known, re-measures shared by every child); one does not: V is the
   same for every decision here, while in the ratchet some incumbents are known better than
   others. So read the figures as the ceiling of rules of this kind, not as a proof.

    python benchmarks/noise_gate_ceiling.py             # about 2 minutes
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import noise_gate  # noqa: E402  (the simulator of the reported benchmark)

P_NULL, EFFECT, NULL_LIMIT, EXTRA_LIMIT = 0.8, 2.0, 0.05, 0.30
A1 = [0.4, 0.6, 0.8, 1.0, 1.2]
B1 = [1.8, 2.0, 2.3, 2.6, 3.0]
A2 = [0.8, 1.1, 1.4, 1.7]
B2 = [1.5, 1.7, 1.9, 2.2]
A3 = [1.4, 1.7, 2.0]
B3 = [1.5, 1.7, 1.9]
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


def best_rule(V: float, draws: int, children: float, rng: np.random.Generator) -> dict[str, float]:
    """The most power of any threshold rule (and 0-2 shared incumbent re-measures) within the limits."""
    best = {"power": 0.0}
    noise = rng.standard_normal((2, draws, 4))
    ref = rng.standard_normal((2, draws))
    n = np.arange(1, 5)
    for r in (0, 1, 2):
        v = 1.0 / (1.0 / V + r) if V > 0 else 0.0
        cost = r / children
        z = {}
        for i, effect in enumerate((0.0, EFFECT)):  # the observed gain after n runs, in its own sd
            gain = effect + np.cumsum(noise[i], axis=1) / n + math.sqrt(v) * ref[i][:, None]
            z[effect] = gain / np.sqrt(1.0 / n + v)
        for rule in itertools.product(A1, B1, A2, B2, A3, B3, B4):
            a1, b1, a2, b2, a3, b3, b4 = rule
            if a2 > b2 or a3 > b3:
                continue
            kept, extra = [], []
            for effect in (0.0, EFFECT):
                k, x = _apply(z[effect], ((a1, b1), (a2, b2), (a3, b3), (b4, b4)))
                kept.append(k)
                extra.append(x)
            null_rate, power = kept
            runs = P_NULL * extra[0] + (1 - P_NULL) * extra[1] + cost
            if null_rate <= NULL_LIMIT and runs <= EXTRA_LIMIT and power > best["power"]:
                best = {"power": power, "null_keep_rate": null_rate, "extra_run_fraction": runs,
                        "incumbent_remeasures": r, "thresholds": [a1, b1, a2, b2, a3, b3, b4]}
    return best


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
    rng = np.random.default_rng(7)
    rows = {}
    print(f"{'V (sd^2)':>9} {'best power':>11} {'null kept':>10} {'extra runs':>11} {'re-measures':>12}")
    for V in (0.0, 0.05, 0.1, 0.2, round(measured["V"], 3)):
        best = best_rule(V, args.draws, measured["children_per_incumbent"], rng)
        rows[str(V)] = best
        print(f"{V:>9.3f} {best['power'] * 100:>10.1f}% {best.get('null_keep_rate', 0) * 100:>9.1f}% "
              f"{best.get('extra_run_fraction', 0) * 100:>10.1f}% {best.get('incumbent_remeasures', 0):>12}")
    print(f"limits: null kept <= {NULL_LIMIT:.0%}, extra runs <= {EXTRA_LIMIT:.0%}; the goal asks >= 80% power "
          f"({time.monotonic() - t0:.0f}s)")
    print(json.dumps({"ratchet": measured, "ceiling": rows, "draws": args.draws, "sessions": args.sessions}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
