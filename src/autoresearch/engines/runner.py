"""Running one job where it lands: its commit checked out, the node set up once, then the judge.

Used by every engine: the local engine calls `execute()` in a thread of the head with the
head's own worktrees; the Ray engine calls it in a task on any node, with a `NodeRepo`.

Guarantees:
- The job is judged by judge.judge() exactly as the sequential loop judges a run: same
  environment, budget, timeout, process-tree kill, protected digests, sandbox, integrity
  review (for a candidate's primary run); its processes carry the marker
  `<marker_prefix><exp>:<commit>:<seed>`, so a restarted head finds leftovers.
- `experiment.setup` (e.g. building the data cache) runs once per node per session, before
  that node's first experiment: a file lock and a done-file in the node's cache make the
  workers of one node wait for a single run of it. Its failure raises (a broken project
  is the user's to fix), as in the sequential loop.
- NodeRepo (nodes without a shared filesystem): the project's code lives in a git
  repository in the node's cache, fed by bundles — the session's starting commit once,
  then each job's commit on top — so every commit has the same id as on the head. Jobs
  on one node lease worktrees from a pool (a file lock each), so concurrent jobs never
  share a checkout, and a killed worker's lease is released by the kernel.

Not covered: disk space on the node (logs and worktrees are reused, not pruned).
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

from ..config import Config
from ..judge import experiment_env, judge, read_end, run_setup
from ..layout import Layout
from ..procs import kill_marked
from ..sandbox import is_anchored
from ..workspace import Workspace, run_git
from .base import Job, Result, RunInfo

LOG_LIMIT = 8 << 20  # a remote job sends back at most this much of its log
_KNOWN: dict = {}  # per process: (repo, tag) -> (Workspace, commits known to be there)


def execute(run: RunInfo, job: Job, ws: Workspace, wt: Path, *, cfg: Config, log_path: Path, sandbox, worker: str,
            hardware: str, setup_dir: Path, should_stop: Callable[[], bool] = lambda: False,
            env_extra: Optional[dict[str, str]] = None, on_tick: Optional[Callable[[float], None]] = None,
            on_evaluate: Optional[Callable[[], None]] = None) -> Result:
    """Judge `job` in worktree `wt` (already at job.commit) under `cfg` (see slot_config); never raises for
    the experiment's failure."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.unlink(missing_ok=True)  # a re-queued attempt starts a fresh log
    env = {"AUTORESEARCH_TAG": run.tag, "AUTORESEARCH_EXPERIMENT": str(job.exp_id), **(env_extra or {})}
    marker = run.marker_prefix + job.marker
    setup_once(run, sandbox, wt, env, setup_dir, marker)
    t0 = time.time()
    m = judge(cfg, ws, wt, seed=job.seed, log_path=log_path, marker=marker, protected_digests=run.digests,
              restore_from=run.start_commit, env_extra=env, should_stop=should_stop, sandbox=sandbox,
              parent=job.parent, on_tick=on_tick or (lambda t: None), on_evaluate=on_evaluate or (lambda: None))
    return Result(m, worker, hardware, t0, time.time())


def slot_config(cfg: Config, project: Path, slot_root: Path, secret: str) -> Config:
    """The config one slot's judge runs under: the project's, with its root moved to `slot_root`.

    The judge reads the evaluation secret from `<root>/.autoresearch/eval_secret` and watches that
    file while the run goes on; slots running at once must not read the file another slot watches
    (that would be a false `violation`), so each slot has its own copy of the one project secret.
    `slot_root` must lie under the project's `.autoresearch/`, which the sandbox hides from runs.
    Relative `experiment.hidden` and `experiment.data` patterns stay relative to `project`."""
    if secret:
        path = Layout(slot_root).eval_secret
        if not path.exists() or path.read_text().strip() != secret:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent)  # 0600, like the original
            with os.fdopen(fd, "w") as f:
                f.write(secret)
            os.replace(tmp, path)

    def anchored(patterns: list[str]) -> list[str]:
        return [p if is_anchored(p) else str(project / p) for p in patterns]

    e = cfg.experiment
    return dataclasses.replace(cfg, root=slot_root, experiment=dataclasses.replace(
        e, hidden=anchored(e.hidden), data=anchored(e.data)))


