"""Engines: the registry, the local engine's slots, a node's code from bundles, setup once per node,
and the workspace helpers they rely on (rebase, bundle). Real git, real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ScriptedAgent, git, make_project, rows_of, set_constant, set_x

from autoresearch import engines
from autoresearch.config import load
from autoresearch.engines.base import Job, RunInfo
from autoresearch.engines.runner import NodeRepo
from autoresearch.errors import ConfigError
from autoresearch.driver import Driver, Limits
from autoresearch.procs import MARKER_VAR, pid_alive
from autoresearch.workspace import NothingChanged, RebaseConflict, Workspace


def test_engines_are_plugins_and_an_unknown_name_names_the_fix(project):
    from importlib import metadata

    registered = {ep.name for ep in metadata.entry_points(group="autoresearch.engines")}
    assert {"local", "ray"} <= registered  # built-ins register as a plugin would
    cfg = load(project)
    assert type(engines.create("local", cfg)).__name__ == "LocalEngine"
    with pytest.raises(ConfigError, match="did you mean `ray`"):
        engines.create("rayy", cfg)


def test_one_driver_runs_the_original_algorithm_with_one_worker_and_proposes_ahead_otherwise(project):
    from autoresearch.driver import Driver

    def cfg(**engine):
        return load(project, {"engine": engine})

    def single(c) -> bool:
        return Driver(c, "t", ScriptedAgent()).single

    assert single(cfg())  # one local worker: the original, sequential algorithm
    assert engines.proposals_ahead(cfg()) == 0
    assert not single(cfg(workers=2)) and engines.proposals_ahead(cfg(workers=2)) == 1
    assert not single(cfg(proposals_ahead=1))  # one worker, proposing while it runs
    assert not single(cfg(name="ray"))
    assert not single(load(project, {"agent": {"parallel": 2}}))  # two researchers: one proposes while one runs
    with pytest.raises(ConfigError, match="proposals_ahead"):
        cfg(proposals_ahead=-1)


GPU_TRAIN = '''\
import os
X = 3.0
print("gpu: " + os.environ.get("CUDA_VISIBLE_DEVICES", "-1"))
print(f"score: {(X - 1) ** 2:.6f}")
'''


def test_local_slots_get_their_gpu_and_hardware_class(tmp_path):
    root = make_project(tmp_path / "proj", files={"train.py": GPU_TRAIN}, extra_toml=(
        '[engine]\nworkers = 2\ngpus = ["3", "5"]\nhardware = "test-card"\n'))
    Driver(load(root, {"metric": {"record": ["gpu"]}}), "t", ScriptedAgent([set_x(v) for v in (2.9, 2.8, 2.7, 2.6)]),
         limits=Limits(max_experiments=4)).run()
    rows = rows_of(root, "t")
    assert {e.worker for e in rows} == {"slot0:gpu3", "slot1:gpu5"}
    for e in rows:
        assert e.hardware == "test-card"
        assert e.metrics["gpu"] == float(e.worker.rsplit("gpu", 1)[1])  # the experiment saw its slot's GPU


def test_setup_runs_once_per_node_however_many_workers_start_at_once(tmp_path):
    count = tmp_path / "setups.txt"
    root = make_project(tmp_path / "proj", extra_experiment=(
        f'setup = "echo once >> {count}; sleep 0.5"\n'), extra_toml="[engine]\nworkers = 3\n")
    Driver(load(root), "t", ScriptedAgent([set_x(v) for v in (2.9, 2.8, 2.7, 2.6, 2.5)]),
         limits=Limits(max_experiments=5)).run()
    assert len(rows_of(root, "t")) >= 5
    assert count.read_text().splitlines() == ["once"]


def _run_info(root: Path, ws: Workspace, start: str) -> RunInfo:
    cfg = load(root)
    return RunInfo(cfg, "t", 1, ws.prefix, start, ws.digests(root, cfg.experiment.protected), "ar:test:t:", "proj1")


def test_a_node_without_shared_files_gets_the_code_from_bundles(tmp_path):
    root = make_project(tmp_path / "proj")
    ws = Workspace(root, "t")
    ws.prepare()
    start = ws.tip()
    wt = ws.worktree("w", at=start)
    set_constant(wt / "train.py", "X", 2.0)
    child = ws.commit(wt, ["train.py"], "X = 2.0", start)
    run = _run_info(root, ws, start)
    node = NodeRepo(tmp_path / "node-cache", run)  # nothing of the head's repository is reachable from here
    fetched = []

    def base() -> bytes:
        fetched.append("base")
        return ws.bundle(start)

    job = Job("k1", 2, child, 42, bundle=ws.bundle(child, exclude=start))
    nws = node.workspace(run, job, base)
    with node.lease("ar:test:t:2") as name:
        nwt = node.checkout(nws, name, child)
        assert git(nwt, "rev-parse", "HEAD") == child  # the same commit id as on the head
        assert "X = 2.0" in (nwt / "train.py").read_text()
    node.workspace(run, Job("k2", 1, start, 42), base)  # already there: no second base bundle
    assert fetched == ["base"]
    assert len(job.bundle) < len(ws.bundle(child))  # a job ships only what the node lacks


def test_worktree_leases_are_exclusive_and_the_next_lessee_kills_what_a_dead_worker_left(tmp_path):
    root = make_project(tmp_path / "proj")
    ws = Workspace(root, "t")
    ws.prepare()
    node = NodeRepo(tmp_path / "cache", _run_info(root, ws, ws.tip()))
    leftover = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                env=dict(os.environ, **{MARKER_VAR: "ar:test:t:7:abc:1"}), start_new_session=True)
    try:
        with node.lease("ar:test:t:5:abc:1") as first, node.lease("ar:test:t:6:abc:1") as second:
            assert first != second
        (node.home / "leases" / f"{first}.marker").write_text("ar:test:t:7:abc:1")  # its worker died mid-job
        with node.lease("ar:test:t:8:abc:1") as again:
            assert again == first
            deadline = time.monotonic() + 5
            while leftover.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not pid_alive(leftover.pid)
    finally:
        if leftover.poll() is None:
            leftover.kill()
        leftover.wait()


def test_rebase_replays_a_change_on_the_new_best_or_names_the_conflict(tmp_path):
    root = make_project(tmp_path / "proj", files={"train.py": "X = 3.0\n#\n#\n#\nY = 3.0\n" + "print('score: 1')\n"})
    ws = Workspace(root, "t")
    ws.prepare()
    base = ws.tip()

    def child(name, value, parent=base):
        wt = ws.worktree("w", at=parent)
        set_constant(wt / "train.py", name, value)
        return ws.commit(wt, ["train.py"], f"{name} = {value}", parent)

    best, other, clash = child("X", 2.0), child("Y", 2.0), child("X", 1.5)
    new = ws.rebase(other, best, "Y = 2.0 (rebased)")
    assert git(root, "rev-parse", f"{new}^") == best
    text = git(root, "show", f"{new}:train.py")
    assert "X = 2.0" in text and "Y = 2.0" in text
    with pytest.raises(RebaseConflict) as err:
        ws.rebase(clash, best, "X = 1.5 (rebased)")
    assert err.value.files == ["train.py"]
    with pytest.raises(NothingChanged):
        ws.rebase(other, new, "again")
    assert ws.rebase(other, best, "after a conflict, the worktree is clean again")  # no cherry-pick state left
