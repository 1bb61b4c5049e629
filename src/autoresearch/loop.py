"""The ratchet: propose, check, commit, run, judge, decide, record, keep or reset.

    baseline: measure the unchanged starting point; it becomes the incumbent.
    repeat until a stop condition:
        propose  the agent edits a plain copy of the incumbent, in its sandbox
        check    only editable files changed (no link, no special file, not program.md), and something did
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
agent's cost caps, the agent saying it has nothing left to try (`Proposal.stop`), or
SIGINT/SIGTERM — which finish the running record as `interrupted`, leave git clean and
return normally.
"""

from __future__ import annotations

import itertools
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from . import clean, engines, figures, guards
from . import policy as policies
from . import tracking
from .agents.base import Agent, Proposal
from .agents.context import Context, read_files
from .config import Config
from .control import Control
from .errors import AutoresearchError
from .judge import Measurement, judge
from .ledger import FAILED, Experiment, Ledger, write_tsv
from .proposal import ProposalFolder
from .sandbox import Sandbox
from .session import TagLock, marker_prefix, reconcile
from .stateguard import StateGuard
from .workspace import GitError, NothingChanged, Workspace


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
        self.agent_done = ""  # the agent said it has nothing left to propose (Proposal.stop): a stop reason
        self.started = time.monotonic()
        self.count = 0  # experiments begun by this session (the baseline excluded)
        self.digests: dict[str, str] = {}
        self.start_commit = ""
        self.box: Optional[Sandbox] = None
        self.folder = ProposalFolder(self.ws)  # where the agent works
        self.control = Control(cfg.root, tag, self.ledger, lambda kind, **data: self.report(kind, **data))
        self.tracker = tracking.make(cfg, tag, self.ledger)  # MLflow, when [tracking] asks for it
        self.concurrent = False  # set by the scheduler: other threads then move the branch and add rows
        self.in_flight: Callable[[], list[str]] = list  # descriptions of experiments running (the scheduler's)
        self.guard_lock = threading.RLock()  # one put-back at a time (the proposer's and the scheduler's)
        self.window: Optional[list[str]] = None  # while an agent proposes: what other checks found, charged to it
        from . import swarm

        self.swarm = swarm.attach(self)  # .autoresearch/swarm.toml: share a frontier over a git hub (swarm.py)

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
        self.ws.watch()  # from here on the branch and the pins move only by the harness's hand
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
        if self.agent_done:
            return self.agent_done
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
        if repair_of is None and self.swarm is not None:  # from the proposer thread too (next_candidate's contract)
            adopted = self.swarm.next_candidate()  # a peer's claim, to be measured here before it can be kept
            if adopted is not None:
                return adopted
        parent = self.ws.expected_tip()  # where the harness set the branch, whoever moved it since
        start = repair_of.commit if repair_of else parent
        wt = self.folder.prepare(start)  # a plain folder: no way into the repository (proposal.py)
        ctx = self.context(wt, repair_of)
        self.report("proposing", repair=repair_of is not None)
        t0 = time.monotonic()
        with self.guard_lock:
            state = StateGuard(self.cfg, self.ws, self.ledger, self.tag,  # branch, pins, ledger: not the agent's
                               exclusive=False if self.concurrent else None, agent=True)
            self.window = []
        try:
            proposal = self.agent.propose(ctx, wt)
        except Exception as e:  # an agent backend failing is data, not a harness failure
            proposal = Proposal("", error=f"{type(e).__name__}: {e}")
        except BaseException:  # a second Ctrl-C: no proposal to charge any more
            with self.guard_lock:
                self.window = None
            raise
        if proposal.latency_s is None:
            proposal.latency_s = time.monotonic() - t0
        exp = self.new_experiment(parent, proposal.description or "(no description)",
                                  kind="repair" if repair_of else "candidate", proposal=proposal)
        exp.repair_of = repair_of.id if repair_of else None
        with self.guard_lock:  # put back whatever the agent changed there, and record it
            tampered, self.window = state.check() + self.window, None
        if self.stop_requested:
            if proposal.meta.get("llm_calls") or proposal.cost_usd or proposal.tokens_in:
                # the agent's spending is data even when the change never runs
                return self.finish_unrun(exp, "interrupted", "stopped before it ran", proposal)
            return None
        if tampered:
            return self.finish_unrun(exp, "violation", f"the agent touched the harness's state: {'; '.join(tampered)}",
                                     proposal)
        if proposal.stop and not proposal.error:  # out of ideas: a stop reason, not a failed experiment
            self.ws.reset(wt, parent)
            self.agent_done = f"the agent {exp.agent} stopped: {proposal.stop}"
            self.report("note", message=self.agent_done)
            if proposal.meta.get("llm_calls") or proposal.cost_usd or proposal.tokens_in:
                return self.finish_unrun(exp, "interrupted", self.agent_done, proposal)  # its spending is data
            return None
        if proposal.error:
            why = clean.one_line(proposal.error, clean.REASON_CHARS)
            return self.finish_unrun(exp, "crash", f"agent failed: {why}", proposal)
        change = self.folder.changes()  # walked with lstat, compared with what the folder held
        if problems := change.problems(self.cfg):
            exp.patch = change.patch()  # kept as evidence of what was tried
            shown = clean.one_line("; ".join(problems), clean.REASON_CHARS)  # file names are the agent's text too
            return self.finish_unrun(exp, "violation", f"{shown} (refused before running)", proposal)
        if not change.paths:
            return self.finish_unrun(exp, "discard", "the agent changed nothing", proposal)
        try:  # from the bytes the harness read: no git runs in the folder the agent wrote
            exp.commit = self.ws.commit_files(parent, change.files, self.commit_message(exp), base=start)
        except NothingChanged:
            return self.finish_unrun(exp, "discard", "the change is empty once committed", proposal)
        except GitError as e:  # what the agent made (a path, a file) can make git fail: its failure, not ours
            return self.finish_unrun(exp, "crash", f"git could not commit the change: "
                                                   f"{clean.one_line(e, clean.REASON_CHARS)}", proposal)
        exp.patch = self.ws.diff(parent, exp.commit)
        twin = self.same_code(exp)  # identical code already measured: these runs add to its runs
        self.ledger.begin(exp)
        if twin is not None:
            self.ledger.event(self.tag, "same code", f"#{exp.id} is the same code as #{twin.id} ({twin.status}, tree "
                              f"equal, same parent): measured as {twin.short} again on seed {exp.seed}; the runs of "
                              "both count together", exp.id)
        self.log_calls(exp, proposal)
        self.ws.pin(exp.id, exp.commit)
        self.count += 1
        return exp

    def same_code(self, exp: Experiment) -> Optional[Experiment]:
        """The judged experiment whose commit has exactly `exp`'s tree on the same parent, if any.

        Then `exp` measures that commit again on a seed it has not used, instead of a fresh commit:
        the policy finds the runs of one commit together (measurements are keyed by commit), so
        evidence about identical code accumulates instead of being judged from scratch each time
        the agent proposes it. Keyed on git's tree id: descriptions and whitespace in messages differ.
        """
        tree = self.ws.git("rev-parse", f"{exp.commit}^{{tree}}")
        for e in reversed(self.ledger.experiments(self.tag)):
            if (e.parent == exp.parent and e.commit and e.status in ("keep", "discard")
                    and (e.commit == exp.commit or self.ws.git("rev-parse", f"{e.commit}^{{tree}}") == tree)):
                used = {m["seed"] for m in self.ledger.measurements(commit=e.commit)}
                exp.commit, exp.seed = e.commit, next(s for s in itertools.count(exp.seed) if s not in used)
                exp.evidence = {"same_code_as": e.id}
                return e
        return None

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
            tracked=frozenset(self.folder.manifest), sandbox=self.sandbox(),
            history=self.ledger.experiments(self.tag), incumbent=self.ledger.incumbent(self.tag), repair=repair_of,
            running=self.in_flight(),
            figure=figures.improvement(self.ledger, self.tag, figures.Spec.from_config(self.cfg)),
            swarm=self.swarm.hints() if self.swarm is not None else "",
        )

    def commit_message(self, exp: Experiment) -> str:
        return f"{exp.description}\n\nautoresearch: {exp.kind} on {self.tag} by {exp.agent}"

    def new_experiment(self, parent: str, description: str, kind: str,
                       proposal: Optional[Proposal] = None) -> Experiment:
        p = proposal or Proposal(description)
        # The agent's words are data: one clean line (no NUL, escapes or bidi overrides), capped, for every view.
        return Experiment(
            tag=self.tag, parent=parent, commit=None, description=clean.one_line(description) or "(no description)",
            kind=kind, rationale=clean.paragraphs(p.rationale),
            agent=getattr(self.agent, "name", "?") if kind != "baseline" else "",
            seed=self.cfg.experiment.seed, budget_s=self.cfg.experiment.budget_s, timeout_s=self.cfg.timeout_s,
            tokens_in=p.tokens_in, tokens_out=p.tokens_out, cost_usd=p.cost_usd, agent_latency_s=p.latency_s,
            hardware=hardware(), unverified=self.unverified(),
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
            integrity_evidence = {"log_bytes": m.log_bytes} | ({"artifact_sha256": m.artifact_sha256}
                                                              if m.artifact_sha256 else {})
            if m.status == "ok":
                verdict = self.decide(exp)
                exp.status, exp.reason, exp.evidence = ("keep" if verdict.keep else "discard"), verdict.reason, \
                    {**exp.evidence, **verdict.evidence}  # same_code_as (see same_code) stays with the verdict's
                guards.enforce(self.cfg, self.ws, exp, self.ledger.incumbent(self.tag), sandbox=self.sandbox(),
                               should_stop=lambda: self.stop_requested is not None,  # only would-be keeps pay
                               on_checks=lambda n: self.report("checks", exp=exp, attempt=n))
            else:
                exp.status = m.status
            exp.evidence = dict(exp.evidence or {}, **integrity_evidence)  # the primary run's, kept in the ledger
        except _Interrupted:
            exp.status, exp.reason = "interrupted", "stopped by the user during confirmation runs"
        except BaseException as e:
            exp.status, exp.reason = "interrupted", f"harness error: {type(e).__name__}: {e}"
            raise
        finally:
            if exp.status == "running":
                exp.status = "interrupted"
            if exp.status != "interrupted" and (found := self.put_back()):  # e.g. by its checks, unconfined
                exp.status, exp.reason = "violation", f"the harness's state was changed while it was judged: " \
                                                      f"{'; '.join(found)}"
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
        state = StateGuard(self.cfg, self.ws, self.ledger, self.tag)
        m = judge(self.cfg, self.ws, wt, seed=seed, log_path=log, marker=f"{marker_prefix(self.cfg.root, self.tag)}"
                  f"{exp.id}:{seed}", protected_digests=self.digests, restore_from=self.start_commit,
                  env_extra={"AUTORESEARCH_TAG": self.tag, "AUTORESEARCH_EXPERIMENT": str(exp.id)},
                  should_stop=lambda: self.stop_requested is not None,
                  on_tick=lambda t: self.report("tick", exp=exp, elapsed=t, log=str(log)), sandbox=self.sandbox(),
                  on_evaluate=lambda: self.report("evaluating", exp=exp, log=str(log)),
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

    def put_back(self) -> list[str]:
        """Put back the branch, pins and rows if anything but the harness changed them. What is found while
        an agent proposes is charged to its proposal (and not returned); the rest is returned."""
        with self.guard_lock:
            found = self.ws.put_back() + self.ledger.put_back(self.tag)
            if found and self.window is not None:
                self.window.extend(found)
                return []
            return found

    def unverified(self) -> str:
        """Why a row made now is not vouched for ("" when it is): recorded in the row. Each sandbox not in
        force adds its phrase (the experiment sandbox: Sandbox.unverified, its list of what is off: .off)."""
        return self.sandbox().unverified

    def decide(self, exp: Experiment) -> policies.Verdict:
        """Ask the policy; take the extra measurements it wants until it decides."""
        incumbent = None if exp.kind == "baseline" else self.ledger.incumbent(self.tag)

        def measure(commit: str, seed: int) -> None:
            self.report("rerun", exp=exp, commit=commit, seed=seed)
            if self.measure(exp, commit, seed).status == "interrupted":
                raise _Interrupted()
        return policies.settle(self.policy, exp, incumbent, self.ledger, measure)

    def after_record(self, exp: Experiment) -> None:
        write_tsv(self.tsv, self.ledger.experiments(self.tag), self.cfg.metric.name)
        self.tracker.record(exp)  # never raises: an MLflow failure becomes a ledger event
        if self.swarm is not None:
            self.swarm.recorded(exp)  # reputation of a re-measured claim; publish to the hub (best effort)
        figure = figures.improvement(self.ledger, self.tag, figures.Spec.from_config(self.cfg))
        self.report("finished", exp=exp, incumbent=self.ledger.incumbent(self.tag), figure=figure)

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