def setup_once(run: RunInfo, sandbox, wt: Path, env_extra: dict[str, str], folder: Path, marker: str) -> None:
    """`experiment.setup` once per node and session (see the module docstring)."""
    cfg = run.cfg
    if not cfg.experiment.setup or sandbox.setup_done:
        return
    folder.mkdir(parents=True, exist_ok=True)
    name = f"setup-{run.project_id}-{run.tag}"
    done = folder / f"{name}-{run.session}.done"
    with flock(folder / f"{name}.lock"):
        if not done.exists():
            env = experiment_env(cfg, cfg.experiment.seed, env_extra)
            run_setup(cfg, sandbox, wt, env, folder / f"{name}.log", f"{marker}:node")
            done.touch()
    sandbox.setup_done = True


@contextmanager
def flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class NodeRepo:
    """One project's code on one node: a git repository fed by bundles, and a pool of worktrees."""

    def __init__(self, cache: Path, run: RunInfo):
        self.home = Path(cache).expanduser() / "projects" / run.project_id
        self.repo = self.home / "repo"
        self.root = self.repo / run.prefix if run.prefix else self.repo
        self.logs = self.home / "logs" / run.tag
        self.tag = run.tag

    def workspace(self, run: RunInfo, job: Job, base: Callable[[], bytes]) -> Workspace:
        """The node's Workspace, holding job.commit (fetched from the bundles if new here)."""
        key = (str(self.repo), run.tag)
        with flock(self.home / "repo.lock"):
            if key not in _KNOWN:
                if not (self.repo / ".git").exists():
                    self.repo.mkdir(parents=True, exist_ok=True)
                    self._git("init", "-q")
                    self._git("config", "gc.auto", "0")  # unbundled objects have no refs: never collect them
                self.root.mkdir(parents=True, exist_ok=True)
                _KNOWN[key] = (Workspace(self.root, run.tag), set())
            ws, known = _KNOWN[key]
            for commit, data in ((run.start_commit, base), (job.commit, lambda: job.bundle)):
                if commit in known or self._has(commit):
                    known.add(commit)
                    continue
                bundle = data()
                if bundle is None:
                    raise RuntimeError(f"commit {commit[:10]} is not on this node and the job has no bundle")
                self._fetch(bundle)
                known.add(commit)
        return ws

    @contextmanager
    def lease(self, marker: str, retry: bool = False) -> Iterator[str]:
        """The name of a worktree no other job on this node is using, for as long as the block runs.

        The lease remembers the marker of the job holding it; whoever takes it next kills what a
        worker killed mid-job left behind (the shell dies with the worker, its children do not)."""
        folder = self.home / "leases"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(1024):
            f = open(folder / f"w{i}.lock", "a")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            held = folder / f"w{i}.marker"
            try:
                if held.exists():
                    kill_marked(held.read_text())
                if retry:
                    kill_marked(marker)  # an earlier attempt of this very job, if its worker died here
                held.write_text(marker)
                yield f"w{i}"
                held.unlink(missing_ok=True)
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
                f.close()
            return
        raise RuntimeError(f"no free worktree in {folder}")

    def checkout(self, ws: Workspace, name: str, commit: str) -> Path:
        """Worktree `name` at `commit`, and its evaluation worktree (`<name>-eval`, which the judge resets
        itself) made here too: leased with it, so no other job touches either."""
        if all((ws.trees / n / ".git").exists() for n in (name, f"{name}-eval")):
            return ws.worktree(name, at=commit)  # a reset inside its own worktree: no lock needed
        with flock(self.home / "repo.lock"):  # `git worktree add/prune` touch the shared repository
            wt = ws.worktree(name, at=commit)
            ws.evaluation_worktree(wt, commit)
            return wt

    def _has(self, sha: str) -> bool:
        return run_git(["cat-file", "-e", f"{sha}^{{commit}}"], self.repo, capture_output=True).returncode == 0

    def _fetch(self, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.home, suffix=".bundle")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            self._git("bundle", "unbundle", tmp)  # objects only (no refs): ~10x faster than a fetch
        finally:
            os.unlink(tmp)

    def _git(self, *args: str) -> None:
        r = run_git(args, self.repo, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)} failed in {self.repo}: {r.stderr.strip()}")


def read_log(path: Path) -> str:
    return read_end(path, LOG_LIMIT)
