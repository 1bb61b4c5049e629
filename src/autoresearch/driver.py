"""The driver: the ratchet, run by a team of researchers feeding N workers.

    baseline   the unchanged starting point is measured first; it becomes the best
    while not stopped:
        propose  an idle researcher is asked for a change whenever free slots + proposals_ahead
                 exceed the proposals waiting and being made (at most `parallel` at once);
                 repairs of crashed changes go first (researcher.py: check and commit)
        run      a waiting proposal starts on the next free slot (reruns, reference runs and
                 re-validations go first); an engine runs it (engines/): judge.judge() wherever
        decide   the policy compares it with the best in its hardware class, asking for more
                 runs until it decides (winners.py); the guards (bounds, checks) see would-be keeps
        record   the row reaches its terminal state; the guard puts back what anything else changed
        keep     the branch advances by compare-and-swap; a winner whose parent is no longer the
                 best is re-based and re-validated (winners.py)

The sequential run is this same path with one researcher, one local worker and no proposals
ahead (the original's algorithm: propose, run, decide, propose); tool mode (`experiment`) and
`confirm` open the same RunSession and run their rows through the same engine and decisions.

Guarantees: every row reaches one terminal state — on a stop (signal) whatever is in flight is
cancelled and recorded `interrupted`, as is what waited; on any other stop reason (limits,
target, failures, cost caps, every researcher done) no new proposal is made and what is in
flight finishes. Finished rows and pins never change (a rebase or a resume is a new row with
its own pin). Only the driver's thread records rows' decisions and moves the branch; researchers
commit and begin rows from their own threads. A researcher that crashes or hangs past
`agent.timeout_s` (its own entry's) records `crash` and the others go on; the same change
proposed twice while the first is in flight runs once. A head killed at any moment resumes:
experiments interrupted in the previous session are re-queued as new rows (`resumed_from`),
at most twice along a chain.

Not covered: `experiment.checks` run on the head and hold up decisions while they run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import queue
import statistics
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from . import engines, integrity, swarm
from . import policy as policies
from . import agents
from .agents.base import Agent
from .agents.team import Member, members
from .config import Config
from .engines.base import Job, Result, RunInfo, Slot, WorkerLost
from .errors import ConfigError
from .judge import Measurement
from .layout import Layout
from .ledger import FAILED, Experiment, Ledger
from .researcher import Researcher
from .states import OK, Kind, Status
from .session import Reporter, RunSession, marker_prefix
from .winners import Decisions, Pending

WATCHDOG_SLACK_S = 120.0  # a job silent this long past its hard timeout counts as lost
AGENT_SLACK_S = 10.0  # a researcher silent this long past its agent.timeout_s (and grace) is given up on
AUTO_MARGIN = 1.5  # parallel = "auto": ask for proposals 1.5 x their latency before a slot frees
LATENCY_WINDOW = 12  # the latest proposals whose latency sets `auto`


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


Team = Union[Agent, Sequence[Union[Agent, Member, Researcher]]]


class Driver(Decisions):
    """One run: a RunSession, a team of researchers and an engine's slots (see the module docstring)."""

    def __init__(self, cfg: Config, tag: str, team: Team = (), *, limits: Optional[Limits] = None,
                 reporter: Optional[Reporter] = None, ledger: Optional[Ledger] = None, engine=None,
                 session: Optional[RunSession] = None, grow: Optional[Callable[[int], Union[Agent, Member]]] = None):
        """`team`: one agent, several, the config's Members (agents/team.py), or Researchers. `grow(n)`: makes
        researcher n (an agent or a Member) when `parallel` asks for more than the team has (one `[agent]`
        replicated); without it the team is what it is."""
        self.session = session or RunSession(cfg, tag, reporter=reporter, ledger=ledger)
        s = self.session
        self.cfg, self.tag, self.ledger, self.ws = cfg, tag, s.ledger, s.ws
        self.limits = limits or Limits(cfg.stop.max_experiments, cfg.stop.max_hours, cfg.stop.target,
                                       cfg.stop.max_consecutive_failures)
        self.policy = policies.make(cfg)
        self.engine = engine or engines.create(cfg.engine.name, cfg)
        self.grow = grow
        given = [team] if not isinstance(team, (list, tuple)) else list(team)
        self.team: list[Researcher] = [self.researcher(m, i + 1) for i, m in enumerate(given)]
        self.parallel = cfg.agent.parallel
        self.ahead = engines.proposals_ahead(cfg)
        self.single = (self.ahead == 0 and cfg.engine.workers == 1 and cfg.engine.name == "local"
                       and self.parallel in (1, "auto") and len(self.team) <= 1)  # the original algorithm
        self.events: queue.Queue = queue.Queue()
        self.jobs: deque[Job] = deque()  # wanted by experiments in flight; first in line
        self.ready: deque[Experiment] = deque()  # proposals (and re-validations) waiting for a slot
        self.pending: dict[int, Pending] = {}
        self.running: dict[str, tuple[Job, Slot, float]] = {}
        self.free: list[Slot] = []
        self.slots: list[Slot] = []
        self.losses: Counter = Counter()
        self.expired: dict[str, float] = {}
        self.repairs: deque[Experiment] = deque()
        self.recorded: deque[Experiment] = deque()  # final rows whose after_record is still to do
        self.proposing: dict[Researcher, tuple[threading.Thread, float]] = {}
        self.abandoned: set[Researcher] = set()  # hung past agent.timeout_s: their late answer is dropped
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.run_walls: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.class_values: dict[tuple[str, str], list[float]] = {}
        self.draining, self.paused = "", False
        self.seq = itertools.count(1)
        self.logs = Layout(cfg.root).logs(tag)
        self.started_engine = False
        self.flight_ids: list[Optional[int]] = []
        s.swarm = swarm.attach(s)  # .autoresearch/swarm.toml: share a frontier over a git hub (swarm.py)

    @classmethod
    def from_config(cls, cfg: Config, tag: str, **kw: Any) -> "Driver":
        """The team the config declares: `[[agents]]` as it is, or `[agent]` replicated up to `parallel`
        (grown as "auto" asks for more)."""
        if cfg.team:
            return cls(cfg, tag, members(cfg), **kw)
        fixed = cfg.agent.parallel if isinstance(cfg.agent.parallel, int) else 1
        return cls(cfg, tag, members(cfg, parallel=fixed), grow=lambda n: members(cfg, parallel=n)[-1], **kw)

    def researcher(self, m: Union[Agent, Member, Researcher], index: int) -> Researcher:
        if isinstance(m, Researcher):
            return m
        if isinstance(m, Member):
            return Researcher(self.session, agents.create(m.cfg.agent.name, m.cfg, self.ledger), label=m.label,
                              index=index, weight=m.weight, cfg=m.cfg, own_caps=bool(self.cfg.team))
        return Researcher(self.session, m, index=index)

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> Outcome:
        s = self.session
        with s.open():
            return self.run_open()

    def run_open(self) -> Outcome:
        """The run, in a session already open (the caller holds the tag)."""
        s, reason, error = self.session, "", None
        self.start()
        try:
            self.load_classes()
            self._resume()
            if self.ledger.incumbent(self.tag) is None and not s.stop_requested:
                self.ready.appendleft(self.baseline_row())
            reason = self._drive(self.stop_reason)
        except BaseException as e:
            error = e
            raise
        finally:
            self.shutdown(error)
        return Outcome(self.tag, reason, s.count, self.ledger.incumbent(self.tag), s.notes)

    def settle(self, rows: list[Experiment]) -> list[Experiment]:
        """Run these begun rows to their terminal state (no proposals): tool mode's path. The engine must
        have been started (start())."""
        for exp in rows:
            self.ready.append(exp)
        ids = {e.id for e in rows}
        self._drive(lambda: "" if any(i in self.pending or any(r.id == i for r in self.ready) for i in ids)
                    else "done", propose=False)
        return rows  # each finished in place

    def start(self) -> None:
        if self.started_engine:
            return
        s = self.session
        self.slots = self.engine.start(self._run_info(), self.ws, s.sandbox())
        self._check_reference(self.slots)
        self.free = list(self.slots)
        if hasattr(self.engine, "listener"):  # engines that can: running experiments' progress, for display
            self.engine.listener = self._progress
        self.started_engine = True

    def baseline_row(self) -> Experiment:
        tip = self.ws.tip()
        exp = self.session.new_experiment(tip, "baseline", kind=Kind.BASELINE)
        exp.commit = tip
        self.ledger.begin(exp)
        self.ws.pin(exp.id, tip)
        return exp

    def _run_info(self) -> RunInfo:
        s = self.session
        root = str(self.cfg.root.resolve())
        return RunInfo(self.cfg, self.tag, s.id or 0, self.ws.prefix, s.start_commit, s.digests,
                       marker_prefix(self.cfg.root, self.tag), hashlib.sha1(root.encode()).hexdigest()[:12],
                       integrity.secret(self.cfg.root) if self.cfg.metric.command else "")

    def _check_reference(self, slots: list[Slot]) -> None:
        ref, known = self.cfg.engine.reference, {s.hardware for s in slots if s.hardware}
        if ref and known and all(s.hardware for s in slots) and ref not in known:
            raise ConfigError(f"`engine.reference` is {ref!r} but the slots are {', '.join(sorted(known))}: "
                              "name one of them, or leave reference empty")

    def _progress(self, job: Job, kind: str, **data: Any) -> None:
        """An engine's word on a running primary run (tick, evaluating): passed to the reporter."""
        st = self.pending.get(job.exp_id)
        if st is not None and job.purpose == "primary":
            self.session.report(kind, exp=st.exp, log=str(self.logs / job.log_name), **data)

    # -- stopping ----------------------------------------------------------------------------------
    def stop_reason(self) -> str:
        s, lim = self.session, self.limits
        if s.stop_requested:
            return s.stop_requested
        for r in self.team:  # a researcher at its own cap stops alone
            if not r.done and (cap := r.cap_reached()):
                r.done = cap
                s.report("note", message=cap)
        if self.team and all(r.done for r in self.team) and not (
                self.grow is not None and all(r.hung for r in self.team)):  # a hung one is replaced when it can be
            return self.team[0].done if len(self.team) == 1 else "every researcher stopped: " + why_stopped(self.team)
        if lim.max_experiments and s.count + self._live_proposals() >= lim.max_experiments:
            return f"reached --max-experiments {lim.max_experiments}"
        if lim.max_hours and time.monotonic() - s.started >= lim.max_hours * 3600:
            return f"reached --max-hours {lim.max_hours:g}"
        inc = self.ledger.incumbent(self.tag)
        if lim.target is not None and inc is not None and inc.metric is not None and not policies.better(
                lim.target, inc.metric, self.cfg.lower_is_better()):
            return f"reached the target {self.cfg.metric.name} {lim.target:g}"
        if lim.max_consecutive_failures:
            recent = self.ledger.experiments(self.tag)[-lim.max_consecutive_failures:]
            if len(recent) == lim.max_consecutive_failures and all(e.status in FAILED for e in recent):
                return f"{lim.max_consecutive_failures} failures in a row"
        return self.cost_cap_reached()

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

    # -- the loop of the driver's thread ---------------------------------------------------------------
    def _drive(self, stop: Callable[[], str], propose: bool = True) -> str:
        s = self.session
        while True:
            if s.stop_requested:
                return s.stop_requested
            if not self.draining and (reason := stop()):
                self.draining = reason
                if propose:
                    busy = len(self.pending) + len(self.ready)
                    self.ledger.event(self.tag, "drain", f"{reason}: no new proposals; finishing {busy} in flight")
            if propose:  # tool mode's and confirm's own rows are not held by `autoresearch pause`
                self._pause_check()
            self._watchdog()
            self._fill(propose)
            if self.draining and not (self.pending or self.ready or self.running or self._live_proposals()):
                reason, self.draining = self.draining, ""
                return reason
            try:
                kind, *data = self.events.get(timeout=0.2)
            except queue.Empty:
                continue
            if kind == "proposal":
                self._proposed(*data)
            elif kind == "proposal_error":
                raise data[0]
            elif kind == "done":
                self._done(*data)
            self._tell_swarm()

    def _tell_swarm(self) -> None:
        """What is in flight here, for the swarm's hub (published at its next sync; swarm.Swarm.in_flight)."""
        if self.session.swarm is not None:
            flight = [*self.ready, *(p.exp for p in self.pending.values() if not p.final)]
            if [e.id for e in flight] != self.flight_ids:
                self.flight_ids = [e.id for e in flight]
                self.session.swarm.in_flight(flight)
                threading.Thread(target=self._publish, name="autoresearch-swarm-publish", daemon=True).start()

    def _publish(self) -> None:
        """Push what changed to the hub now, off the driver's thread (a remote hub can take seconds)."""
        try:
            with self.session.swarm_lock:
                self.session.swarm.publish()
        except Exception as e:  # noqa: BLE001 - the hub is someone else's machine: noted, the research goes on
            self.ledger.event(self.tag, "swarm", f"publishing what is in flight failed: {type(e).__name__}: {e}")

    def _live_proposals(self) -> int:
        return sum(1 for r in self.proposing if r not in self.abandoned)

    def _fill(self, propose: bool = True) -> None:
        for slot in sorted(self.free, key=lambda x: x.index):
            job = self._next_job(slot)
            if job is not None:
                self._submit(job, slot)
        self._after_records()  # after the slots have their next jobs, before anyone proposes the next change
        if not propose or self.draining or self.paused or self.session.stop_requested or any(
                e.kind == Kind.BASELINE for e in [*self.ready, *(p.exp for p in self.pending.values())]):
            return
        while (self.wanted() - len(self.ready) - self._live_proposals() > 0
               and self._live_proposals() < self.parallel_now() and not self.stop_reason()):
            researcher = self._idle_researcher()
            if researcher is None:
                return
            self._ask(researcher, self.repairs.popleft() if self.repairs else None)

    def wanted(self) -> int:
        """Proposals that should be ready or in the making now: one per free slot plus the proposals kept
        ahead. With `parallel = "auto"` and the proposal latency measured, "ahead" looks at the clock
        instead: one for every slot whose run will end before a proposal asked now arrives (latency x
        AUTO_MARGIN), so workers that finish together (they started together) do not wait."""
        if self.single:
            return len(self.free)
        if self.parallel != "auto" or self.cfg.engine.proposals_ahead is not None or not self.latencies:
            return len(self.free) + self.ahead
        horizon, busy_s, now = statistics.median(self.latencies) * AUTO_MARGIN, self.slot_seconds(), time.monotonic()
        soon = sum(1 for _, _, t0 in self.running.values() if now - t0 >= busy_s - horizon)
        return len(self.free) + max(soon, 1)

    def parallel_now(self) -> int:
        """How many researchers may propose at once: 1 for the original algorithm, `agent.parallel`, or for
        "auto" as many as wanted() asks for: it is sized from the measured proposal latency, the time a
        slot is busy per experiment and the number of workers."""
        if self.single:
            return 1
        if isinstance(self.parallel, int):
            return self.parallel
        return max(1, len(self.slots) + self.ahead)

    def slot_seconds(self) -> float:
        """How long a slot is busy per run: the latest runs' median time on their worker (the evaluation
        included), else the budget. Not submit to result: a worker's cold start (a fresh Ray worker
        importing the harness, seconds) happens once, and counting it would make every later
        proposal late."""
        return max(statistics.median(self.run_walls) if self.run_walls else self.cfg.experiment.budget_s, 1e-3)

    def _idle_researcher(self) -> Optional[Researcher]:
        idle = [r for r in self.team if r not in self.proposing and not r.done and not r.cap_reached()]
        live = [r for r in self.team if not r.hung]
        if not idle and self.grow is not None and len(live) < self.parallel_now() and \
                not any(r.done and not r.hung for r in self.team):
            n = len(self.team) + 1
            r = self.researcher(self.grow(n), n)
            self.team.append(r)
            return r
        if not idle:
            return None
        return min(idle, key=lambda r: (r.proposals / r.weight, r.index))

    def _ask(self, researcher: Researcher, repair_of: Optional[Experiment]) -> None:
        running = [e.description for e in self.ready] + [p.exp.description for p in self.pending.values()]
        others = [r.label for r in self.proposing if r is not researcher and r not in self.abandoned]
        exclusive = self.single  # nothing of the harness reads hidden data while this agent works

        def work() -> None:
            try:
                exp = None
                if repair_of is None and self.session.swarm is not None:
                    with self.session.swarm_lock:  # one caller at a time (the swarm is not thread-safe)
                        exp = self.session.swarm.next_candidate()  # a peer's claim, measured here before kept
                if exp is None:
                    exp = researcher.propose(repair_of, running=running, others=others, exclusive=exclusive)
                self.events.put(("proposal", researcher, exp))
            except BaseException as e:  # a harness bug: the driver raises it
                self.events.put(("proposal_error", e))

        t = threading.Thread(target=work, name=f"autoresearch-{researcher.label}", daemon=True)
        self.proposing[researcher] = (t, time.monotonic())
        t.start()

    def _proposed(self, researcher: Researcher, exp: Optional[Experiment]) -> None:
        t0 = self.proposing.pop(researcher, (None, time.monotonic()))[1]
        if researcher in self.abandoned:  # it answered after its timeout: its row is already a crash
            self.abandoned.discard(researcher)
            if exp is not None and exp.status == Status.RUNNING:
                exp.status, exp.reason = Status.INTERRUPTED, "proposed after its researcher was given up on (timeout)"
                self._record(exp)
            elif exp is not None:
                self.recorded.append(exp)
            return
        self.latencies.append(time.monotonic() - t0)
        if exp is None:
            return
        if exp.status != Status.RUNNING:  # finished as it was proposed (crash, violation, discard)
            self.recorded.append(exp)
            return
        if self.session.stop_requested:
            exp.status, exp.reason = Status.INTERRUPTED, f"{self.session.stop_requested} (before it ran)"
            self._record(exp)
            return
        twin = next((e for e in [*self.ready, *(p.exp for p in self.pending.values())]
                     if e.parent == exp.parent and e.patch == exp.patch), None)
        if twin is None:
            self.ready.append(exp)
        else:
            exp.status, exp.reason = Status.DISCARD, f"the same change as #{twin.id}, which is in flight: not run twice"
            exp.evidence = {**(exp.evidence or {}), "same_change_as": twin.id}
            self._record(exp)

    def _record(self, exp: Experiment) -> None:
        self.ledger.finish(exp)
        self.recorded.append(exp)

    def _after_records(self) -> None:
        """What follows each final row (results.tsv, tracker, swarm, reporter), done after free slots have
        taken their next jobs: a burst of results never holds up the workers."""
        while self.recorded:
            self.session.after_record(self.recorded.popleft())

    # -- jobs -----------------------------------------------------------------------------------
    def _next_job(self, slot: Slot) -> Optional[Job]:
        for i, job in enumerate(self.jobs):
            if not (job.hardware and slot.hardware and job.hardware != slot.hardware):
                del self.jobs[i]
                return job
        if not self.ready or self.paused and self.ready[0].kind != Kind.BASELINE:  # a paused run still measures it
            return None
        exp = self.ready.popleft()
        st = self.pending[exp.id] = Pending(exp)
        parent = exp.parent if exp.kind != Kind.BASELINE else None
        return self.job(st, exp.commit, exp.seed, "primary", parent=parent, log=f"{exp.id:05d}.log")

    def job(self, st: Pending, commit: str, seed: int, purpose: str, parent: Optional[str] = None,
            hardware: str = "", log: str = "") -> Job:
        key = f"{st.exp.id}:{purpose}:{next(self.seq)}"
        st.outstanding.add(key)
        return Job(key, st.exp.id, commit, seed, purpose, parent, hardware,
                   log or f"{st.exp.id:05d}.{commit[:7]}.s{seed}.{purpose}.log")

    def _submit(self, job: Job, slot: Slot) -> None:
        self.free.remove(slot)
        self.running[job.key] = (job, slot, time.monotonic())
        fut = self.engine.submit(job, slot)
        fut.add_done_callback(lambda f, j=job, sl=slot: self.events.put(("done", j, sl, f)))
        if job.purpose == "primary" and job.attempt == 1:
            exp = self.pending[job.exp_id].exp
            exp.worker = slot.label
            self.ledger.update_running(exp.id, worker=slot.label)
            self.session.report("started", exp=exp)

    def measure(self, row: Experiment, commit: str, seed: int) -> Measurement:
        """One more run of `commit` for `row`, now, on the first free slot (confirm's path); recorded."""
        st = self.pending[row.id] = Pending(row, final=True)
        self.jobs.append(self.job(st, commit, seed, "rerun", log=f"{row.id:05d}.{commit[:7]}.s{seed}.log"))
        self._drive(lambda: "" if st.outstanding else "done", propose=False)
        self.pending.pop(row.id, None)
        return st.last if st.last is not None else Measurement(Status.INTERRUPTED, self.session.stop_requested or "stopped")

    # -- results ------------------------------------------------------------------------------
    def _done(self, job: Job, slot: Slot, fut) -> None:
        took = self.running.pop(job.key, None)
        if took is None:
            return  # given up on by the watchdog; its slot was freed then
        self.free.append(slot)
        st = self.pending.get(job.exp_id)
        try:
            res: Result = fut.result()
        except WorkerLost as e:
            return self._lost(st, job, slot, str(e))
        self.run_walls.append(res.ended_at - res.started_at)
        if job.key in self.expired and res.measurement.status == Status.INTERRUPTED:
            return self._lost(st, job, slot, "no answer past its hard timeout (cancelled)")
        if st is not None:
            self._measured(st, job, res)

    def _measured(self, st: Pending, job: Job, res: Result) -> None:
        m, exp = res.measurement, st.exp
        st.outstanding.discard(job.key)
        st.last = m
        log = self.logs / job.log_name
        if res.log_text is not None:  # a remote worker's logs: kept on the head
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(res.log_text, encoding="utf-8")
            if "eval_log" in res.extra:
                m.eval_log = str(log.with_name(log.name[:-4] + ".eval.log"))
                Path(m.eval_log).write_text(res.extra["eval_log"], encoding="utf-8")
        if st.final and (found := self.session.put_back()):  # confirm's runs: nobody else to charge
            m.status, m.reason, m.metric = Status.VIOLATION, f"the run touched the harness's state: {'; '.join(found)}", \
                None
            self.ledger.event(self.tag, "tamper", f"found after a run of #{exp.id}: {'; '.join(found)}", exp.id)
        self.ledger.add_measurement(exp.id, job.commit, job.seed, m.metric, m.metrics, m.wall_s, m.status,
                                   load=m.load)
        st.runs.append({"purpose": job.purpose, "commit": job.commit, "seed": job.seed, "status": m.status,
                        "metric": m.metric, "worker": res.worker, "hardware": res.hardware, "wall_s": m.wall_s,
                        "start": res.started_at, "end": res.ended_at, "attempt": job.attempt,
                        "log_bytes": m.log_bytes,
                        **({"artifact_sha256": m.artifact_sha256} if m.artifact_sha256 else {})})
        if m.status == OK and m.metric is not None:
            self.class_values.setdefault((job.commit, res.hardware), []).append(m.metric)
        if st.final:
            self.pending.pop(exp.id, None)
            return  # confirm's runs: recorded, nothing to decide
        if job.purpose in ("primary", "confirm"):
            if job.purpose == "primary":
                exp.exit_code, exp.wall_s, exp.metrics = m.exit_code, m.wall_s, m.metrics
                exp.peak_mem_mb = m.peak_mem_mb
                exp.log_tail, exp.log_path, exp.worker, exp.hardware = m.log_tail, str(log), res.worker, res.hardware
            exp.metric, exp.reason, st.hardware = m.metric, m.reason, res.hardware
            if m.status != OK:
                where = "" if job.purpose == "primary" else f"the confirmation run on {res.hardware}: "
                return self.finish(st, m.status, where + m.reason)
            if job.purpose == "confirm" and res.hardware != job.hardware:
                return self.finish(st, Status.DISCARD, f"won on {st.screen['hardware']}, but no worker of the reference "
                                                  f"class {job.hardware} could confirm it (ran on {res.hardware})")
        elif m.status == Status.INTERRUPTED:
            return self.finish(st, Status.INTERRUPTED, self.session.stop_requested or m.reason)
        elif job.purpose == "reference" and m.status != OK:
            return self.finish(st, Status.CRASH, f"measuring {job.commit[:7]} on {res.hardware} for comparison failed "
                                            f"({m.status}: {m.reason})")
        if not st.outstanding:
            self.decide(st)

    def _lost(self, st: Optional[Pending], job: Job, slot: Slot, reason: str) -> None:
        self.losses[(job.exp_id, job.commit, job.seed, job.purpose)] += 1
        if st is None or self.session.stop_requested:
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
        m = Measurement(Status.CRASH, f"its worker was lost twice while running it (last: {reason})")
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
        for r, (_, t0) in list(self.proposing.items()):  # a researcher hanging past its agent.timeout_s
            limit_s = r.cfg.agent.timeout_s + self.cfg.experiment.grace_s + AGENT_SLACK_S  # after its own kill
            if r not in self.abandoned and now - t0 > limit_s:
                self.abandoned.add(r)
                self.session.close_window(r)  # what the guard finds from now on is no longer its doing
                r.hung = True
                r.done = f"the agent {r.label} gave no answer in {limit_s:.0f}s (agent.timeout_s {r.cfg.agent.timeout_s:g})"
                exp = self.session.new_experiment(self.ws.expected_tip(), "(no answer)", kind=Kind.CANDIDATE,
                                                  agent=r.name, researcher=r.label)
                exp.agent_latency_s = now - t0
                self.session.finish_unrun(exp, Status.CRASH, f"agent failed: {r.done}; the other researchers go on")
                self.ledger.event(self.tag, "researcher", r.done, exp.id)

    # -- pause, resume -------------------------------------------------------------------------
    def _pause_check(self) -> None:
        """`autoresearch pause`: nothing new starts; once nothing is in flight the pause is in effect."""
        s = self.session
        self.paused = s.control.requested()
        idle = not (self.pending or self.running or self._live_proposals()
                    or any(e.kind == Kind.BASELINE for e in self.ready))
        waited = s.control.watch(idle, stopped=s.stop_requested is not None)
        s.started += waited  # time paused does not count towards --max-hours

    def _resume(self) -> None:
        """Re-queue what the previous session left unfinished (each at most twice along a chain)."""
        rows, sessions = self.ledger.experiments(self.tag), self.ledger.sessions(self.tag)
        if len(sessions) < 2:
            return
        since = sessions[-2]["started_at"] or 0.0
        done = {e.evidence.get("resumed_from") for e in rows}
        by_id = {e.id: e for e in rows}
        for e in rows:
            if (e.status != Status.INTERRUPTED or not e.commit or e.kind not in (Kind.CANDIDATE, Kind.REPAIR, Kind.REBASE)
                    or (e.ended_at or 0) < since or e.id in done
                    or by_id.get(e.evidence.get("resumed_from"), e).evidence.get("resumed_from")):
                continue
            row = dataclasses.replace(e, id=None, status=Status.RUNNING, reason="", started_at=0.0, ended_at=None,
                                      pid=None, worker="", tokens_in=0, tokens_out=0, cost_usd=0.0,
                                      unverified=self.session.unverified(),
                                      evidence={"resumed_from": e.id, **({"rebase_of": e.evidence["rebase_of"]}
                                                                         if e.evidence.get("rebase_of") else {})})
            self.ledger.begin(row)
            self.ws.pin(row.id, row.commit)
            self.ledger.event(self.tag, "resume", f"#{row.id} resumes #{e.id} ({e.reason}): re-queued", row.id)
            self.session.count += 1  # an experiment of this session, within its limits
            self.ready.append(row)

    # -- stop -----------------------------------------------------------------------------------
    def shutdown(self, error: Optional[BaseException]) -> None:
        s = self.session
        why = s.stop_requested or (f"harness error: {type(error).__name__}: {error}" if error else "stopped")
        hurry = isinstance(error, KeyboardInterrupt)  # a second Ctrl-C: do not wait for the agents either
        self.session.control.watch(idle=False, stopped=True)  # a pause in effect ends here
        for key in list(self.running):
            self.engine.cancel(key)
        deadline = time.monotonic() + (2 if hurry else self.cfg.experiment.grace_s + 15)
        while self.running and time.monotonic() < deadline:
            self._pump()
        while not hurry and any(t.is_alive() for r, (t, _) in self.proposing.items() if r not in self.abandoned):
            self._pump()
            self._watchdog()  # the agents finish their calls (their proposals become `interrupted`); one hanging is given up on
        self._pump(0)
        for st in list(self.pending.values()):
            self._safely(self.finish, st, Status.INTERRUPTED, why)
        while self.ready:
            e = self.ready.popleft()
            e.status, e.reason = Status.INTERRUPTED, f"{why} (before it ran)"
            self._safely(self._record, e)
        self._safely(self.engine.stop)
        while self.recorded:
            self._safely(self.session.after_record, self.recorded.popleft())

    def _pump(self, timeout: float = 0.2) -> None:
        """Take in what arrives while stopping: results are recorded, new proposals wait to be interrupted."""
        try:
            kind, *data = self.events.get(timeout=timeout) if timeout else self.events.get_nowait()
        except queue.Empty:
            return
        if kind == "done":
            self._safely(self._done, *data)
        elif kind == "proposal":
            researcher, exp = data
            self.proposing.pop(researcher, None)
            if exp is not None and exp.status == Status.RUNNING:
                self.ready.append(exp)
            elif exp is not None:
                self.recorded.append(exp)

    def _safely(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - stopping must reach every record; the first error is raised
            self.ledger.event(self.tag, "shutdown", f"while stopping: {type(e).__name__}: {e}")


def why_stopped(team: Sequence[Researcher]) -> str:
    """The researchers' reasons, each said once: researchers stopped for the same reason are named together
    ("the agents mutate#1, mutate#2 stopped: ...")."""
    groups: dict[str, list[str]] = {}
    for r in team:
        groups.setdefault(r.done.replace(r.label, "\0"), []).append(r.label)
    said = []
    for text, who in groups.items():
        if len(who) > 1:
            text = text.replace("the agent \0", "the agents \0")
        said.append(text.replace("\0", ", ".join(who)))
    return "; ".join(said)


def local_engine(cfg: Config):
    """One local slot: where tool mode and `confirm` run, whatever engine the project's runs use."""
    one = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, name="local", workers=1))
    return engines.create("local", one)


def run(cfg: Config, tag: str, team: Team, **kw: Any) -> Outcome:
    """Open a session on `tag` and run the team until a stop condition (see Driver)."""
    return Driver(cfg, tag, team, **kw).run()
