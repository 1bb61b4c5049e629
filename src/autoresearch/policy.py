"""Acceptance policies: given a measured candidate and the incumbent, keep or discard.

A policy never runs anything itself. When it needs more evidence it returns a verdict
with `more_runs` — (commit, seed) pairs to measure — and the loop measures them, stores
them in the ledger's `measurements` table and asks again. Every verdict carries the
evidence it was based on, stored with the experiment.

- greedy: keep iff strictly better than the incumbent (the original's rule).
- threshold: keep iff better by more than `policy.margin`.
- confirm: noise-aware; see policy_confirm.py (made here by name).
- auto (the default): confirm where noise is measured (policy.calibration_runs >= 2),
  else greedy. Zero config (the original's three files, no toml) is greedy, as the original.

Every policy discards a change that only touches a seed (integrity.seed_only_change): a new
draw of the noise is never an improvement, whatever the one run says. What a policy answers
(Verdict) lives in verdict.py, which every policy imports, so the policies import each other in
one direction only (this module makes them by name).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Protocol

from .config import Config
from .integrity import seed_only_change
from .ledger import Experiment, Ledger
from .noise import pooled_noise
from .policy_confirm import Confirm
from .stats import Scale
from .verdict import Verdict

__all__ = ["Verdict", "seed_only_change", "Policy", "MAX_ASKS", "settle", "better", "improvement", "Greedy",
           "Threshold", "Confirm", "resolve", "make"]


class Policy(Protocol):
    name: str

    def decide(self, candidate: Experiment, incumbent: Optional[Experiment], ledger: Ledger) -> Verdict: ...


MAX_ASKS = 20  # a policy that still wants runs after this many answers is discarding by indecision


def settle(policy: "Policy", candidate: Experiment, incumbent: Optional[Experiment], ledger: Ledger,
           measure: Callable[[str, int], None]) -> Verdict:
    """Ask `policy` until it decides, taking every (commit, seed) run it asks for with `measure` (which
    records it in `ledger`): the one decision path of the benchmarks and tests (the driver asks through winners.py)."""
    for _ in range(MAX_ASKS):
        verdict = policy.decide(candidate, incumbent, ledger)
        if not verdict.more_runs:
            return verdict
        for commit, seed in verdict.more_runs:
            measure(commit, seed)
    return Verdict(False, f"the policy asked for more runs {MAX_ASKS} times: discarded", verdict.evidence)


def better(a: float, b: float, lower_is_better: bool) -> bool:
    return a < b if lower_is_better else a > b


def improvement(candidate: float, incumbent: float, lower_is_better: bool) -> float:
    """How much better the candidate is (positive = better), in the metric's units."""
    return incumbent - candidate if lower_is_better else candidate - incumbent


class Greedy:
    name = "greedy"

    def __init__(self, cfg: Config):
        self.lower = cfg.lower_is_better()
        self.margin = 0.0
        self.scale = Scale.of(cfg.metric.noise)

    def decide(self, candidate: Experiment, incumbent: Optional[Experiment], ledger: Ledger) -> Verdict:
        if incumbent is None or incumbent.metric is None:
            return Verdict(True, "first measurement: the starting point")
        gain = improvement(candidate.metric, incumbent.metric, self.lower)
        evidence = {"runs": 1, "candidate": candidate.metric, "incumbent": incumbent.metric, "delta": -gain
                    if self.lower else gain, "margin": self.margin}
        evidence |= _one_run_evidence(self.name, candidate, incumbent, gain, ledger, self.scale)
        if seed_only_change(candidate.patch):
            return Verdict(False, "only a seed changed: a different draw of the noise, not an improvement", evidence)
        if gain > self.margin:
            return Verdict(True, f"better than #{incumbent.id} by {gain:.6g}", evidence)
        if gain > 0:
            return Verdict(False, f"better by {gain:.6g}, not more than the margin {self.margin:g}", evidence)
        return Verdict(False, f"not better than #{incumbent.id} ({candidate.metric:.6g} vs {incumbent.metric:.6g})",
                       evidence)


class Threshold(Greedy):
    name = "threshold"

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.margin = cfg.policy.margin


def resolve(cfg: Config) -> str:
    """The policy a config means: `auto` is `confirm` where noise is measured (calibration_runs >= 2), else greedy."""
    name = cfg.policy.name
    if name == "auto":
        return "confirm" if cfg.policy.calibration_runs >= 2 else "greedy"
    return name


def make(cfg: Config) -> Policy:
    name = resolve(cfg)
    if name == "greedy":
        return Greedy(cfg)
    if name == "threshold":
        return Threshold(cfg)
    if name == "confirm":
        return Confirm(cfg)
    raise AssertionError(f"policy {name!r} passed config validation but has no implementation")


def _one_run_evidence(name: str, candidate: Experiment, incumbent: Experiment, gain: float,
                      ledger: Ledger, scale: Scale = Scale()) -> dict[str, Any]:
    """The common evidence keys for a one-run rule, with the effect in noise units when noise was measured."""
    ev: dict[str, Any] = {"test": f"{name}: one run each, no test", "seeds": [candidate.seed],
                          "mean": candidate.metric, "incumbent_mean": incumbent.metric, "gain": gain}
    sd, df = pooled_noise(ledger, candidate.tag, scale)
    if sd and (not scale.relative or min(candidate.metric, incumbent.metric) > 0):
        judged = abs(scale.judged(incumbent.metric) - scale.judged(candidate.metric))  # the gain, on the test's scale
        ev |= {"std": sd, "df": df, "effect_sigma": math.copysign(judged, gain) / sd}
        if scale.relative:
            ev["noise"] = Scale.NOTE
    return ev
