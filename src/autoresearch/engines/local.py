"""`local`: N slots on this machine — one per GPU (CUDA_VISIBLE_DEVICES), or N CPU slots.

Guarantees:
- Slot i runs in its own worktree `slot<i>` of the head's repository and evaluates in
  `slot<i>-eval` (both made one at a time at start, so `git worktree add` never races;
  a single slot uses `run0` and the project's own config, as the sequential run always has),
  with CUDA_VISIBLE_DEVICES set to `engine.gpus[i % len(gpus)]` when GPUs are listed; each
  worktree has its own index, so slots never contend for a lock.
- A slot's hardware class is `engine.hardware`, else its GPU's model, else the CPU class.
- Jobs run in threads of the head that only wait on the experiment's process tree (the
  judge does the work), so a slot cannot die without the head: a killed *experiment*
  process is the experiment's crash, recorded as such. Head restarts are covered by the
  driver's resume.
- `cancel()` asks the judge to stop (SIGTERM, grace, SIGKILL of the tree): the result
  then says `interrupted`.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from ..layout import Layout
from .base import Job, Result, RunInfo, Slot, hardware_class
from .runner import execute, slot_config


class LocalEngine:
    name = "local"

    def __init__(self, cfg):
        self.cfg = cfg
        self.stops: dict[str, threading.Event] = {}
        self.pool: ThreadPoolExecutor | None = None
        self.listener = None  # listener(job, kind, **data): a running primary run's ticks, for display

    def start(self, run: RunInfo, ws, sandbox) -> list[Slot]:
        self.run, self.ws, self.sandbox = run, ws, sandbox
        self.logs = Layout(self.cfg.root).logs(run.tag)
        gpus = self.cfg.engine.gpus
        slots = []
        for i in range(self.cfg.engine.workers):
            gpu = str(gpus[i % len(gpus)]) if gpus else ""
            slots.append(Slot(i, f"slot{i}" + (f":gpu{gpu}" if gpu else ""), hardware_class(self.cfg, gpu), gpu))
            wt = ws.worktree(self.tree(i), at=run.start_commit)
            ws.evaluation_worktree(wt, run.start_commit)  # made now too: the judge only resets it
        self.pool = ThreadPoolExecutor(len(slots), thread_name_prefix="autoresearch-slot")
        home = Layout(self.cfg.root).slots(run.tag)
        self.cfgs = {s.index: slot_config(self.cfg, self.cfg.root, home / f"slot{s.index}", run.secret)
                     if len(slots) > 1 else self.cfg for s in slots}  # one slot: nobody else watches the secret
        return slots

    def tree(self, index: int) -> str:
        return "run0" if self.cfg.engine.workers == 1 else f"slot{index}"

    def submit(self, job: Job, slot: Slot) -> "Future[Result]":
        stop = threading.Event()
        self.stops[job.key] = stop
        fut = self.pool.submit(self._run, job, slot, stop)
        fut.add_done_callback(lambda f: self.stops.pop(job.key, None))
        return fut

    def _run(self, job: Job, slot: Slot, stop: threading.Event) -> Result:
        wt = self.ws.worktree(self.tree(slot.index), at=job.commit)
        tell = self.listener if job.purpose == "primary" and self.listener is not None else None
        return execute(self.run, job, self.ws, wt, cfg=self.cfgs[slot.index], log_path=self.logs / job.log_name,
                       sandbox=self.sandbox,
                       worker=slot.label, hardware=slot.hardware, setup_dir=Path(self.logs),
                       should_stop=stop.is_set, env_extra=self.slot_env(slot),
                       on_tick=(lambda t: tell(job, "tick", elapsed=t)) if tell else None,
                       on_evaluate=(lambda: tell(job, "evaluating")) if tell else None)

    def slot_env(self, slot: Slot) -> dict[str, str]:
        """What a slot adds to its experiments' environment."""
        return {"CUDA_VISIBLE_DEVICES": slot.gpu} if slot.gpu else {}

    def cancel(self, key: str) -> None:
        stop = self.stops.get(key)
        if stop is not None:
            stop.set()

    def stop(self) -> None:
        for stop in list(self.stops.values()):
            stop.set()
        if self.pool is not None:
            self.pool.shutdown(wait=True)
