"""A session: the one process that owns a tag, and how it takes over after any interruption.

`RunSession` is what `run`, tool mode (`experiment`) and `confirm` open the same way: the
tag's lock, the signal handlers, reconciliation, the starting commit and the digests of its
protected files, the sandbox, the tracker, the reporter, the guard over the harness's own
state, and the record-keeping every row goes through (new_experiment, finish_unrun,
after_record). It runs nothing by itself: driver.py runs experiments in it.

Guarantees:
- At most one process works on a tag at a time: an exclusive `flock` on
  `.autoresearch/locks/<tag>.lock`, released by the kernel however the process dies.
- `reconcile()` makes the world agree with the ledger, which is the truth:
  0. it first checks the ledger's seal chain and refuses (LedgerIntegrityError, naming the rows
     and `autoresearch ledger accept`) when the tag's record was changed outside the harness:
     the steps below would otherwise move the branch to a forged keep;
  1. processes left by a dead session (found by their marker) are killed;
  2. `running` rows become `interrupted` (only the lock holder can do this, so no live
     process owns them);
  3. lock files a killed git command left on the tag's refs are removed; the branch tip is
     moved (compare-and-swap) to the incumbent's commit — a commit with no `keep` row
     (killed between commit and record) is thereby reset;
  4. results.tsv is regenerated.
  Running it twice is the same as running it once.
- While a RunSession is open, the branch, the pins, the tag's rows, results.tsv, the checkout's
  protected files and git's program-naming files change only by the harness's hand: `put_back()`
  (one StateGuard for the session) finds and undoes anything else. What is found while researchers
  propose is charged to every proposal open at that moment (their `windows`), else returned to the
  caller, who decides (a `violation` when runs are unconfined).
- SIGINT/SIGTERM set `stop_requested` (the driver finishes the records in flight as `interrupted`);
  a second Ctrl-C raises KeyboardInterrupt; on any exit the session row is ended.

Not covered: what runs where (engines/), what is proposed (researcher.py), what is kept (driver.py,
winners.py, policy.py).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from . import clean, figures, tracking
from .agents.base import Proposal
from .config import Config
from .control import Control
from .errors import BusyError
from .integrity import Tripwire
from .layout import Layout
from .ledger import Experiment, Ledger, write_tsv
from .procs import kill_marked_prefix
from .sandbox import Sandbox
from .states import Kind
from .stateguard import StateGuard
from .workspace import Workspace

Reporter = Callable[..., None]  # reporter(kind, **data); see live.py


class TagLock:
    def __init__(self, root: Path, tag: str):
        self.path = Layout(root).lock(tag)
        self.tag = tag
        self._fd: Optional[int] = None

    def __enter__(self) -> "TagLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise BusyError(
                f"another autoresearch process (pid {holder}) is working on tag `{self.tag}`: "
                f"wait for it, stop it, or use another --tag"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def marker_prefix(root: Path, tag: str) -> str:
    """Markers are unique per project and tag, so a restart never kills another project's runs."""
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:10]
    return f"ar:{digest}:{tag}:"


def reconcile(ledger: Ledger, ws: Workspace, metric_name: str, tsv_path: Optional[Path]) -> list[str]:
    """Bring processes, ledger and git in line with the ledger; returns what was done."""
    ledger.require_intact(ws.tag)  # `run`, tool mode and `confirm` all start here
    notes = []
    killed = kill_marked_prefix(marker_prefix(ws.root, ws.tag))
    if killed:
        notes.append(f"killed {killed} leftover process(es) of an earlier session")
    for exp in ledger.interrupt_stale(ws.tag):
        notes.append(f"#{exp.id} was still running when its session died: marked interrupted")
    for lock in ws.clear_stale_locks():
        notes.append(f"removed {lock}, left by a git command killed with its session")
    incumbent = ledger.incumbent(ws.tag)
    if incumbent is not None and incumbent.commit:
        tip = ws.tip()
        if tip != incumbent.commit:
            ws.advance(incumbent.commit, tip)
            notes.append(f"branch tip {tip[:7]} had no keep record: moved back to #{incumbent.id} {incumbent.commit[:7]}")
    if tsv_path is not None:
        write_tsv(tsv_path, ledger.experiments(ws.tag), metric_name)
    for n in notes:
        ledger.event(ws.tag, "reconcile", n)
    return notes


