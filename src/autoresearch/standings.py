"""Who is the best researcher: per-researcher figures over a tag, one computation for every view.

Owns `compute()` (rows, their runs and the noise -> `Standings`), `of()` (the same read from the
ledger), `researcher_of()` (whose row it is), `spent()` (a researcher's dollars and tokens, for its
caps) and the text table. `status` (text and `--json`:
`researchers`, `researchers_total`), `results --json` (each row's `researcher`) and report.html
show these; none computes its own.

Definitions, per researcher (a row's researcher is its `researcher` column, else — rows written
before teams, tool mode, the swarm — its `agent`; the baseline is nobody's and is left out):
- rows: every row of it, of every status, running included.
- proposals: its rows that are a change it proposed: every row but re-runs of an earlier row (a
  `rebase` row, or a row resumed after an interruption: evidence `rebase_of` / `resumed_from`),
  which are the same proposal measured again.
- keeps: its `keep` rows (a rebased or resumed row that is kept counts: it is its change kept).
  A proposal leads to at most one keep, so keeps <= proposals. keep_rate: keeps / proposals.
- effect per keep: the mean, over its keeps, of the keep's gain over its parent (the incumbent it
  was judged against), both measured as figures.py measures the start and the best (the commit's
  usable runs, else the row's metric once; relative noise on the log scale, given back in metric
  units). `effect` is in metric units (positive = better); `effect_sigma` is the same gain in units
  of the tag's pooled run-to-run noise (figures.noise(), the policy's estimate), None where the
  noise is not measured (no commit run twice) or is zero (a deterministic metric). A keep whose
  parent has no value is left out of both (`effects` counts those measured).
- failed: its rows whose status is crash, timeout, violation or checks_failed (ledger.FAILED: no
  usable result; an agent that fails to propose is a `crash` row). `statuses` has every status.
- latency_s: the median `agent_latency_s` over its proposals that have one.
- tokens_in / tokens_out / tokens / cost_usd: summed over its rows.
- usd_per_keep: cost_usd / keeps (None with no keep).
The total is the same computation over every non-baseline row, so each summed figure (rows,
proposals, keeps, failed, tokens, cost) of the researchers adds up to the total's; the total's
cost and tokens are also status's totals (a baseline row has no agent spending).

Not covered: keeps are judged on the runs that made them keeps, so `effect` flatters like the
ledger's own figure does (the winner's curse; figures.py); a researcher's ideas also depend on
when it proposed (early keeps are easier), which no per-row figure corrects.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

from . import figures
from .ledger import FAILED, Experiment, Ledger

TOTAL = "total"
_NUMBERED = re.compile(r"^(.*)#(\d+)$")


@dataclass
class Standing:
    """One researcher's figures (or the total's); see the module docstring for each."""

    researcher: str
    rows: int = 0
    proposals: int = 0
    keeps: int = 0
    keep_rate: Optional[float] = None
    effect: Optional[float] = None
    effect_sigma: Optional[float] = None
    effects: int = 0
    failed: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    latency_s: Optional[float] = None
    tokens_in: int = 0
    tokens_out: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    usd_per_keep: Optional[float] = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Standings:
    researchers: list[Standing]
    total: Standing
    noise_measured: bool  # effect_sigma is given (the tag's noise is measured and not zero)

    def lines(self) -> list[str]:
        """The short table `status` prints: one line per researcher, and the total when there are several."""
        if not self.researchers:
            return []
        head = ("researcher", "proposals", "keeps", "rate", "effect/keep", "failed", "latency", "tokens", "cost",
                "$/keep")
        shown = self.researchers + ([self.total] if len(self.researchers) > 1 else [])
        body = [self._cells(s) for s in shown]
        widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
        return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
                for r in [head, *body]]

    def _cells(self, s: Standing) -> tuple[str, ...]:
        if s.effect_sigma is not None:
            effect = f"{s.effect_sigma:+.2g}σ"
        else:
            effect = figures.Format().signed(s.effect) if s.effect is not None else "-"  # no noise: 6 digits
        return (s.researcher, str(s.proposals), str(s.keeps), f"{s.keep_rate:.0%}" if s.keep_rate is not None else "-",
                effect, str(s.failed), figures.duration(s.latency_s) if s.latency_s is not None else "-",
                _count(s.tokens), f"${s.cost_usd:.2f}", f"${s.usd_per_keep:.2f}" if s.usd_per_keep is not None else "-")

    def to_json(self) -> dict[str, Any]:
        """`researchers` and `researchers_total`, as `status --json` carries them."""
        return {"researchers": [s.to_json() for s in self.researchers], "researchers_total": self.total.to_json()}


def researcher_of(e: Experiment) -> str:
    """Whose row it is: its researcher, else (rows from before teams) its agent; '' for the baseline."""
    if e.kind == "baseline":
        return ""
    return e.researcher or e.agent or "?"


def is_rerun(e: Experiment) -> bool:
    """A row that measures again a change proposed in an earlier row (rebased, or resumed after an interruption)."""
    ev = e.evidence if isinstance(e.evidence, dict) else {}
    return e.kind == "rebase" or bool(ev.get("rebase_of") or ev.get("resumed_from"))


def spent(rows: Sequence[Experiment], researcher: str) -> tuple[float, int]:
    """(dollars, tokens in + out) that `researcher` has spent over `rows` (every session of the tag): what
    its own `max_usd` / `max_tokens` are checked against."""
    mine = [e for e in rows if researcher_of(e) == researcher]
    return math.fsum(e.cost_usd or 0.0 for e in mine), sum((e.tokens_in or 0) + (e.tokens_out or 0) for e in mine)


def compute(rows: Sequence[Experiment], runs: dict[str, list[tuple[int, float]]], sd: Optional[float], df: int,
            spec: figures.Spec) -> Standings:
    """The standings of a tag's rows, given their runs by commit (figures.commit_runs) and the pooled noise."""
    rows = list(rows)
    by_commit: dict[str, Experiment] = {}
    for e in rows:  # the row each parent commit was judged by: the latest keep (or baseline) of that commit
        if e.commit and (e.status == "keep" or e.kind == "baseline"):
            by_commit[e.commit] = e
    effects = {e.id: _effect(e, by_commit, runs, sd, df, spec) for e in rows
               if e.status == "keep" and e.kind != "baseline"}
    groups: dict[str, list[Experiment]] = {}
    for e in rows:
        if who := researcher_of(e):
            groups.setdefault(who, []).append(e)
    sigma = sd is not None and sd > 0
    out = [_standing(who, group, effects, sigma) for who, group in sorted(groups.items(), key=lambda kv: _order(kv[0]))]
    total = _standing(TOTAL, [e for g in groups.values() for e in g], effects, sigma)
    return Standings(out, total, sigma)


