"""`ray`: experiments as Ray tasks, on a local Ray instance or a cluster (`engine.address`).

Guarantees:
- One job = one Ray task with `max_retries=0` (retries are the driver's, so a lost
  worker is seen and counted), reserving `engine.num_cpus`, `engine.num_gpus` (default:
  1 when the cluster has GPUs; Ray then sets CUDA_VISIBLE_DEVICES) and `engine.resources`.
- No shared filesystem is assumed: the session's starting commit goes to the object store
  once as a git bundle, each job carries a bundle of its commit on top of it, and a node
  keeps a repository in its cache (`engine.cache`, default ~/.cache/autoresearch) where
  every commit has the same id as on the head; the log comes back with the result.
  `experiment.setup` runs once per node and session (runner.py).
- A node's hardware class is `engine.hardware`, else its GPU's model, else its CPU class;
  a job that must run on a class (a reference or confirmation run) is pinned to a node
  already seen with that class.
- A task whose worker process died, whose node was lost or that was cancelled fails its
  Future with WorkerLost; an AutoresearchError raised on a node (e.g. a failing setup)
  is raised on the head as itself; anything else is a harness bug and raised as is.
- A worker killed mid-experiment can leave the experiment's grandchildren behind (the
  shell dies with it; what it started does not): the next job that leases the same
  worktree on that node kills them by their marker.

Not covered: Ray's own fault tolerance of the head node (if the head dies, the run dies
and a restart resumes it, see driver.py); `ray.init` options beyond those above.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from concurrent.futures import Future
from pathlib import Path

from ..errors import AutoresearchError, ConfigError
from ..layout import Layout
from .base import Job, Result, RunInfo, Slot, WorkerLost, hardware_class
from .runner import NodeRepo, execute, read_log, slot_config

OBJECT_STORE_BYTES = 200 * 1024**2  # a local instance: bundles and results are small
_BOXES: dict = {}  # one Sandbox per (project, session) in each worker process


class RayEngine:
    name = "ray"

    def __init__(self, cfg):
        self.cfg = cfg
        self.refs: dict = {}
        self.nodes: dict[str, str] = {}  # node id -> hardware class, as results report them
        self.owns = False
        self._rr = itertools.count()

    def start(self, run: RunInfo, ws, sandbox) -> list[Slot]:
        try:
            import ray
        except ImportError:
            raise ConfigError("engine.name = \"ray\" needs Ray on this machine and every node: "
                              "pip install 'autoresearch[ray]'") from None
        e = self.cfg.engine
        if not ray.is_initialized():
            try:
                if e.address:
                    ray.init(address=e.address)
                else:  # a local instance sized for this run
                    resources = {k: v * e.workers for k, v in e.resources.items()}
                    ray.init(num_cpus=max(1, math.ceil(e.num_cpus * e.workers)), resources=resources or None,
                             object_store_memory=OBJECT_STORE_BYTES, include_dashboard=False)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise AutoresearchError(f"cannot start or reach Ray (engine.address = {e.address!r}): {err}; start the "
                                        "cluster (`ray start --head`) or fix engine.address") from None
            self.owns = True
        self.run, self.ws = run, ws
        self.run_ref = ray.put(run)
        self.base_ref = ray.put(ws.bundle(run.start_commit))
        has_gpus = ray.cluster_resources().get("GPU", 0) > 0
        self.num_gpus = e.num_gpus if e.num_gpus is not None else (1.0 if has_gpus else 0.0)
        self.task = ray.remote(_run_job)
        return [Slot(i, f"slot{i}") for i in range(e.workers)]

    def submit(self, job: Job, slot: Slot) -> "Future[Result]":
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        e = self.cfg.engine
        if job.commit != self.run.start_commit:
            job.bundle = self.ws.bundle(job.commit, exclude=self.run.start_commit)
        opts = {"num_cpus": e.num_cpus, "num_gpus": self.num_gpus, "max_retries": 0}
        if e.resources:
            opts["resources"] = dict(e.resources)
        nodes = sorted(n for n, hw in self.nodes.items() if hw == job.hardware) if job.hardware else []
        if nodes:
            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(nodes[next(self._rr) % len(nodes)], soft=False)
        # The base bundle is passed inside a list so Ray does not fetch it for every task.
        ref = self.task.options(**opts).remote(self.run_ref, job, slot.label, [self.base_ref], e.cache)
        self.refs[job.key] = ref
        out: Future = Future()

        def done(f: Future) -> None:
            self.refs.pop(job.key, None)
            try:
                res = f.result()
            except BaseException as err:  # noqa: BLE001 - sorted into lost / user error / bug below
                out.set_exception(_classify(err))
                return
            if res.node:
                self.nodes[res.node] = res.hardware
            out.set_result(res)

        ref.future().add_done_callback(done)
        return out

    def cancel(self, key: str) -> None:
        import ray

        ref = self.refs.get(key)
        if ref is not None:
            ray.cancel(ref)  # KeyboardInterrupt in the task: the judge kills the experiment's tree

    def stop(self) -> None:
        import ray

        for key in list(self.refs):
            self.cancel(key)
        if self.owns and ray.is_initialized():
            ray.shutdown()


def _classify(err: BaseException) -> BaseException:
    import ray.exceptions as rx

    if isinstance(err, rx.RayTaskError):
        cause = getattr(err, "cause", None)
        return cause if isinstance(cause, AutoresearchError) else err
    lost = tuple(getattr(rx, n) for n in (
        "WorkerCrashedError", "NodeDiedError", "OwnerDiedError", "ObjectLostError", "TaskCancelledError",
        "TaskUnschedulableError", "LocalRayletDiedError", "ObjectFetchTimedOutError", "RaySystemError",
        "ActorDiedError") if hasattr(rx, n))
    if isinstance(err, lost):
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return WorkerLost(f"{type(err).__name__}: {first[:200]}")
    return err


def _run_job(run: RunInfo, job: Job, slot_label: str, base: list, cache: str) -> Result:
    """The Ray task: runs on a worker of any node (see the module docstring)."""
    import ray

    for var in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):  # nodes never commit; skip looking up an identity
        os.environ.setdefault(var, "autoresearch")
    for var in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        os.environ.setdefault(var, "autoresearch@localhost")
    node = NodeRepo(Path(cache or "~/.cache/autoresearch"), run)
    ws = node.workspace(run, job, lambda: ray.get(base[0]))
    here = dataclasses.replace(run, cfg=dataclasses.replace(run.cfg, root=node.root))  # this node's project folder
    key = (run.project_id, run.session)
    if key not in _BOXES:
        from ..sandbox import Sandbox

        _BOXES[key] = Sandbox.for_project(here.cfg, ws)
    gpus = [str(g) for g in ray.get_gpu_ids()]
    hardware = hardware_class(here.cfg, gpus[0] if gpus else "")
    ip = ray.util.get_node_ip_address()
    worker = f"{slot_label}@{ip}" + (f":gpu{','.join(gpus)}" if gpus else "")
    log = node.logs / job.log_name
    with node.lease(run.marker_prefix + job.marker, retry=job.attempt > 1) as name:
        wt = node.checkout(ws, name, job.commit)
        cfg = slot_config(here.cfg, node.root, Layout(node.root).slots(name), run.secret)
        res = execute(here, job, ws, wt, cfg=cfg, log_path=log, sandbox=_BOXES[key], worker=worker,
                      hardware=hardware, setup_dir=node.home)
    res.log_text = read_log(log)
    if res.measurement.eval_log:  # the evaluation's own log (metric.command) comes back too
        res.extra["eval_log"] = read_log(Path(res.measurement.eval_log))
    res.node = ray.get_runtime_context().get_node_id()
    return res
