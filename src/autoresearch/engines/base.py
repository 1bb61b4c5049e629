"""The engine protocol: where experiments run, and the records that cross it.

A *job* is one measurement: (commit, parent, seed, budget, hardware class) plus the
session's RunInfo. It is self-contained, so it can run on a node that shares nothing
with the head but the Python package: engines that need it ship the code as a git
bundle (Job.bundle, on top of a base bundle of the session's starting commit).

An engine promises:
- `start(run, ws, sandbox)` returns its slots (how many jobs may run at once, each with a
  label and, where the engine knows it, a hardware class);
- `submit(job, slot)` never blocks on the experiment and returns a Future of a `Result`;
  the experiment itself is judged by judge.judge() wherever it lands, so every rule of a
  sequential run (budget, timeout, process-tree kill, protected digests, sandbox,
  integrity review) holds on every worker;
- a worker that dies under a job (process killed, node lost, no answer) fails the
  Future with `WorkerLost`; any other exception out of a Future is a harness bug;
- `cancel(key)` makes a job stop soon (its Result then says `interrupted`), and
  `stop()` releases everything the engine started.

Not covered here: which job runs next, retries and decisions (driver.py, winners.py).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Optional, Protocol

from ..config import Config
from ..judge import Measurement


@dataclass
class RunInfo:
    """What every job of a session shares; shipped once to each node."""

    cfg: Config
    tag: str
    session: int  # the ledger's session id: node-level "once per session" work is keyed by it
    prefix: str  # the project's folder inside its repository ("" = the top)
    start_commit: str  # whose protected files are the truth
    digests: dict[str, str]  # sha256 of the protected files at start_commit
    marker_prefix: str  # every process of a job carries marker_prefix + "<exp>:<commit>:<seed>"
    project_id: str  # names the project's folder in a node's cache
    secret: str = ""  # the project's evaluation secret (metric.command): the same validation everywhere


@dataclass
class Job:
    key: str  # unique per submission
    exp_id: int
    commit: str
    seed: int
    purpose: str = "primary"  # primary | rerun | reference | confirm
    parent: Optional[str] = None  # set for a candidate's primary run: its patch is reviewed first
    hardware: str = ""  # the class it must run on ("" = any)
    log_name: str = ""  # file name under .autoresearch/logs/<tag>/
    attempt: int = 1
    bundle: Optional[bytes] = None  # engines without a shared filesystem: commit minus start_commit

    @property
    def marker(self) -> str:
        return f"{self.exp_id}:{self.commit[:10]}:{self.seed}"


@dataclass
class Slot:
    index: int
    label: str  # e.g. "slot0:gpu0"
    hardware: str = ""  # "" = known only once a job lands (Ray)
    gpu: str = ""  # the local engine's CUDA_VISIBLE_DEVICES for this slot


@dataclass
class Result:
    measurement: Measurement
    worker: str  # where it ran: slot label, and node for remote engines
    hardware: str  # the class the result belongs to
    started_at: float  # epoch seconds around the judged run (its budget and evaluation)
    ended_at: float
    log_text: Optional[str] = None  # remote engines: the log, for the head to keep
    node: str = ""  # remote engines: the node's id (to route later jobs to the same class)
    extra: dict = field(default_factory=dict)


class WorkerLost(Exception):
    """The worker running a job is gone (killed, node lost, no answer); the job may be re-queued."""


class Engine(Protocol):
    name: str

    def start(self, run: RunInfo, ws, sandbox) -> list[Slot]: ...

    def submit(self, job: Job, slot: Slot) -> "Future[Result]": ...

    def cancel(self, key: str) -> None: ...

    def stop(self) -> None: ...


def cpu_class() -> str:
    """The class of a machine without a GPU: architecture and core count (as session.hardware())."""
    return f"{platform.machine()}-{os.cpu_count()}cpu"


def hardware_class(cfg: Config, gpu: str = "") -> str:
    """`engine.hardware` if set, else the GPU's model name, else the CPU class."""
    if cfg.engine.hardware:
        return cfg.engine.hardware
    if gpu and shutil.which("nvidia-smi"):
        try:
            r = subprocess.run(["nvidia-smi", "-i", str(gpu), "--query-gpu=name", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=20)
            if r.returncode == 0 and r.stdout.strip():
                return r.stdout.strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired):
            pass
    return cpu_class()
