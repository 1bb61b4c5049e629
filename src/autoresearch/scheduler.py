"""The concurrent driver: many experiments at once, proposals made while they run.

Loop.run() hands over to a Scheduler when engines.concurrent(cfg) (several workers, a
remote engine, or proposals ahead). It is the same ratchet with a queue in front:

    baseline   measured through the engine before anything is proposed
    propose    one thread calls Loop.propose() — one agent call at a time, in the one
               "propose" folder — whenever free slots + engine.proposals_ahead exceed
               the proposals waiting; the agent's Context lists the experiments in flight
    run        a waiting proposal starts on the next free slot, from the best at the time
               it was proposed (reruns, reference runs and re-validations go first)
    decide     keep, discard or rebase-and-re-validate, within one hardware class: see
               winners.py; only this thread moves the branch (compare-and-swap)
    faults     a job whose worker is lost (engine says WorkerLost, or it is silent well
               past its hard timeout) is re-queued once; a second loss records `crash`
    resume     experiments interrupted in the previous session (a killed head, Ctrl-C)
               are re-queued at start as new rows (evidence `resumed_from`), at most
               twice along a chain; nothing is run twice that finished
    pause      `autoresearch pause` stops new experiments from starting; those in flight finish

Guarantees: every row reaches one terminal state — on a stop (signal) whatever is in
flight is cancelled and recorded `interrupted`, as is what waited; on any other stop
reason (limits, target, failures) no new proposal is made and what is in flight
finishes. Finished rows and pins never change (a rebase or a resume is a new row with
its own pin). Rows and the branch are guarded as in the sequential loop: decisions read
the session's own record, and before every record and branch move anything else's
changes are put back and charged (winners.py, "Guarded"). results.tsv and the reporter's
`finished` lines are written between proposals (the state guard watches those files while
an agent works), so they may lag by one agent call.

Not covered: `experiment.checks` run on the head and hold up scheduling while they run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import queue
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import engines, integrity
from .control import paused_since
from .engines.base import Job, Result, RunInfo, Slot, WorkerLost
from .errors import ConfigError
from .judge import Measurement
from .ledger import Experiment
from .loop import Loop, Outcome
from .session import TagLock, marker_prefix
from .winners import Decisions
from .workers import worker_stats  # noqa: F401 - re-exported: the CLI reads workers from here

WATCHDOG_SLACK_S = 120.0  # a job silent this long past its hard timeout counts as lost
_STOP = object()


@dataclass
class _Pending:
    exp: Experiment
    hardware: str = ""  # the class its result is judged in
    outstanding: set = field(default_factory=set)  # keys of its jobs not back yet
    runs: list = field(default_factory=list)  # every measurement taken for it (evidence)
    lost: list = field(default_factory=list)
    screen: Optional[dict] = None  # two-tier: the screening result on another class
    asks: int = 0


class Scheduler(Decisions):
    def __init__(self, loop: Loop, engine=None):
        self.loop, self.cfg, self.tag, self.ledger, self.ws = loop, loop.cfg, loop.tag, loop.ledger, loop.ws
        self.engine = engine or engines.create(self.cfg.engine.name, self.cfg)
        self.ahead = engines.proposals_ahead(self.cfg)
        self.events: queue.Queue = queue.Queue()
        self.requests: queue.Queue = queue.Queue()
        self.jobs: deque[Job] = deque()  # wanted by experiments in flight; first in line
        self.ready: deque[Experiment] = deque()  # proposals (and re-validations) waiting for a slot
        self.pending: dict[int, _Pending] = {}
        self.running: dict[str, tuple[Job, Slot, float]] = {}
        self.free: list[Slot] = []
        self.losses: Counter = Counter()
        self.expired: dict[str, float] = {}
        self.repairs: deque[Experiment] = deque()
        self.deferred: list[Experiment] = []
        self.files = threading.Lock()  # held by the proposer while the agent works (see the docstring)
        self.flight: list[str] = []
        self.class_values: dict[tuple[str, str], list[float]] = {}
        self.proposing, self.draining, self.paused = False, "", 0.0
        self.seq = itertools.count(1)
        self.logs = self.cfg.root / ".autoresearch" / "logs" / self.tag

    # -- the driver ---------------------------------------------------------------------------
    def run(self) -> Outcome:
        loop = self.loop
        loop.concurrent, loop.in_flight = True, lambda: list(self.flight)
        with TagLock(self.cfg.root, self.tag), loop._signals():
            notes = loop.begin_session()
            slots = self.engine.start(self._run_info(), self.ws, loop.sandbox())
            self._check_reference(slots)
            self.free = list(slots)
            self.proposer = threading.Thread(target=self._proposer, name="autoresearch-proposer", daemon=True)
            self.proposer.start()
            reason, error = "", None
            try:
                self._load_classes()
                self._resume()
                if self.ledger.incumbent(self.tag) is None and not loop.stop_requested:
                    self._baseline()
                reason = self._drive()
            except BaseException as e:
                error = e
                raise
            finally:
                self._shutdown(error)
            return Outcome(self.tag, reason, loop.count, self.ledger.incumbent(self.tag), notes)

    def _run_info(self) -> RunInfo:
        root = str(self.cfg.root.resolve())
        return RunInfo(self.cfg, self.tag, self.loop.session, self.ws.prefix, self.loop.start_commit,
                       self.loop.digests, marker_prefix(self.cfg.root, self.tag),
                       hashlib.sha1(root.encode()).hexdigest()[:12],
                       integrity.secret(self.cfg.root) if self.cfg.metric.command else "")

    def _check_reference(self, slots: list[Slot]) -> None:
        ref, known = self.cfg.engine.reference, {s.hardware for s in slots if s.hardware}
        if ref and known and all(s.hardware for s in slots) and ref not in known:
            raise ConfigError(f"`engine.reference` is {ref!r} but the slots are {', '.join(sorted(known))}: "
                              "name one of them, or leave reference empty")

    def _drive(self) -> str:
        while True:
            self._flush()
            if self.loop.stop_requested:
                return self.loop.stop_requested
            if not self.draining and (reason := self.loop.stop_reason()):
                self.draining = reason
                busy = len(self.pending) + len(self.ready)
                self.ledger.event(self.tag, "drain", f"{reason}: no new proposals; finishing {busy} in flight")
            self._pause_check()
            self._watchdog()
            self._fill()
            if self.draining and not (self.pending or self.ready or self.running or self.proposing):
                return self.draining
            try:
                kind, *data = self.events.get(timeout=0.2)
            except queue.Empty:
                continue
            if kind == "proposal":
                self.proposing = False
                if data[0] is not None and data[0].status == "running":
                    self._arrived(data[0])
            elif kind == "proposal_error":
                raise data[0]
            elif kind == "done":
                self._done(*data)

    def _fill(self) -> None:
        for slot in sorted(self.free, key=lambda s: s.index):
            job = self._next_job(slot)
            if job is not None:
                self._submit(job, slot)
        if self.proposing or self.draining or self.paused or self.loop.stop_requested or any(
                e.kind == "baseline" for e in [*self.ready, *(p.exp for p in self.pending.values())]):
            return
        if len(self.free) + self.ahead - len(self.ready) <= 0 or self.loop.stop_reason():
            return
        self.proposing = True
        self.requests.put(self.repairs.popleft() if self.repairs else None)

    def _next_job(self, slot: Slot) -> Optional[Job]:
        for i, job in enumerate(self.jobs):
            if not (job.hardware and slot.hardware and job.hardware != slot.hardware):
                del self.jobs[i]
                return job
        if self.paused or not self.ready:
            return None
        exp = self.ready.popleft()
        st = self.pending[exp.id] = _Pending(exp)
        parent = exp.parent if exp.kind != "baseline" else None
        return self._job(st, exp.commit, exp.seed, "primary", parent=parent, log=f"{exp.id:05d}.log")

    def _job(self, st: _Pending, commit: str, seed: int, purpose: str, parent: Optional[str] = None,
             hardware: str = "", log: str = "") -> Job:
        key = f"{st.exp.id}:{purpose}:{next(self.seq)}"
        st.outstanding.add(key)
        return Job(key, st.exp.id, commit, seed, purpose, parent, hardware,
                   log or f"{st.exp.id:05d}.{commit[:7]}.s{seed}.{purpose}.log")

    def _submit(self, job: Job, slot: Slot) -> None:
        self.free.remove(slot)
        self.running[job.key] = (job, slot, time.monotonic())
        fut = self.engine.submit(job, slot)
        fut.add_done_callback(lambda f, j=job, s=slot: self.events.put(("done", j, s, f)))
        if job.purpose == "primary" and job.attempt == 1:
            exp = self.pending[job.exp_id].exp
            exp.worker = slot.label
            self.ledger.update_running(exp.id, worker=slot.label)
            self.loop.report("started", exp=exp)

    # -- results ------------------------------------------------------------------------------
    def _done(self, job: Job, slot: Slot, fut) -> None:
        if self.running.pop(job.key, None) is None:
            return  # given up on by the watchdog; its slot was freed then
        self.free.append(slot)
        st = self.pending.get(job.exp_id)
        try:
            res: Result = fut.result()
        except WorkerLost as e:
            return self._lost(st, job, slot, str(e))
        if job.key in self.expired and res.measurement.status == "interrupted":
            return self._lost(st, job, slot, "no answer past its hard timeout (cancelled)")
        if st is not None:
            self._measured(st, job, res)

    def _measured(self, st: _Pending, job: Job, res: Result) -> None:
        m, exp = res.measurement, st.exp
        st.outstanding.discard(job.key)
        log = self.logs / job.log_name
        if res.log_text is not None:  # a remote worker's logs: kept on the head
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(res.log_text, encoding="utf-8")
            if "eval_log" in res.extra:
                m.eval_log = str(log.with_name(log.name[:-4] + ".eval.log"))
                Path(m.eval_log).write_text(res.extra["eval_log"], encoding="utf-8")
        self.ledger.add_measurement(exp.id, job.commit, job.seed, m.metric, m.metrics, m.wall_s, m.status,
                                   load=m.load)
        st.runs.append({"purpose": job.purpose, "commit": job.commit, "seed": job.seed, "status": m.status,
                        "metric": m.metric, "worker": res.worker, "hardware": res.hardware, "wall_s": m.wall_s,
                        "start": res.started_at, "end": res.ended_at, "attempt": job.attempt,
                        "log_bytes": m.log_bytes,
                        **({"artifact_sha256": m.artifact_sha256} if m.artifact_sha256 else {})})
        if m.status == "ok" and m.metric is not None:
            self.class_values.setdefault((job.commit, res.hardware), []).append(m.metric)
        if job.purpose in ("primary", "confirm"):
            if job.purpose == "primary":
                exp.exit_code, exp.wall_s, exp.metrics = m.exit_code, m.wall_s, m.metrics
                exp.peak_mem_mb = m.peak_mem_mb
                exp.log_tail, exp.log_path, exp.worker, exp.hardware = m.log_tail, str(log), res.worker, res.hardware
            exp.metric, exp.reason, st.hardware = m.metric, m.reason, res.hardware
            if m.status != "ok":
                where = "" if job.purpose == "primary" else f"the confirmation run on {res.hardware}: "
                return self._finish(st, m.status, where + m.reason)
            if job.purpose == "confirm" and res.hardware != job.hardware:
                return self._finish(st, "discard", f"won on {st.screen['hardware']}, but no worker of the reference "
                                                   f"class {job.hardware} could confirm it (ran on {res.hardware})")
        elif m.status == "interrupted":
            return self._finish(st, "interrupted", self.loop.stop_requested or m.reason)
        elif job.purpose == "reference" and m.status != "ok":
            return self._finish(st, "crash", f"measuring {job.commit[:7]} on {res.hardware} for comparison failed "
                                             f"({m.status}: {m.reason})")
        if not st.outstanding:
            self._decide(st)

    def _lost(self, st: Optional[_Pending], job: Job, slot: Slot, reason: str) -> None:
        self.losses[(job.exp_id, job.commit, job.seed, job.purpose)] += 1
        if st is None or self.loop.stop_requested:
            if st is not None:
                st.outstanding.discard(job.key)
            return
        st.outstanding.discard(job.key)
        st.lost.append({"worker": slot.label, "purpose": job.purpose, "commit": job.commit, "reason": reason})
        what = (f"#{job.exp_id}: {slot.label} was lost while running its {job.purpose} run of {job.commit[:7]} "
                f"({reason})")
        if self.losses[(job.exp_id, job.commit, job.seed, job.purpose)] < 2:
            self.ledger.event(self.tag, "requeue", f"{what}: re-queued once", job.exp_id)
            again = dataclasses.replace(job, key=f"{job.key}.{job.attempt + 1}", attempt=job.attempt + 1, bundle=None)
            st.outstanding.add(again.key)
            self.jobs.appendleft(again)
            return
        self.ledger.event(self.tag, "lost", f"{what}: lost twice, recorded as a crash", job.exp_id)
        now = time.time()
        m = Measurement("crash", f"its worker was lost twice while running it (last: {reason})")
        self._measured(st, job, Result(m, slot.label, st.hardware or slot.hardware, now, now))

    def _watchdog(self) -> None:
        c = self.cfg
        limit = (c.timeout_s + c.experiment.grace_s + WATCHDOG_SLACK_S + (c.metric.timeout_s if c.metric.command else 0)
                 + (c.experiment.setup_timeout_s if c.experiment.setup else 0))
        now = time.monotonic()
        for key, (job, slot, t0) in list(self.running.items()):
            if key not in self.expired and now - t0 > limit:
                self.expired[key] = now
                self.engine.cancel(key)
            elif key in self.expired and now - self.expired[key] > WATCHDOG_SLACK_S:  # not even the cancel came back
                self.running.pop(key)
                self.free.append(slot)
                self._lost(self.pending.get(job.exp_id), job, slot, "no answer, even to a cancel")

    # -- proposals, records, pause ------------------------------------------------------------
    def _proposer(self) -> None:
        while (req := self.requests.get()) is not _STOP:
            if self.loop.stop_requested:  # a request queued just before a stop: do not wake the agent
                self.events.put(("proposal", None))
                continue
            try:
                with self.files:
                    exp = self.loop.propose(repair_of=req)
                self.events.put(("proposal", exp))
            except BaseException as e:  # a harness bug: the driver raises it
                self.events.put(("proposal_error", e))

    def _arrived(self, exp: Experiment) -> None:
        """A committed proposal: it waits for a slot, unless the very same change is already in flight."""
        twin = next((e for e in [*self.ready, *(p.exp for p in self.pending.values())]
                     if e.parent == exp.parent and e.patch == exp.patch), None)
        if twin is None:
            self.ready.append(exp)
        else:
            exp.status, exp.reason = "discard", f"the same change as #{twin.id}, which is in flight: not run twice"
            self.ledger.finish(exp)
            self.deferred.append(exp)
        self._flight()

    def _flight(self) -> None:
        self.flight = [e.description for e in self.ready] + [p.exp.description for p in self.pending.values()]
        if self.loop.swarm is not None:  # published to the swarm's hub at its next sync (swarm.Swarm.in_flight)
            self.loop.swarm.in_flight([*self.ready, *(p.exp for p in self.pending.values())])

    def _flush(self, block: bool = False) -> None:
        if self.deferred and self.files.acquire(blocking=block):
            try:
                while self.deferred:
                    self.loop.after_record(self.deferred.pop(0))
            finally:
                self.files.release()

    def _pause_check(self) -> None:
        since = paused_since(self.cfg.root, self.tag)
        if since is not None and not self.paused:
            self.paused = time.monotonic()
            self.ledger.event(self.tag, "pause", "paused: no new experiments start; those in flight finish")
            self.loop.report("note", message=f"paused; `autoresearch resume --tag {self.tag}` continues")
        elif since is None and self.paused:
            waited, self.paused = time.monotonic() - self.paused, 0.0
            self.loop.started += waited  # time paused does not count towards --max-hours
            self.ledger.event(self.tag, "resume", f"resumed after {waited:.0f}s paused")

    # -- start and stop -----------------------------------------------------------------------
    def _resume(self) -> None:
        """Re-queue what the previous session left unfinished (each at most twice along a chain)."""
        rows, sessions = self.ledger.experiments(self.tag), self.ledger.sessions(self.tag)
        if len(sessions) < 2:
            return
        since = sessions[-2]["started_at"] or 0.0
        done = {e.evidence.get("resumed_from") for e in rows}
        by_id = {e.id: e for e in rows}
        for e in rows:
            if (e.status != "interrupted" or not e.commit or e.kind not in ("candidate", "repair", "rebase")
                    or (e.ended_at or 0) < since or e.id in done
                    or by_id.get(e.evidence.get("resumed_from"), e).evidence.get("resumed_from")):
                continue
            row = dataclasses.replace(e, id=None, status="running", reason="", started_at=0.0, ended_at=None,
                                      pid=None, worker="", tokens_in=0, tokens_out=0, cost_usd=0.0,
                                      unverified=self.loop.unverified(),
                                      evidence={"resumed_from": e.id, **({"rebase_of": e.evidence["rebase_of"]}
                                                                         if e.evidence.get("rebase_of") else {})})
            self.ledger.begin(row)
            self.ws.pin(row.id, row.commit)
            self.ledger.event(self.tag, "resume", f"#{row.id} resumes #{e.id} ({e.reason}): re-queued", row.id)
            self.ready.append(row)
        self._flight()

    def _baseline(self) -> None:
        tip = self.ws.tip()
        exp = self.loop.new_experiment(tip, "baseline", kind="baseline")
        exp.commit = tip
        self.ledger.begin(exp)
        self.ws.pin(exp.id, tip)
        self.ready.appendleft(exp)

    def _shutdown(self, error: Optional[BaseException]) -> None:
        why = self.loop.stop_requested or (f"harness error: {type(error).__name__}: {error}" if error else "stopped")
        hurry = isinstance(error, KeyboardInterrupt)  # a second Ctrl-C: do not wait for the agent either
        for key in list(self.running):
            self.engine.cancel(key)
        self.requests.put(_STOP)
        deadline = time.monotonic() + (2 if hurry else self.cfg.experiment.grace_s + 15)
        while self.running and time.monotonic() < deadline:
            self._pump()
        while self.proposer.is_alive() and not hurry:  # the agent finishes its call; the proposal is dropped
            self._pump()
        self._pump(0)
        for st in list(self.pending.values()):
            self._safely(self._finish, st, "interrupted", why)
        while self.ready:
            e = self.ready.popleft()
            e.status, e.reason = "interrupted", f"{why} (before it ran)"
            self._safely(self.ledger.finish, e)
            self.deferred.append(e)
        self._safely(self.engine.stop)
        self._flush(block=not self.proposer.is_alive())

    def _pump(self, timeout: float = 0.2) -> None:
        """Take in what arrives while stopping: results are recorded, new proposals wait to be interrupted."""
        try:
            kind, *data = self.events.get(timeout=timeout) if timeout else self.events.get_nowait()
        except queue.Empty:
            return
        if kind == "done":
            self._safely(self._done, *data)
        elif kind == "proposal" and data[0] is not None and data[0].status == "running":
            self.ready.append(data[0])

    def _safely(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - stopping must reach every record; the first error is raised
            self.ledger.event(self.tag, "shutdown", f"while stopping: {type(e).__name__}: {e}")