def of(ledger: Ledger, tag: str, spec: figures.Spec, rows: Optional[Sequence[Experiment]] = None,
       noise: Optional[figures.Noise] = None) -> Standings:
    """The tag's standings from the ledger: its rows, their runs, and the noise status reports (`noise`:
    figures.noise() when the caller has it already)."""
    rows = list(rows) if rows is not None else ledger.experiments(tag)
    noise = noise or figures.noise(ledger, tag, spec, rows)
    return compute(rows, figures.commit_runs(ledger, tag), noise.sd, noise.df, spec)


def _effect(e: Experiment, by_commit: dict[str, Experiment], runs: dict[str, list[tuple[int, float]]],
            sd: Optional[float], df: int, spec: figures.Spec) -> Optional[tuple[float, Optional[float]]]:
    """(gain over its parent in metric units, the same in noise sd or None) of a keep; None when not measurable."""
    parent = by_commit.get(e.parent or "")
    before = figures.row_values(parent, runs) if parent is not None else [v for _, v in runs.get(e.parent or "", [])]
    after = figures.row_values(e, runs)
    if not before or not after:
        return None
    try:
        est = figures.estimate(before, after, sd, df, spec)
    except ValueError:  # relative noise and a value <= 0: plain units, no noise
        est = figures.estimate(before, after, None, 0, figures.Spec(spec.name, spec.lower, False, spec.alpha))
    sigma = est["effect_sigma"] if sd is not None and sd > 0 else None
    return est["improvement"], sigma


def _standing(who: str, group: list[Experiment], effects: dict[Optional[int], Any], sigma: bool) -> Standing:
    s = Standing(who, rows=len(group))
    proposals = [e for e in group if not is_rerun(e)]
    s.proposals = len(proposals)
    s.keeps = sum(e.status == "keep" for e in group)
    s.keep_rate = s.keeps / s.proposals if s.proposals else None
    measured = [effects[e.id] for e in group if effects.get(e.id) is not None]
    s.effects = len(measured)
    if measured:
        s.effect = statistics.fmean(g for g, _ in measured)
        s.effect_sigma = statistics.fmean(z for _, z in measured) if sigma else None
    s.failed = sum(e.status in FAILED for e in group)
    for e in group:
        s.statuses[e.status] = s.statuses.get(e.status, 0) + 1
    latencies = [e.agent_latency_s for e in proposals if e.agent_latency_s is not None]
    s.latency_s = statistics.median(latencies) if latencies else None
    s.tokens_in = sum(e.tokens_in or 0 for e in group)
    s.tokens_out = sum(e.tokens_out or 0 for e in group)
    s.tokens = s.tokens_in + s.tokens_out
    s.cost_usd = math.fsum(e.cost_usd or 0.0 for e in group)
    s.usd_per_keep = s.cost_usd / s.keeps if s.keeps else None
    return s


def _order(label: str) -> tuple:
    """The team's order: numbered researchers by their number (#1, #2, ... #10), then the others by name."""
    m = _NUMBERED.match(label)
    return (0, int(m.group(2)), label) if m else (1, 0, label)


def _count(n: int) -> str:
    """1234 -> 1.2k, 3400000 -> 3.4M."""
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)
