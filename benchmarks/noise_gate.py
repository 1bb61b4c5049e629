"""Noise gate: how often each acceptance policy keeps noise, and how often it keeps real gains.

A synthetic target with known true effects and Gaussian run-to-run noise (sd 1, in units
of which every effect is stated), and a proposer that draws, for every experiment, either
a null change (true effect 0) or a real improvement (true effect 2 sd). Each session is an
overnight run: a baseline, then `--candidates` proposals against the current best — a
ratchet, as in the loop: what a policy keeps becomes the parent of what follows.

The decisions come from the production code: the real policy classes (policy.make) read
a real Ledger (SQLite in a temporary folder) holding real Experiment rows; only the run
is simulated — `measure()` draws the metric instead of spawning a process, then stores
it with `Ledger.add_measurement` exactly as Loop.measure does, and `decide()` below is
Loop.decide's loop (ask the policy, take the runs it asks for, ask again).

The mix: a null change with probability --p-null (default 0.8). Most ideas do nothing
measurable: the original's overnight run kept 23 of 126 experiments under a rule that
also keeps noise, so one real 2-sd improvement in five proposals is generous to the agent.
The noise of run (experiment j, seed s) is the same draw for every policy (common random
numbers), so the policies are compared on the same proposals.

Printed for each policy: the share of null changes kept, the share of 2-sd improvements
kept, and extra runs (calibration, confirmation, incumbent re-measures) as a fraction of
primary runs (one per experiment, the baseline's included), each with its standard error
over sessions (sessions are independent; rows within one are not); then the share of
keeps that are noise, and real improvements kept per 100 runs (what a night yields). The last line is one
JSON object: {policy: {null_keep_rate, power_2sigma, extra_run_fraction, ...}, "setup": {...}}.

`confirm_told_truth` is a diagnostic, not a setting: the same policy handed each incumbent's true
level instead of its estimate. The gap between it and `confirm` is what not knowing the
incumbent's true level costs in a ratchet.

    python benchmarks/noise_gate.py                      # the reported figures
    python benchmarks/noise_gate.py --sessions 20 --quick
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoresearch import levels
from autoresearch import policy as policies
from autoresearch.config import Config, ExperimentConfig, MetricConfig, PolicyConfig
from autoresearch.ledger import Experiment, Ledger

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tally.py, also when loaded by path
from tally import pct, ratio, rounded  # noqa: E402

TAG = "bench"
SEED = 42
PATCH = "--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-LR = 0.02\n+LR = 0.03\n"
POLICIES: dict[str, dict[str, Any]] = {
    "greedy": {"name": "greedy"},
    "confirm": {"name": "confirm"},  # the defaults: alpha 0.05, calibration_runs 3, max_runs 4
    "confirm_thorough": {"name": "confirm", "calibration_runs": 5, "max_runs": 6},
    # A diagnostic, not a setting: confirm handed the incumbent's true level instead of its estimate.
    # What the same test and thresholds do when the reference is known exactly: the ceiling.
    "confirm_told_truth": {"name": "confirm", "oracle": True},
}


@dataclass
class Tally:
    null: int = 0
    null_kept: int = 0
    real: int = 0
    real_kept: int = 0
    primary: int = 0
    extra: int = 0
    sessions: list[tuple[int, int, int, int, int, int]] = field(default_factory=list)

    def add(self, s: "Tally") -> None:
        for k in ("null", "null_kept", "real", "real_kept", "primary", "extra"):
            setattr(self, k, getattr(self, k) + getattr(s, k))
        self.sessions.append((s.null, s.null_kept, s.real, s.real_kept, s.primary, s.extra))

    def figures(self) -> dict[str, Any]:
        cols = list(zip(*self.sessions)) if self.sessions else [()] * 6
        out: dict[str, Any] = {}
        for key, num, den in (("null_keep_rate", 1, 0), ("power_2sigma", 3, 2), ("extra_run_fraction", 5, 4)):
            rate, se = ratio(cols[num], cols[den])
            out[key], out[key + "_se"] = rounded(rate), rounded(se)
        kept = self.null_kept + self.real_kept
        out.update(noise_share_of_keeps=round(self.null_kept / kept, 4) if kept else None,
                   real_gains_per_100_runs=round(100 * self.real_kept / max(1, self.primary + self.extra), 2),
                   nulls=self.null, reals=self.real, primary_runs=self.primary, extra_runs=self.extra)
        return out


class Session:
    """One simulated overnight run of one policy against a real ledger."""

    def __init__(self, root: Path, policy_cfg: dict[str, Any], session_seed: int, p_null: float, effect: float):
        settings = {k: v for k, v in policy_cfg.items() if k != "oracle"}
        self.cfg = Config(root=root, experiment=ExperimentConfig(seed=SEED),
                          metric=MetricConfig(name="score", direction="min"), policy=PolicyConfig(**settings))
        self.ledger = Ledger(root / "ledger.db")
        self.policy = policies.make(self.cfg)
        if policy_cfg.get("oracle"):  # the diagnostic: the reference is the truth, known exactly
            self.policy._level = lambda _l, _c, inc, _b, sd: levels.Level(self.true[inc.commit], 0.0) if sd else None
        self.session_seed, self.p_null, self.effect = session_seed, p_null, effect
        self.true: dict[str, float] = {}
        self.index: dict[str, int] = {}
        self.tally = Tally()

    # -- the simulated run ---------------------------------------------------------------------
    def noise(self, j: int, seed: int) -> float:
        h = hashlib.blake2b(f"{self.session_seed}:{j}:{seed}".encode(), digest_size=8).digest()
        return random.Random(int.from_bytes(h, "big")).gauss(0.0, 1.0)

    def measure(self, exp: Experiment, commit: str, seed: int, primary: bool = False) -> float:
        value = self.true[commit] + self.noise(self.index[commit], seed)
        self.ledger.add_measurement(exp.id, commit, seed, value, {}, 1.0, "ok")
        if primary:
            self.tally.primary += 1
        else:
            self.tally.extra += 1
        return value

    def decide(self, exp: Experiment, incumbent: Experiment | None) -> policies.Verdict:
        """Loop.decide: ask the policy; take the extra measurements it wants until it decides."""
        return policies.settle(self.policy, exp, incumbent, self.ledger,
                               lambda commit, seed: self.measure(exp, commit, seed))

    def experiment(self, j: int, parent: str | None, true_mean: float, kind: str) -> Experiment:
        commit = hashlib.sha1(f"{self.session_seed}:{j}".encode()).hexdigest()
        self.true[commit], self.index[commit] = true_mean, j
        exp = Experiment(tag=TAG, parent=parent, commit=commit, description=f"{kind} {j}", kind=kind,
                         patch="" if kind == "baseline" else PATCH, seed=SEED)
        self.ledger.begin(exp)
        exp.metric = self.measure(exp, commit, SEED, primary=True)
        verdict = self.decide(exp, None if kind == "baseline" else self.ledger.incumbent(TAG))
        exp.status, exp.reason, exp.evidence = ("keep" if verdict.keep else "discard"), verdict.reason, verdict.evidence
        self.ledger.finish(exp)
        return exp

    def run(self, candidates: int) -> Tally:
        rng = random.Random(f"proposer:{self.session_seed}")
        base = self.experiment(0, None, 0.0, "baseline")
        assert base.status == "keep", base.reason
        for j in range(1, candidates + 1):
            inc = self.ledger.incumbent(TAG)
            real = rng.random() >= self.p_null
            exp = self.experiment(j, inc.commit, self.true[inc.commit] - (self.effect if real else 0.0), "candidate")
            kept = exp.status == "keep"
            if real:
                self.tally.real += 1
                self.tally.real_kept += kept
            else:
                self.tally.null += 1
                self.tally.null_kept += kept
        self.ledger.close()
        return self.tally


def bench(sessions: int, candidates: int, p_null: float, effect: float, seed: int,
          policies_: dict[str, dict[str, Any]]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="noise-gate-") as tmp:
        for label, pcfg in policies_.items():
            total, t0 = Tally(), time.monotonic()
            for s in range(sessions):
                root = Path(tmp) / f"{label}-{s}"
                root.mkdir()
                total.add(Session(root, pcfg, seed * 100_003 + s, p_null, effect).run(candidates))
            results[label] = total.figures() | {"seconds": round(time.monotonic() - t0, 1), "config": pcfg}
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=150, help="independent overnight runs per policy (default 150)")
    ap.add_argument("--candidates", type=int, default=100, help="proposals per session (default 100)")
    ap.add_argument("--p-null", type=float, default=0.8, help="probability a proposal is a null change (default 0.8)")
    ap.add_argument("--effect", type=float, default=2.0, help="true effect of a real change, in noise sd (default 2)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="only greedy and confirm")
    args = ap.parse_args(argv)
    chosen = {k: v for k, v in POLICIES.items() if not args.quick or k in ("greedy", "confirm")}
    res = bench(args.sessions, args.candidates, args.p_null, args.effect, args.seed, chosen)
    print(f"noise gate: {args.sessions} sessions x {args.candidates} proposals per policy; null changes with "
          f"p={args.p_null:g}, real ones {args.effect:g} sd better; noise sd 1 (Gaussian)")
    print(f"{'policy':18} {'null kept':>14} {'real kept':>14} {'extra runs':>14} {'noise/keeps':>11} "
          f"{'gains/100 runs':>14}   (± standard error over sessions)")
    for label, r in res.items():
        share = f"{r['noise_share_of_keeps'] * 100:.0f}%" if r["noise_share_of_keeps"] is not None else "-"
        print(f"{label:18} {pct(r, 'null_keep_rate'):>14} {pct(r, 'power_2sigma'):>14} "
              f"{pct(r, 'extra_run_fraction'):>14} {share:>11} {r['real_gains_per_100_runs']:>14.1f}   "
              f"{r['nulls']} null, {r['reals']} real, {r['seconds']}s")
    print("goals (confirm): null kept <= 5%, real kept >= 80%, extra runs <= 30%")
    setup = {"sessions": args.sessions, "candidates": args.candidates, "p_null": args.p_null,
             "effect_sigma": args.effect, "seed": args.seed}
    print(json.dumps({**res, "setup": setup}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
