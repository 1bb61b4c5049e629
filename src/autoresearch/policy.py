"""Acceptance policies: given a measured candidate and the incumbent, keep or discard.

A policy never runs anything itself. When it needs more evidence it returns a verdict
with `more_runs` — (commit, seed) pairs to measure — and the loop measures them, stores
them in the ledger's `measurements` table and asks again. Every verdict carries the
evidence it was based on, stored with the experiment.

- greedy: keep iff strictly better than the incumbent (the original's rule).
- threshold: keep iff better by more than `policy.margin`.
- confirm: noise-aware; see policy_confirm.py (registered here by name).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from .config import Config
from .ledger import Experiment, Ledger


@dataclass
class Verdict:
    keep: bool
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)
    more_runs: list[tuple[str, int]] = field(default_factory=list)


class Policy(Protocol):
    name: str

    def decide(self, candidate: Experiment, incumbent: Optional[Experiment], ledger: Ledger) -> Verdict: ...


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

    def decide(self, candidate: Experiment, incumbent: Optional[Experiment], ledger: Ledger) -> Verdict:
        if incumbent is None or incumbent.metric is None:
            return Verdict(True, "first measurement: the starting point")
        gain = improvement(candidate.metric, incumbent.metric, self.lower)
        evidence = {"runs": 1, "candidate": candidate.metric, "incumbent": incumbent.metric, "delta": -gain
                    if self.lower else gain, "margin": self.margin}
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


def make(cfg: Config) -> Policy:
    name = cfg.policy.name
    if name == "greedy":
        return Greedy(cfg)
    if name == "threshold":
        return Threshold(cfg)
    if name == "confirm":
        from .policy_confirm import Confirm

        return Confirm(cfg)
    raise AssertionError(f"policy {name!r} passed config validation but has no implementation")
