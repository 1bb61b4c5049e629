"""`autoresearch launch`: the SkyPilot task it writes (validated by SkyPilot's own parser when it is
installed), and `--up` driving a stand-in `sky` and `rsync` on PATH (no cloud here)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli, git, make_project

from autoresearch.ledger import Experiment, Ledger


def launch(root: Path, *args: str, env=None) -> subprocess.CompletedProcess:
    return cli("launch", "--tag", "t1", *args, cwd=root, env=env)


def test_the_task_file_is_what_skypilot_expects(tmp_path):
    sky = pytest.importorskip("sky")
    root = make_project(tmp_path / "proj")
    r = launch(root, "--nodes", "3", "--gpus", "H100:8", "--max-hours", "8", "--secret", "ANTHROPIC_API_KEY",
               "--cloud", "aws", "--spot")
    assert r.returncode == 0, r.stderr
    path = root / ".autoresearch" / "launch" / "t1.sky.yaml"
    task = sky.Task.from_yaml(str(path))
    assert task.num_nodes == 3
    (res,) = task.resources
    assert res.accelerators == {"H100": 8} and res.use_spot and str(res.cloud).lower() == "aws"
    assert task.envs["AUTORESEARCH_TAG"] == "t1" and task.envs["AUTORESEARCH_PROJECT"] == "."
    bundle = Path(task.file_mounts["~/.autoresearch-launch/t1.bundle"])
    assert bundle.exists() and git(root, "bundle", "verify", str(bundle)).strip() is not None
    assert "ray start --head --port 6379" in task.run and "--engine ray --address auto" in task.run
    assert "--max-hours 8" in task.run and "sync_out" in task.run
    assert 'pip install -q "$AUTORESEARCH_INSTALL"' in task.setup


def test_the_scripts_are_valid_shell_and_secrets_are_never_written(tmp_path):
    yaml = pytest.importorskip("yaml")
    root = make_project(tmp_path / "proj")
    env = dict(os.environ, MY_KEY="sk-very-secret")
    assert launch(root, "--secret", "MY_KEY", "--gpus", "", "--workers", "4", env=env).returncode == 0
    path = root / ".autoresearch" / "launch" / "t1.sky.yaml"
    assert "sk-very-secret" not in path.read_text()
    doc = yaml.safe_load(path.read_text())
    assert doc["secrets"] == {"MY_KEY": None} and doc["envs"]["AUTORESEARCH_WORKERS"] == "4"
    assert "accelerators" not in doc["resources"]  # CPU nodes
    for script in (doc["setup"], doc["run"]):
        r = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
        assert r.returncode == 0, r.stderr


def test_a_dirty_checkout_is_refused(tmp_path):
    root = make_project(tmp_path / "proj")
    (root / "train.py").write_text((root / "train.py").read_text() + "\n# uncommitted\n")
    r = launch(root)
    assert r.returncode == 1 and "commit them first" in r.stderr


def _stand_ins(tmp_path: Path, remote: Path) -> Path:
    """`sky` that records its arguments; `rsync` that copies CLUSTER:path from `remote`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sky").write_text(f"#!{sys.executable}\nimport sys\n"
                                 f"open({str(tmp_path / 'sky.calls')!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n")
    (bin_dir / "rsync").write_text(
        f"#!{sys.executable}\nimport shutil, sys\n"
        "src, dest = sys.argv[-2], sys.argv[-1]\n"
        f"path = src.split(':', 1)[1]\nshutil.copytree({str(remote)!r} + '/' + path, dest, dirs_exist_ok=True)\n")
    for f in bin_dir.iterdir():
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def test_up_launches_then_brings_the_ledger_and_the_best_branch_back(tmp_path):
    root = make_project(tmp_path / "proj")
    # What the cluster's head leaves in ~/autoresearch-out/t1/: a branch with one kept change, and its ledger.
    head = tmp_path / "cluster-head"
    git(tmp_path, "clone", "-q", str(root), str(head))
    git(head, "checkout", "-q", "-b", "autoresearch/t1")
    (head / "train.py").write_text((head / "train.py").read_text().replace("X = 3.0", "X = 2.0"))
    git(head, "commit", "-qam", "X = 2.0")
    best = git(head, "rev-parse", "HEAD")
    out = tmp_path / "remote" / "autoresearch-out" / "t1"
    out.mkdir(parents=True)
    git(head, "bundle", "create", str(out / "t1.bundle"), "autoresearch/t1")
    led = Ledger(out / "ledger.db")
    led.begin(Experiment(tag="t1", parent=None, commit=best, description="X = 2.0"))
    led.close()
    (out / "results.tsv").write_text("commit\tscore\tmemory_gb\tstatus\tdescription\n")
    env = dict(os.environ, PATH=f"{_stand_ins(tmp_path, tmp_path / 'remote')}{os.pathsep}{os.environ['PATH']}")
    r = launch(root, "--up", "--down", "--secret", "MY_KEY", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    calls = (tmp_path / "sky.calls").read_text().splitlines()
    task = root / ".autoresearch" / "launch" / "t1.sky.yaml"
    assert calls == [f"launch -y -c autoresearch-t1 {task} --secret MY_KEY", "down -y autoresearch-t1"]
    assert git(root, "rev-parse", "autoresearch/t1") == best  # the best branch is here now
    assert (root / ".autoresearch" / "remote" / "autoresearch-t1" / "results.tsv").exists()
    local = Ledger(root / ".autoresearch" / "ledger.db")
    try:
        assert [e.description for e in local.experiments("t1")] == ["X = 2.0"]
    finally:
        local.close()
