"""The ratchet: propose, check, commit, run, judge, decide, record, keep or reset.

    baseline: measure the unchanged starting point; it becomes the incumbent.
    repeat until a stop condition:
        propose  the agent edits a clean worktree at the incumbent
        check    only editable files changed, and something did
        commit   one commit per experiment, its message the description
        run      the judge runs it under the budget, as its own process tree
        decide   the policy compares it with the incumbent (measuring more if it must)
        guard    a would-be keep must respect `metric.bounds` and pass `experiment.checks`
        record   the ledger row reaches its terminal status
        keep     the branch advances (compare-and-swap); otherwise it stays at the parent
        repair   after a crash the agent gets the log's tail and a few tries to fix it

Every rule lives here or in the modules this calls, never in a prompt. A trial is a
(parent, commit, seed, budget) and is self-contained, so engines can run many at once:
with several workers (or proposals made while one runs) run() hands over to scheduler.py.
Stop: max experiments, max hours, a target value, too many failures in a row, the
agent's cost caps, or SIGINT/SIGTERM — which finish the running record as
`interrupted`, leave git clean and return normally.
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from . import engines, guards
from . import policy as policies
from . import tracking
from .agents.base import Agent, Proposal
from .agents.context import Context, read_files
from .config import Config
from .control import Control
from .errors import AutoresearchError
from .judge import Measurement, judge
from .ledger import FAILED, Experiment, Ledger, write_tsv
from .sandbox import Sandbox
from .session import TagLock, marker_prefix, reconcile
from .stateguard import StateGuard
from .workspace import STEERING_FILES, Git, NothingChanged, Workspace


@dataclass
class Limits:
    max_experiments: int = 0
    max_hours: float = 0.0
    target: Optional[float] = None
    max_consecutive_failures: int = 0


@dataclass
class Outcome:
    tag: str
    stop_reason: str
    experiments: int
    incumbent: Optional[Experiment]
    notes: list[str] = field(default_factory=list)


Reporter = Callable[..., None]  # reporter(kind, **data); see live.py


class Loop:
    def __init__(self, cfg: Config, tag: str, agent: Agent, *, limits: Optional[Limits] = None,
                 reporter: Optional[Reporter] = None, ledger: Optional[Ledger] = None):
        self.cfg, self.tag, self.agent = cfg, tag, agent
        self.ws = Workspace(cfg.root, tag)
        self.ledger = ledger or Ledger(cfg.root / ".autoresearch" / "ledger.db")
        self.policy = policies.make(cfg)
        self.limits = limits or Limits(cfg.stop.max_experiments, cfg.stop.max_hours, cfg.stop.target,
                                       cfg.stop.max_consecutive_failures)
        self.report: Reporter = reporter or (lambda kind, **data: None)
        self.tsv = cfg.root / "results.tsv"
        self.stop_requested: Optional[str] = None
        self.started = time.monotonic()
        self.count = 0  # experiments begun by this session (the baseline excluded)
        self.digests: dict[str, str] = {}
        self.start_commit = ""
        self.box: Optional[Sandbox] = None
        self.control = Control(cfg.root, tag, self.ledger, lambda kind, **data: self.report(kind, **data))
        self.tracker = tracking.make(cfg, tag, self.ledger)  # MLflow, when [tracking] asks for it
        self.concurrent = False  # set by the scheduler: other threads then move the branch and add rows
        self.in_flight: Callable[[], list[str]] = list  # descriptions of experiments running (the scheduler's)

    # -- the loop ----------------------------------------------------------------------
    def run(self) -> Outcome:
        if engines.concurrent(self.cfg):  # several at once, or proposing while running: scheduler.py
            from .scheduler import Scheduler

            return Scheduler(self).run()
        with TagLock(self.cfg.root, self.tag), self._signals():
            notes = self.begin_session()
            if self.ledger.incumbent(self.tag) is None and not self.stop_requested:
                self.baseline()
            while not (reason := self.stop_reason()):
                if paused_s := self.control.hold(lambda: self.stop_requested):  # `autoresearch pause`
                    self.started += paused_s  # time paused does not count towards --max-hours
                    continue
                exp = self.propose()
                if exp is not None and exp.status == "running":
                    exp = self.trial(exp)
                self.repair(exp)
            return Outcome(self.tag, reason, self.count, self.ledger.incumbent(self.tag), notes)

    def begin_session(self) -> list[str]:
        self.ws.prepare()
        self.session = self.ledger.start_session(self.tag, self.cfg.snapshot())
        notes = reconcile(self.ledger, self.ws, self.cfg.metric.name, self.tsv)
        for n in notes:
            self.report("note", message=n)
        self.start_commit = self.ws.tip()
        # The protected files as they are at the starting point are the truth for every run.
        self.digests = self.ws.digests(self.ws.worktree("run0", at=self.start_commit), self.cfg.experiment.protected)
        return notes

    def baseline(self) -> Experiment:
        tip = self.ws.tip()
        exp = self.new_experiment(tip, "baseline", kind="baseline")
        exp.commit = tip
        self.ledger.begin(exp)
        self.ws.pin(exp.id, tip)
        exp = self.trial(exp)
        if exp.status not in ("keep", "interrupted"):
            raise AutoresearchError(
                f"the baseline (unchanged {tip[:7]}) ended `{exp.status}`: {exp.reason}. See {exp.log_path}; "
                f"fix the project so `{self.cfg.experiment.run}` prints `{self.cfg.metric.name}: <value>`, then run again"
            )
        return exp

    def stop_reason(self) -> str:
        lim = self.limits
        if self.stop_requested:
            return self.stop_requested
        if lim.max_experiments and self.count >= lim.max_experiments:
            return f"reached --max-experiments {lim.max_experiments}"
        if lim.max_hours and time.monotonic() - self.started >= lim.max_hours * 3600:
            return f"reached --max-hours {lim.max_hours:g}"
        inc = self.ledger.incumbent(self.tag)
        if lim.target is not None and inc is not None and inc.metric is not None and not policies.better(
                lim.target, inc.metric, self.cfg.lower_is_better()):
            return f"reached the target {self.cfg.metric.name} {lim.target:g}"
        if lim.max_consecutive_failures:
            recent = self.ledger.experiments(self.tag)[-lim.max_consecutive_failures:]
            if len(recent) == lim.max_consecutive_failures and all(e.status in FAILED for e in recent):
                return f"{lim.max_consecutive_failures} failures in a row"
        return self.cost_cap_reached() or ""

    def cost_cap_reached(self) -> str:
        a = self.cfg.agent
        if not (a.max_usd or a.max_tokens):
            return ""
        rows = self.ledger.experiments(self.tag)
        usd = sum(e.cost_usd for e in rows)
        tokens = sum(e.tokens_in + e.tokens_out for e in rows)
        if a.max_usd and usd >= a.max_usd:
            return f"agent cost ${usd:.2f} reached agent.max_usd ${a.max_usd:.2f}"
        if a.max_tokens and tokens >= a.max_tokens:
            return f"agent tokens {tokens} reached agent.max_tokens {a.max_tokens}"
        return ""

    # -- propose and check --------------------------------------------------------------
    def propose(self, repair_of: Optional[Experiment] = None) -> Optional[Experiment]:
        """Ask the agent for a change; return a committed, `running` experiment or a finished row."""
        parent = self.ws.tip()
        start = repair_of.commit if repair_of else parent
        wt = self.ws.worktree("propose", at=start)
        ctx = self.context(wt, repair_of)
        self.report("proposing", repair=repair_of is not None)
        t0 = time.monotonic()
        state = StateGuard(self.cfg, self.ws, self.ledger.path, self.tag,  # branch, pins, ledger: not the agent's
                           exclusive=False if self.concurrent else None, agent=True)
        try:
            proposal = self.agent.propose(ctx, wt)
        except Exception as e:  # an agent backend failing is data, not a harness failure
            proposal = Proposal("", error=f"{type(e).__name__}: {e}")
        if proposal.latency_s is None:
            proposal.latency_s = time.monotonic() - t0
        exp = self.new_experiment(parent, proposal.description or "(no description)",
                                  kind="repair" if repair_of else "candidate", proposal=proposal)
        exp.repair_of = repair_of.id if repair_of else None
        tampered = state.check()  # put back whatever the agent changed there, and record it
        if self.stop_requested:
            self.ws.reset(wt, parent)
            if proposal.meta.get("llm_calls") or proposal.cost_usd or proposal.tokens_in:
                # the agent's spending is data even when the change never runs
                return self.finish_unrun(exp, "interrupted", "stopped before it ran", proposal)
            return None
        if tampered:
            self.ws.reset(wt, parent)
            return self.finish_unrun(exp, "violation", f"the agent touched the harness's state: {'; '.join(tampered)}",
                                     proposal)
        if proposal.error:
            return self.finish_unrun(exp, "crash", f"agent failed: {proposal.error}", proposal)
        self.ws.uncommit(wt, start)  # commits the agent made itself are checked like any change
        changed = [p for p in self.ws.changed_paths(wt) if p not in STEERING_FILES]
        outside = [p for p in changed if not self.cfg.is_editable(p)]
        if outside:
            exp.patch = Git(wt)("diff", "HEAD", check=False)  # kept as evidence of what was tried
            self.ws.reset(wt, parent)
            return self.finish_unrun(exp, "violation", f"changed files outside `experiment.editable`: "
                                                       f"{', '.join(outside[:5])} (refused before running)", proposal)
        if not changed:
            return self.finish_unrun(exp, "discard", "the agent changed nothing", proposal)
        try:
            exp.commit = self.ws.commit(wt, changed, self.commit_message(exp), parent)
        except NothingChanged:
            return self.finish_unrun(exp, "discard", "the change is empty once committed", proposal)
        exp.patch = self.ws.diff(parent, exp.commit)
        self.ledger.begin(exp)
        self.log_calls(exp, proposal)
        self.ws.pin(exp.id, exp.commit)
        self.count += 1
        return exp

    def log_calls(self, exp: Experiment, proposal: Proposal) -> None:
        """Every LLM call an agent made for this proposal, linked to its experiment row."""
        for call in proposal.meta.get("llm_calls", []):
            self.ledger.log_llm_call(experiment_id=exp.id, tag=self.tag, **call)

    def context(self, wt: Path, repair_of: Optional[Experiment]) -> Context:
        root = self.cfg.root
        self.control.note_steering()  # program.md / ideas.md edited mid-run: noted in the ledger
        read = lambda name: (root / name).read_text(encoding="utf-8") if (root / name).exists() else ""  # noqa: E731
        return Context(
            cfg=self.cfg, tag=self.tag, program=read("program.md"), ideas=read("ideas.md"),
            files=read_files(wt, self.cfg.experiment.editable, self.cfg.experiment.protected),
            readonly=read_files(wt, self.cfg.experiment.protected),
            history=self.ledger.experiments(self.tag), incumbent=self.ledger.incumbent(self.tag), repair=repair_of,
            running=self.in_flight(),
        )

    def commit_message(self, exp: Experiment) -> str:
        return f"{exp.description}\n\nautoresearch: {exp.kind} on {self.tag} by {exp.agent}"

    def new_experiment(self, parent: str, description: str, kind: str,
                       proposal: Optional[Proposal] = None) -> Experiment:
        p = proposal or Proposal(description)
        return Experiment(
            tag=self.tag, parent=parent, commit=None, description=" ".join(description.split())[:500], kind=kind,
            rationale=p.rationale, agent=getattr(self.agent, "name", "?") if kind != "baseline" else "",
            seed=self.cfg.experiment.seed, budget_s=self.cfg.experiment.budget_s, timeout_s=self.cfg.timeout_s,
            tokens_in=p.tokens_in, tokens_out=p.tokens_out, cost_usd=p.cost_usd, agent_latency_s=p.latency_s,
            hardware=hardware(),
        )

    def finish_unrun(self, exp: Experiment, status: str, reason: str,
                     proposal: Optional[Proposal] = None) -> Experiment:
        """A proposal that never ran still becomes a record: begun, then finished at once."""
        self.ledger.begin(exp)
        if proposal is not None:
            self.log_calls(exp, proposal)
        self.count += 1
        exp.status, exp.reason = status, reason
        self.ledger.finish(exp)
        self.after_record(exp)
        return exp

    # -- run, decide, record, keep or reset ----------------------------------------------
    def trial(self, exp: Experiment) -> Experiment:
        """Judge a committed, running experiment and take it to a terminal state."""
        self.report("started", exp=exp)
        try:
            m = self.measure(exp, exp.commit, exp.seed, primary=True)
            exp.exit_code, exp.wall_s, exp.metrics, exp.peak_mem_mb = m.exit_code, m.wall_s, m.metrics, m.peak_mem_mb
            exp.log_tail, exp.metric, exp.reason = m.log_tail, m.metric, m.reason
            if m.status == "ok":
                verdict = self.decide(exp)
                exp.status, exp.reason, exp.evidence = ("keep" if verdict.keep else "discard"), verdict.reason, \
                    verdict.evidence
                guards.enforce(self.cfg, self.ws, exp, self.ledger.incumbent(self.tag), sandbox=self.sandbox(),
                               should_stop=lambda: self.stop_requested is not None)  # only would-be keeps pay
            else:
                exp.status = m.status
        except _Interrupted:
            exp.status, exp.reason = "interrupted", "stopped by the user during confirmation runs"
        except BaseException as e:
            exp.status, exp.reason = "interrupted", f"harness error: {type(e).__name__}: {e}"
            raise
        finally:
            if exp.status == "running":
                exp.status = "interrupted"
            self.ledger.finish(exp)
            if exp.status == "keep" and exp.kind != "baseline":
                self.ws.advance(exp.commit, exp.parent)
            self.after_record(exp)
        return exp

    def measure(self, exp: Experiment, commit: str, seed: int, primary: bool = False) -> Measurement:
        wt = self.ws.worktree("run0", at=commit)
        suffix = "" if primary else f".{commit[:7]}.s{seed}"
        log = self.cfg.root / ".autoresearch" / "logs" / self.tag / f"{exp.id:05d}{suffix}.log"
        log.unlink(missing_ok=True)
        if primary:
            exp.log_path = str(log)
        state = StateGuard(self.cfg, self.ws, self.ledger.path, self.tag)
        m = judge(self.cfg, self.ws, wt, seed=seed, log_path=log, marker=f"{marker_prefix(self.cfg.root, self.tag)}"
                  f"{exp.id}:{seed}", protected_digests=self.digests, restore_from=self.start_commit,
                  env_extra={"AUTORESEARCH_TAG": self.tag, "AUTORESEARCH_EXPERIMENT": str(exp.id)},
                  should_stop=lambda: self.stop_requested is not None,
                  on_tick=lambda t: self.report("tick", exp=exp, elapsed=t), sandbox=self.sandbox(),
                  parent=exp.parent if primary and exp.kind != "baseline" else None)
        if tampered := state.check():  # without bwrap a run could reach the ledger or the branch
            m.status, m.reason, m.metric = "violation", f"the run touched the harness's state: {'; '.join(tampered)}", None
        self.ledger.add_measurement(exp.id, commit, seed, m.metric, m.metrics, m.wall_s, m.status, load=m.load)
        return m

    def sandbox(self) -> Sandbox:
        """The session's sandbox, made on first use; what it is (or why there is none) is said once."""
        if self.box is None:
            self.box = Sandbox.for_project(self.cfg, self.ws)
            self.ledger.event(self.tag, "sandbox", self.box.notice)
            self.report("note", message=self.box.notice)
        return self.box

    def decide(self, exp: Experiment) -> policies.Verdict:
        """Ask the policy; take the extra measurements it wants until it decides."""
        incumbent = None if exp.kind == "baseline" else self.ledger.incumbent(self.tag)
        for _ in range(20):
            verdict = self.policy.decide(exp, incumbent, self.ledger)
            if not verdict.more_runs:
                return verdict
            for commit, seed in verdict.more_runs:
                self.report("rerun", exp=exp, commit=commit, seed=seed)
                m = self.measure(exp, commit, seed)
                if m.status == "interrupted":
                    raise _Interrupted()
        return policies.Verdict(False, "the policy asked for more runs 20 times: discarded", verdict.evidence)

    def after_record(self, exp: Experiment) -> None:
        write_tsv(self.tsv, self.ledger.experiments(self.tag), self.cfg.metric.name)
        self.tracker.record(exp)  # never raises: an MLflow failure becomes a ledger event
        self.report("finished", exp=exp, incumbent=self.ledger.incumbent(self.tag))

    def repair(self, exp: Optional[Experiment]) -> None:
        tries = 0
        while (exp is not None and exp.status == "crash" and exp.commit and tries < self.cfg.agent.repair_attempts
               and not self.stop_reason()):
            tries += 1
            fixed = self.propose(repair_of=exp)
            if fixed is None or fixed.status != "running":
                return
            exp = self.trial(fixed)

    # -- signals ------------------------------------------------------------------------
    @contextmanager
    def _signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if self.stop_requested and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop waiting for the agent too
            self.stop_requested = f"stopped by {signal.Signals(signum).name}"
            self.report("note", message=f"{signal.Signals(signum).name}: finishing the current record, then stopping")

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        except BaseException:  # a second Ctrl-C can land between a row's `begin` and its trial
            if getattr(self, "session", None):
                if self.ledger.interrupt_stale(self.tag, "stopped by the user before its run finished"):
                    write_tsv(self.tsv, self.ledger.experiments(self.tag), self.cfg.metric.name)
            raise
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            if getattr(self, "session", None):
                self.ledger.end_session(self.session)


class _Interrupted(Exception):
    pass


def hardware() -> str:
    import os
    import platform

    gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f"{platform.machine()}-{os.cpu_count()}cpu" + (f"-cuda{gpus}" if gpus else "")