def hardware() -> str:
    """This machine's class as rows record it: architecture, cores and the GPUs it was given."""
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f"{platform.machine()}-{os.cpu_count()}cpu" + (f"-cuda{gpus}" if gpus else "")


class RunSession:
    """One process's hold on a tag while it runs experiments (see the module docstring)."""

    def __init__(self, cfg: Config, tag: str, *, reporter: Optional[Reporter] = None,
                 ledger: Optional[Ledger] = None, note: str = ""):
        self.cfg, self.tag, self.note = cfg, tag, note
        self.ws = Workspace(cfg.root, tag)
        self.ledger = ledger or Ledger(Layout(cfg.root).ledger)
        self.report: Reporter = reporter or (lambda kind, **data: None)
        self.tsv = cfg.root / "results.tsv"
        self.stop_requested: Optional[str] = None
        self.started = time.monotonic()
        self.count = 0  # experiments begun by this session (the baseline excluded)
        self.id: Optional[int] = None  # the ledger's session row
        self.notes: list[str] = []
        self.digests: dict[str, str] = {}
        self.start_commit = ""
        self.box: Optional[Sandbox] = None
        self.guard: Optional[StateGuard] = None
        self.guard_lock = threading.RLock()  # one put-back or results.tsv write at a time
        self.windows: dict[Any, list[str]] = {}  # researchers proposing now -> what was found meanwhile
        self.control = Control(cfg.root, tag, self.ledger, lambda kind, **data: self.report(kind, **data))
        self.tracker = tracking.make(cfg, tag, self.ledger)  # MLflow, when [tracking] asks for it
        self.swarm = None  # set by the driver when .autoresearch/swarm.toml asks for it (swarm.py)
        self.swarm_lock = threading.RLock()  # the swarm is asked from researchers' threads: one at a time

    # -- opening and closing -------------------------------------------------------------
    @contextmanager
    def open(self, *, checkout_may_differ: bool = False) -> Iterator["RunSession"]:
        """Take the tag, reconcile, and fix the starting point. `checkout_may_differ`: tool mode, where the
        user's checkout holds the change to try (so it is not required to be clean)."""
        with TagLock(self.cfg.root, self.tag), self.signals():
            if checkout_may_differ:
                self.ws.ignore_outputs()
            else:
                self.ws.prepare()
            self.id = self.ledger.start_session(self.tag, self.cfg.snapshot(), note=self.note)
            self.notes = reconcile(self.ledger, self.ws, self.cfg.metric.name, None)
            self.write_tsv()
            for n in self.notes:
                self.report("note", message=n)
            self.ws.watch()  # from here on the branch and the pins move only by the harness's hand
            self.start_commit = self.ws.tip()
            # The protected files as they are at the starting point are the truth for every run.
            self.digests = self.ws.digests(self.ws.worktree("run0", at=self.start_commit),
                                           self.cfg.experiment.protected)
            self.guard = StateGuard(self.cfg, self.ws, self.ledger, self.tag, exclusive=False)
            yield self

    @contextmanager
    def signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM ask for a stop; the session row is ended however this exits."""
        main = threading.current_thread() is threading.main_thread()

        def handler(signum: int, frame: Any) -> None:
            if self.stop_requested and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop waiting for the agent too
            self.stop_requested = f"stopped by {signal.Signals(signum).name}"
            self.report("note", message=f"{signal.Signals(signum).name}: finishing the current record, then stopping")

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
        try:
            yield
        except BaseException:  # a second Ctrl-C can land between a row's `begin` and its run
            if self.id is not None and self.ledger.interrupt_stale(self.tag, "stopped by the user before its run "
                                                                             "finished"):
                self.write_tsv()
            raise
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            if self.id is not None:
                self.ledger.end_session(self.id)

    # -- what every run shares -------------------------------------------------------------
    def sandbox(self) -> Sandbox:
        """The session's sandbox, made on first use; what it is (or why there is none) is said once."""
        if self.box is None:
            self.box = Sandbox.for_project(self.cfg, self.ws)
            self.ledger.event(self.tag, "sandbox", self.box.notice)
            self.report("note", message=self.box.notice)
        return self.box

    def unverified(self) -> str:
        """Why a row made now is not vouched for ("" when it is): the sandbox's phrase for what is off."""
        return self.sandbox().unverified

    # -- the guard over the harness's own state ----------------------------------------------
    @contextmanager
    def window(self, key: Any) -> Iterator[list[str]]:
        """While a researcher proposes: what the guard finds meanwhile is charged to it (and to any other
        researcher proposing at the same time). The list it yields is filled when the window closes."""
        found: list[str] = []
        with self.guard_lock:
            self.windows[key] = []
        try:
            yield found
        finally:
            self.put_back()
            with self.guard_lock:
                found.extend(self.windows.pop(key, []))

    @contextmanager
    def guard_for_agent(self, armed: bool) -> Iterator[list[str]]:
        """While an agent works alone (nothing of the harness reads hidden data or the evaluation's secret
        meanwhile): a tripwire on them. The list it yields is filled when it closes."""
        hits: list[str] = []
        wire = Tripwire(self.guard.hidden_paths() if armed and self.guard is not None else [])
        wire.__enter__()
        try:
            yield hits
        finally:
            wire.__exit__(None, None, None)
            hits.extend(f"opened hidden data: {p}" for p in wire.hits)

    def close_window(self, key: Any) -> None:
        """A researcher given up on (it hangs): what is found from now on is not charged to it."""
        with self.guard_lock:
            self.windows.pop(key, None)

    def put_back(self) -> list[str]:
        """Put back the branch, pins, rows, results.tsv, the checkout's protected files and git's files if
        anything but the harness changed them. Charged to the open windows when there are any (and then []
        is returned); otherwise returned."""
        with self.guard_lock:
            found = self.guard.check() if self.guard is not None else self.ws.put_back() + self.ledger.put_back(
                self.tag)
            if found and self.windows:
                for charged in self.windows.values():
                    charged.extend(found)
                return []
            return found

    def write_tsv(self) -> None:
        """results.tsv from the ledger; the guard then expects exactly these bytes."""
        with self.guard_lock:
            write_tsv(self.tsv, self.ledger.experiments(self.tag), self.cfg.metric.name)
            if self.guard is not None:
                self.guard.expect_tsv()

    # -- records ---------------------------------------------------------------------------
    def new_experiment(self, parent: str, description: str, kind: str, proposal: Optional[Proposal] = None,
                       agent: str = "", researcher: str = "") -> Experiment:
        p = proposal or Proposal(description)
        # The agent's words are data: one clean line (no NUL, escapes or bidi overrides), capped, for every view.
        exp = Experiment(
            tag=self.tag, parent=parent, commit=None, description=clean.one_line(description) or "(no description)",
            kind=kind, rationale=clean.paragraphs(p.rationale), agent=agent if kind != Kind.BASELINE else "",
            seed=self.cfg.experiment.seed, budget_s=self.cfg.experiment.budget_s, timeout_s=self.cfg.timeout_s,
            tokens_in=p.tokens_in, tokens_out=p.tokens_out, cost_usd=p.cost_usd, agent_latency_s=p.latency_s,
            hardware=hardware(), unverified=self.unverified(),
        )
        exp.researcher = researcher
        return exp

    def commit_message(self, exp: Experiment) -> str:
        return f"{exp.description}\n\nautoresearch: {exp.kind} on {self.tag} by {exp.agent}"

    def log_calls(self, exp: Experiment, proposal: Proposal) -> None:
        """Every LLM call an agent made for this proposal, linked to its experiment row."""
        for call in proposal.meta.get("llm_calls", []):
            self.ledger.log_llm_call(experiment_id=exp.id, tag=self.tag, **call)

    def finish_unrun(self, exp: Experiment, status: str, reason: str, proposal: Optional[Proposal] = None, *,
                     record: bool = True) -> Experiment:
        """A proposal that never ran still becomes a record: begun, then finished at once. `record=False`:
        the caller runs after_record() itself (researchers leave it to the driver's thread)."""
        self.ledger.begin(exp)
        if proposal is not None:
            self.log_calls(exp, proposal)
        self.count += 1
        exp.status, exp.reason = status, reason
        self.ledger.finish(exp)
        if record:
            self.after_record(exp)
        return exp

    def after_record(self, exp: Experiment) -> None:
        """What follows every final row: results.tsv, the tracker, the swarm, the reporter."""
        self.write_tsv()
        self.tracker.record(exp)  # never raises: an MLflow failure becomes a ledger event
        if self.swarm is not None:
            with self.swarm_lock:
                self.swarm.recorded(exp)  # reputation of a re-measured claim; publish to the hub (best effort)
        figure = figures.improvement(self.ledger, self.tag, figures.Spec.from_config(self.cfg))
        self.report("finished", exp=exp, incumbent=self.ledger.incumbent(self.tag), figure=figure)
