"""The ray engine against a real local Ray instance (small object store, auth off, 3 CPUs).

The quickstart loop runs with 3 workers; a worker process killed mid-experiment re-queues its
experiment once, a second kill records `crash`, and the run completes with nothing lost.
Skipped when Ray is not installed (`pip install 'autoresearch[ray]'`).
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
from conftest import ScriptedAgent, assert_consistent, make_project, rows_of, set_x, wait_until, write_control
from test_scheduler import TRAIN2, load_events

from autoresearch import agents
from autoresearch.config import load
from autoresearch.driver import Driver, Limits
from autoresearch.procs import marked_pids
from autoresearch.scaffold import init_project
from autoresearch.session import marker_prefix

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_instance():
    old = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(num_cpus=3, object_store_memory=100 * 1024**2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = old


def ray_engine(tmp_path: Path, workers: int = 3) -> dict:
    # Each "node" keeps its code in its own cache: nothing is read from the head's repository.
    return {"name": "ray", "workers": workers, "cache": str(tmp_path / "node-cache")}


def test_quickstart_loop_runs_on_three_ray_workers(tmp_path, ray_instance):
    root = tmp_path / "quick"
    init_project(root, "quickstart")
    cfg = load(root, {"experiment": {"budget_s": 0.5}, "engine": ray_engine(tmp_path), "agent": {"name": "mutate"}})
    out = Driver(cfg, "q", agents.create("mutate", cfg), limits=Limits(max_experiments=6)).run()
    assert out.stop_reason == "reached --max-experiments 6"
    rows = rows_of(root, "q")
    ran = [e for e in rows if e.wall_s is not None]
    assert len(rows) >= 7 and len(ran) >= 4
    assert len({e.worker.split("@")[0] for e in ran}) >= 2, [e.worker for e in ran]  # several slots were used
    for e in ran:
        assert "@" in e.worker and "num_steps:" in Path(e.log_path).read_text()  # the node's log came back
        assert "val_loss:" in Path(e.log_path).with_name(f"{e.id:05d}.eval.log").read_text()  # and its evaluation's
    assert rows[0].status == "keep" and rows[0].metric is not None
    assert all(e.status in ("keep", "discard") for e in rows), [(e.id, e.status, e.reason) for e in rows]
    assert (tmp_path / "node-cache" / "projects").exists()
    assert_consistent(root, "q")


def _kill_worker_of(root: Path, exp_id: int, not_pid: int = 0) -> int:
    """SIGKILL the Ray worker process running experiment `exp_id` (the live Ray process whose child
    carries the experiment's marker); returns its pid."""
    prefix = f"{marker_prefix(root, 't')}{exp_id}:"

    def worker():
        for pid in marked_pids(prefix):
            try:
                ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                cmd = Path(f"/proc/{ppid}/cmdline").read_bytes().decode(errors="replace")
            except (OSError, ValueError):
                continue
            if ppid not in (1, not_pid) and cmd.startswith("ray::"):
                return ppid
        return None

    pid = wait_until(worker, timeout=60, what=f"experiment #{exp_id} running on a Ray worker")
    os.kill(pid, signal.SIGKILL)
    return pid


def test_a_worker_killed_mid_experiment_requeues_it_once_then_records_crash(tmp_path, ray_instance):
    control = write_control(tmp_path / "control.json", sleep={"2": 3.0, "3": 3.0}, default=0.2)
    root = make_project(tmp_path / "proj", files={"train.py": TRAIN2}, control=control)
    cfg = load(root, {"engine": ray_engine(tmp_path), "agent": {"repair_attempts": 0}})
    agent = ScriptedAgent([set_x(v) for v in (2.5, 2.0, 1.8, 1.6, 1.4)])
    outcome = {}
    loop = threading.Thread(target=lambda: outcome.setdefault("out", Driver(cfg, "t", agent, limits=Limits(
        max_experiments=5)).run()))
    loop.start()
    try:
        first = _kill_worker_of(root, 2)  # once: re-queued
        _kill_worker_of(root, 3)
        wait_until(lambda: any(ev["kind"] == "requeue" and ev["experiment_id"] == 3 for ev in load_events(root)),
                   timeout=60, what="#3 re-queued")
        _kill_worker_of(root, 3, not_pid=first)  # twice: a crash
    finally:
        loop.join(timeout=180)
    assert not loop.is_alive() and outcome["out"].stop_reason == "reached --max-experiments 5"
    rows = {e.id: e for e in rows_of(root, "t")}
    two, three = rows[2], rows[3]
    assert two.status in ("keep", "discard") and two.metric is not None, two.reason
    assert len(two.evidence["lost"]) == 1 and [r["attempt"] for r in two.evidence["measurements"]] == [2]
    assert three.status == "crash" and "lost twice" in three.reason, three.reason
    assert len(three.evidence["lost"]) == 2
    kinds = [(ev["kind"], ev["experiment_id"]) for ev in load_events(root)]
    assert ("requeue", 2) in kinds and ("requeue", 3) in kinds and ("lost", 3) in kinds
    assert len(rows) == 6 and all(e.status != "running" for e in rows.values())  # nothing lost, none twice
    # What the killed workers started dies at the latest when its own budget ends.
    wait_until(lambda: not marked_pids(marker_prefix(root, "t")), timeout=15, what="leftovers gone")
    assert_consistent(root, "t")
