"""Concurrent winners: how a result becomes `keep` or `discard` when many experiments run at once.

A mixin of the Scheduler (scheduler.py), which owns the queues; everything here runs on
the scheduler's one thread, so the branch has a single writer.

Rules:
- Within one hardware class. A result is compared with its parent (or the best) as
  measured on the class it ran on: the mean of that commit's measurements there. When
  there are none, that commit is measured on that class first (a `reference` run), so an
  H200 result is never judged against an H100 number. With `engine.reference` set, a
  win on another class is only a screen: the candidate is run again on the reference
  class (a `confirm` run) and judged there.
- Keep. A candidate whose parent is the best is judged by the policy (with the reruns it
  asks for, on the same class); a keep moves the branch from that parent by
  compare-and-swap, after `guards.enforce` (bounds, checks).
- Stale parent. If the best moved while it ran, the candidate is first judged against
  its own parent. Not better: discarded, saying what the best became. Better: its change
  is cherry-picked onto the best (workspace.rebase) as a new row of kind `rebase`
  (evidence `rebase_of`), queued ahead of new proposals and judged like any candidate;
  the original row is discarded with reason "... rebased onto it as #n" (evidence
  `rebased_as`). A conflict is a discard naming the files; a change already in the best
  is a discard; after MAX_REBASES the change is dropped.
- Every verdict keeps the policy's evidence and adds `measurements` (each one with its
  worker, hardware class, times and attempt), `screen` and `lost` where they apply.
- Guarded. Before a row is recorded and the branch moved, the branch, pins and rows are
  compared with what the harness wrote and put back (`_put_back`); the incumbent and the
  rows decisions read come from the session's own record (Ledger), never from a row
  someone else inserted, and proposals start from where the harness set the branch.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import TYPE_CHECKING, Any, Optional

from . import guards
from .errors import AutoresearchError
from .ledger import Experiment
from .policy import Verdict
from .workspace import NothingChanged, RebaseConflict

if TYPE_CHECKING:
    from .scheduler import _Pending

MAX_REBASES = 3  # a change re-based this many times without being kept is discarded
MAX_ASKS = 20  # policy rounds (and reference runs) for one experiment, as in the sequential loop


class Decisions:
    def _decide(self, st: _Pending) -> None:
        exp, inc = st.exp, self.ledger.incumbent(self.tag)
        st.asks += 1
        if st.asks > MAX_ASKS:
            return self._conclude(st, Verdict(False, f"no decision after {MAX_ASKS} rounds of runs: discarded"), inc)
        against = view = None
        if exp.kind != "baseline" and inc is not None:
            against = inc if exp.parent == inc.commit else self._kept(exp.parent)
            if against is None:
                return self._conclude(st, Verdict(False, f"its parent {exp.parent[:7]} is not a kept commit"), inc)
            view = self._on_class(st, against)
            if view is None:
                return  # measuring `against` on this class first
        verdict = self.loop.policy.decide(exp, view, self.ledger)
        if verdict.more_runs:
            for commit, seed in verdict.more_runs:
                self.loop.report("rerun", exp=exp, commit=commit, seed=seed)
                self.jobs.appendleft(self._job(st, commit, seed, "rerun", hardware=st.hardware))
            return
        if against is not None and against is not inc:
            if verdict.keep:
                return self._rebase(st, against, inc, verdict)
            verdict = Verdict(False, f"{verdict.reason} (judged against its parent #{against.id}; the best has "
                                     f"since moved to #{inc.id})", verdict.evidence)
        elif verdict.keep and against is not None and self.cfg.engine.reference and \
                st.hardware != self.cfg.engine.reference:
            st.screen = {"hardware": st.hardware, "metric": exp.metric, "verdict": verdict.reason}
            self.jobs.appendleft(self._job(st, exp.commit, exp.seed, "confirm", hardware=self.cfg.engine.reference))
            return
        self._conclude(st, verdict, inc)

    def _on_class(self, st: _Pending, row: Experiment) -> Optional[Experiment]:
        """`row` with its metric as measured on st's hardware class; None after asking for that run."""
        values = self.class_values.get((row.commit, st.hardware))
        if values:
            return dataclasses.replace(row, metric=statistics.fmean(values))
        why = f"#{st.exp.id} ran on {st.hardware}, where #{row.id} ({row.commit[:7]}) has no result: measuring it there"
        self.ledger.event(self.tag, "reference", why, st.exp.id)
        self.jobs.appendleft(self._job(st, row.commit, row.seed, "reference", hardware=st.hardware))
        return None

    def _kept(self, commit: str) -> Optional[Experiment]:
        rows = reversed(self.ledger.experiments(self.tag))
        return next((e for e in rows if e.status == "keep" and e.commit == commit), None)

    def _rebase(self, st: _Pending, parent: Experiment, inc: Experiment, verdict: Verdict) -> None:
        exp, depth, e = st.exp, 0, st.exp
        while e is not None and e.evidence.get("rebase_of"):
            depth, e = depth + 1, self.ledger.get(e.evidence["rebase_of"])
        won = f"beat its parent #{parent.id} ({verdict.reason}), but the best moved to #{inc.id} while it ran"
        if depth >= MAX_REBASES:
            return self._conclude(st, Verdict(False, f"{won}; already rebased {depth} times: discarded"), inc)
        message = (f"{exp.description}\n\nautoresearch: #{exp.id} rebased from {exp.parent[:7]} onto #{inc.id} "
                   f"on {self.tag}")
        try:
            new = self.ws.rebase(exp.commit, inc.commit, message)
        except RebaseConflict as c:
            return self._conclude(st, Verdict(False, f"{won}; its change conflicts with the best in "
                                                     f"{', '.join(c.files)}: discarded", verdict.evidence), inc)
        except NothingChanged:
            return self._conclude(st, Verdict(False, f"{won}; the best already has its change", verdict.evidence), inc)
        row = dataclasses.replace(exp, id=None, parent=inc.commit, commit=new, kind="rebase", status="running",
                                  reason="", started_at=0.0, ended_at=None, metric=None, metrics={}, wall_s=None,
                                  exit_code=None, log_path="", log_tail="", worker="", pid=None, tokens_in=0,
                                  tokens_out=0, cost_usd=0.0, evidence={"rebase_of": exp.id, **{  # a swarm claim's
                                      k: v for k, v in (exp.evidence or {}).items() if k in ("origin", "swarm")}})
        row.patch = self.ws.diff(inc.commit, new)
        self.ledger.begin(row)
        self.ws.pin(row.id, new)
        self.ledger.event(self.tag, "rebase", f"#{exp.id} {won}: its change re-applied on #{inc.id} as #{row.id} "
                                              f"({new[:7]}), to be re-validated", exp.id)
        self._conclude(st, Verdict(False, f"{won}: rebased onto it as #{row.id} for re-validation",
                                   dict(verdict.evidence, rebased_as=row.id)), inc)
        self.ready.appendleft(row)

    def _conclude(self, st: _Pending, verdict: Verdict, inc: Optional[Experiment]) -> None:
        exp = st.exp
        origin = {k: v for k, v in (exp.evidence or {}).items()
                  if k in ("rebase_of", "resumed_from", "same_code_as", "origin", "swarm")}  # swarm: swarm.py's claim
        exp.status, exp.reason, exp.evidence = "keep" if verdict.keep else "discard", verdict.reason, \
            {**origin, **(verdict.evidence or {})}
        guards.enforce(self.cfg, self.ws, exp, inc, should_stop=lambda: self.loop.stop_requested is not None,
                       worktree="checks")
        self._finish(st)

    def _finish(self, st: _Pending, status: str = "", reason: str = "") -> None:
        exp = st.exp
        if status:
            exp.status, exp.reason = status, reason
        self._put_back(exp)
        extra: dict[str, Any] = {"measurements": st.runs}
        if st.screen:
            extra["screen"] = st.screen
        if st.lost:
            extra["lost"] = st.lost
        exp.evidence = {**(exp.evidence or {}), **extra}
        self.pending.pop(exp.id, None)
        self.ledger.finish(exp)
        if exp.status == "keep" and exp.kind != "baseline":
            self.ws.advance(exp.commit, exp.parent)
        self.deferred.append(exp)
        self._flight()
        if exp.kind == "baseline" and exp.status not in ("keep", "interrupted"):
            raise AutoresearchError(
                f"the baseline (unchanged {exp.commit[:7]}) ended `{exp.status}`: {exp.reason}. See {exp.log_path}; "
                f"fix the project so `{self.cfg.experiment.run}` prints `{self.cfg.metric.name}: <value>`, "
                "then run again")
        if exp.status == "crash" and exp.commit and not self.draining and self._repairs_of(exp) < \
                self.cfg.agent.repair_attempts:
            self.repairs.append(exp)

    def _put_back(self, exp: Experiment) -> None:
        """Before recording `exp` and moving the branch: undo what anything but the harness did to the
        branch, pins and rows (Loop.put_back). An agent proposing meanwhile is charged with it; otherwise, when
        runs are not confined, `exp`'s run could have done it and it becomes a `violation`; with the sandbox on,
        no run could: it is recorded as an event. Decisions never read such rows: the ledger answers this
        session from its own record."""
        found = self.loop.put_back()
        if not found:
            return
        what = "; ".join(found)
        self.ledger.event(self.tag, "tamper", f"found before recording #{exp.id}: {what}", exp.id)
        self.loop.report("note", message=f"the harness's state was changed: {what}")
        if self.loop.sandbox().off and exp.status != "interrupted":
            exp.status, exp.reason = "violation", (f"the harness's state was changed while it ran unconfined "
                                                   f"(was {exp.status}: {exp.reason}): {what}")

    def _repairs_of(self, exp: Experiment) -> int:
        n, e = 0, exp
        while e is not None and e.repair_of:
            n, e = n + 1, self.ledger.get(e.repair_of)
        return n

    def _load_classes(self) -> None:
        for e in self.ledger.experiments(self.tag):
            runs = e.evidence.get("measurements") if isinstance(e.evidence, dict) else None
            if isinstance(runs, list) and runs:
                for r in runs:
                    if r.get("status") == "ok" and r.get("metric") is not None:
                        self.class_values.setdefault((r["commit"], r.get("hardware", "")), []).append(r["metric"])
            elif e.metric is not None and e.commit and e.status in ("keep", "discard"):  # a sequential run's row
                self.class_values.setdefault((e.commit, e.hardware), []).append(e.metric)

