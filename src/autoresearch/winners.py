"""Winners: how a result becomes `keep` or `discard` when experiments run side by side.

A mixin of the Driver (driver.py), which owns the queues; everything here runs on the
driver's one thread, so the branch has a single writer.

Rules:
- Within one hardware class. A result is compared with its parent (or the best) as
  measured on the class it ran on: the mean of that commit's measurements there. When
  there are none, that commit is measured on that class first (a `reference` run), so an
  H200 result is never judged against an H100 number. With `engine.reference` set, a
  win on another class is only a screen: the candidate is run again on the reference
  class (a `confirm` run) and judged there.
- Keep. A candidate whose parent is the best is judged by the policy (with the reruns it
  asks for, on the same class); a keep moves the branch from that parent by
  compare-and-swap, after `guards.enforce` (bounds, checks in the session's sandbox).
- Stale parent. If the best moved while it ran, the candidate is first judged against
  its own parent. Not better: discarded, saying what the best became. Better: its change
  is cherry-picked onto the best (workspace.rebase) as a new row of kind `rebase`
  (evidence `rebase_of`), queued ahead of new proposals and judged like any candidate;
  the original row is discarded with reason "... rebased onto it as #n" (evidence
  `rebased_as`). A conflict is a discard naming the files; a change already in the best
  is a discard; after MAX_REBASES the change is dropped.
- Every verdict keeps the policy's evidence and adds `measurements` (each one with its
  worker, hardware class, times and attempt), `screen` and `lost` where they apply.
- Guarded. Before a row is recorded and the branch moved, the harness's state is compared
  with what the harness wrote and put back (RunSession.put_back); the incumbent and the
  rows decisions read come from the session's own record (Ledger), never from a row
  someone else inserted, and proposals start from where the harness set the branch.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field
from typing import Any, Optional

from . import guards
from .errors import AutoresearchError
from .judge import Measurement
from .ledger import Experiment
from .policy import Verdict
from .states import OK, Kind, Status
from .workspace import NothingChanged, RebaseConflict

MAX_REBASES = 3  # a change re-based this many times without being kept is discarded
MAX_ASKS = 20  # policy rounds (and reference runs) for one experiment


@dataclass
class Pending:
    """An experiment in flight: its jobs not back yet and every measurement taken for it."""

    exp: Experiment
    hardware: str = ""  # the class its result is judged in
    outstanding: set = field(default_factory=set)  # keys of its jobs not back yet
    runs: list = field(default_factory=list)  # every measurement taken for it (evidence)
    lost: list = field(default_factory=list)
    screen: Optional[dict] = None  # two-tier: the screening result on another class
    asks: int = 0
    final: bool = False  # confirm's runs: measured and recorded, never decided
    last: Optional[Measurement] = None


class Decisions:
    def decide(self, st: Pending) -> None:
        exp, inc = st.exp, self.ledger.incumbent(self.tag)
        st.asks += 1
        if st.asks > MAX_ASKS:
            return self.conclude(st, Verdict(False, f"no decision after {MAX_ASKS} rounds of runs: discarded"), inc)
        against = view = None
        if exp.kind != Kind.BASELINE and inc is not None:
            against = inc if exp.parent == inc.commit else self.kept(exp.parent)
            if against is None:
                return self.conclude(st, Verdict(False, f"its parent {exp.parent[:7]} is not a kept commit"), inc)
            view = self.on_class(st, against)
            if view is None:
                return  # measuring `against` on this class first
        verdict = self.policy.decide(exp, view, self.ledger)
        if verdict.more_runs:
            for commit, seed in verdict.more_runs:
                self.session.report("rerun", exp=exp, commit=commit, seed=seed)
                self.jobs.appendleft(self.job(st, commit, seed, "rerun", hardware=st.hardware))
            return
        if against is not None and against is not inc:
            if verdict.keep:
                return self.rebase(st, against, inc, verdict)
            verdict = Verdict(False, f"{verdict.reason} (judged against its parent #{against.id}; the best has "
                                     f"since moved to #{inc.id})", verdict.evidence)
        elif verdict.keep and against is not None and self.cfg.engine.reference and \
                st.hardware != self.cfg.engine.reference:
            st.screen = {"hardware": st.hardware, "metric": exp.metric, "verdict": verdict.reason}
            self.jobs.appendleft(self.job(st, exp.commit, exp.seed, "confirm", hardware=self.cfg.engine.reference))
            return
        self.conclude(st, verdict, inc)

    def on_class(self, st: Pending, row: Experiment) -> Optional[Experiment]:
        """`row` with its metric as measured on st's hardware class; None after asking for that run."""
        values = self.class_values.get((row.commit, st.hardware))
        if values:
            return dataclasses.replace(row, metric=statistics.fmean(values))
        why = f"#{st.exp.id} ran on {st.hardware}, where #{row.id} ({row.commit[:7]}) has no result: measuring it there"
        self.ledger.event(self.tag, "reference", why, st.exp.id)
        self.jobs.appendleft(self.job(st, row.commit, row.seed, "reference", hardware=st.hardware))
        return None

    def kept(self, commit: str) -> Optional[Experiment]:
        rows = reversed(self.ledger.experiments(self.tag))
        return next((e for e in rows if e.status == Status.KEEP and e.commit == commit), None)

    def rebase(self, st: Pending, parent: Experiment, inc: Experiment, verdict: Verdict) -> None:
        exp, depth, e = st.exp, 0, st.exp
        while e is not None and e.evidence.get("rebase_of"):
            depth, e = depth + 1, self.ledger.get(e.evidence["rebase_of"])
        won = f"beat its parent #{parent.id} ({verdict.reason}), but the best moved to #{inc.id} while it ran"
        if depth >= MAX_REBASES:
            return self.conclude(st, Verdict(False, f"{won}; already rebased {depth} times: discarded"), inc)
        message = (f"{exp.description}\n\nautoresearch: #{exp.id} rebased from {exp.parent[:7]} onto #{inc.id} "
                   f"on {self.tag}")
        try:
            new = self.ws.rebase(exp.commit, inc.commit, message)
        except RebaseConflict as c:
            return self.conclude(st, Verdict(False, f"{won}; its change conflicts with the best in "
                                                    f"{', '.join(c.files)}: discarded", verdict.evidence), inc)
        except NothingChanged:
            return self.conclude(st, Verdict(False, f"{won}; the best already has its change", verdict.evidence), inc)
        row = dataclasses.replace(exp, id=None, parent=inc.commit, commit=new, kind=Kind.REBASE, status=Status.RUNNING,
                                  reason="", started_at=0.0, ended_at=None, metric=None, metrics={}, wall_s=None,
                                  exit_code=None, log_path="", log_tail="", worker="", pid=None, tokens_in=0,
                                  tokens_out=0, cost_usd=0.0, evidence={"rebase_of": exp.id, **{  # a swarm claim's
                                      k: v for k, v in (exp.evidence or {}).items() if k in ("origin", "swarm")}})
        row.patch = self.ws.diff(inc.commit, new)
        self.ledger.begin(row)
        self.ws.pin(row.id, new)
        self.ledger.event(self.tag, "rebase", f"#{exp.id} {won}: its change re-applied on #{inc.id} as #{row.id} "
                                              f"({new[:7]}), to be re-validated", exp.id)
        self.conclude(st, Verdict(False, f"{won}: rebased onto it as #{row.id} for re-validation",
                                  dict(verdict.evidence, rebased_as=row.id)), inc)
        self.ready.appendleft(row)

    def conclude(self, st: Pending, verdict: Verdict, inc: Optional[Experiment]) -> None:
        exp, s = st.exp, self.session
        origin = {k: v for k, v in (exp.evidence or {}).items()
                  if k in ("rebase_of", "resumed_from", "same_code_as", "origin", "swarm")}
        exp.status, exp.reason, exp.evidence = Status.KEEP if verdict.keep else Status.DISCARD, verdict.reason, \
            {**origin, **(verdict.evidence or {})}
        guards.enforce(self.cfg, self.ws, exp, inc, should_stop=lambda: s.stop_requested is not None,
                       worktree="checks", sandbox=s.sandbox(),  # only would-be keeps pay
                       on_checks=lambda n: s.report("checks", exp=exp, attempt=n))
        self.finish(st)

    def finish(self, st: Pending, status: str = "", reason: str = "") -> None:
        exp = st.exp
        if status:
            exp.status, exp.reason = status, reason
        self.put_back_before(exp)
        extra: dict[str, Any] = {"measurements": st.runs}
        if st.runs:
            primary = next((r for r in st.runs if r["purpose"] == "primary"), None)
            if primary is not None:
                extra["log_bytes"] = primary.get("log_bytes")
                if primary.get("artifact_sha256"):
                    extra["artifact_sha256"] = primary["artifact_sha256"]
        if st.screen:
            extra["screen"] = st.screen
        if st.lost:
            extra["lost"] = st.lost
        exp.evidence = {**(exp.evidence or {}), **extra}
        self.pending.pop(exp.id, None)
        self.ledger.finish(exp)
        if exp.status == Status.KEEP and exp.kind != Kind.BASELINE:
            self.ws.advance(exp.commit, exp.parent)
        self.recorded.append(exp)  # its after_record: once the free slots have their next jobs (driver.py)
        if exp.kind == Kind.BASELINE and exp.status not in (Status.KEEP, Status.INTERRUPTED):
            raise AutoresearchError(
                f"the baseline (unchanged {exp.commit[:7]}) ended `{exp.status}`: {exp.reason}. See {exp.log_path}; "
                f"fix the project so `{self.cfg.experiment.run}` prints `{self.cfg.metric.name}: <value>`, "
                "then run again")
        if exp.status == Status.CRASH and exp.commit and not self.draining and self.repairs_of(exp) < \
                self.cfg.agent.repair_attempts and self.team:
            self.repairs.append(exp)

    def put_back_before(self, exp: Experiment) -> None:
        """Before recording `exp` and moving the branch: undo what anything but the harness did to its state
        (RunSession.put_back). A researcher proposing meanwhile is charged with it; otherwise, when runs are
        not confined (or only this experiment ran), `exp`'s run could have done it and it becomes a
        `violation`; with the sandbox on and others running, it is recorded as an event. Decisions never read
        such rows: the ledger answers this session from its own record."""
        found = self.session.put_back()
        if not found:
            return
        what = "; ".join(found)
        self.ledger.event(self.tag, "tamper", f"found before recording #{exp.id}: {what}", exp.id)
        self.session.report("note", message=f"the harness's state was changed: {what}")
        if (self.session.sandbox().off or self.single) and exp.status != Status.INTERRUPTED:
            how = "ran unconfined" if self.session.sandbox().off else "was judged alone"
            exp.status, exp.reason = Status.VIOLATION, (f"the harness's state was changed while it {how} "
                                                   f"(was {exp.status}: {exp.reason}): {what}")

    def repairs_of(self, exp: Experiment) -> int:
        n, e = 0, exp
        while e is not None and e.repair_of:
            n, e = n + 1, self.ledger.get(e.repair_of)
        return n

    def load_classes(self) -> None:
        for e in self.ledger.experiments(self.tag):
            runs = e.evidence.get("measurements") if isinstance(e.evidence, dict) else None
            if isinstance(runs, list) and runs:
                for r in runs:
                    if r.get("status") == OK and r.get("metric") is not None:
                        self.class_values.setdefault((r["commit"], r.get("hardware", "")), []).append(r["metric"])
            elif e.metric is not None and e.commit and e.status in (Status.KEEP, Status.DISCARD):  # a row without runs
                self.class_values.setdefault((e.commit, e.hardware), []).append(e.metric)
