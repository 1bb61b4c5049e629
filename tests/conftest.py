"""Shared fixtures: tiny research projects in real git repositories, and the CLI as a real process.

A *tiny project* is a real git repository in a temp folder with:
- `train.py` (editable): constants `X = 3.0` and `Y = 2` and a metric `score = (X - 1)**2 + 0.5 + OFFSET`
  (lower is better, so moving X towards 1 is a true improvement); it also prints `aux: 7`;
- `prepare.py` (protected): `OFFSET = 0.0`;
- `program.md`, `autoresearch.toml` (run = "python train.py", budget 1 s, timeout 20 s, grace 1 s,
  policy greedy).
Running one experiment costs one Python start-up (~30 ms), so loops of dozens stay fast.

`train.py` also reads an optional *control file* (path in `experiment.env` as CONTROL, absolute,
outside the repository) so a test can make chosen experiments sleep, crash or spawn a grandchild
without changing the code the agent sees. See `write_control`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # let test files `from conftest import ...` in any import mode
    sys.path.insert(0, str(HERE))

GIT_ID = ["-c", "user.name=tests", "-c", "user.email=tests@localhost", "-c", "commit.gpgsign=false"]

TRAIN = '''\
"""The agent's file in the tiny test project."""
import json
import os
import subprocess
import sys
import time

from prepare import OFFSET

X = 3.0
Y = 2

ctl_path = os.environ.get("CONTROL", "")
ctl = json.loads(open(ctl_path).read()) if ctl_path and os.path.exists(ctl_path) else {}
me = os.environ.get("AUTORESEARCH_EXPERIMENT", "")
if me in [str(i) for i in ctl.get("grandchild_on", [])]:
    subprocess.Popen(["sleep", "300"])  # a worker the run leaves behind
if me in [str(i) for i in ctl.get("sleep_on", [])]:
    time.sleep(float(ctl.get("sleep_s", 60)))
if me in [str(i) for i in ctl.get("crash_on", [])]:
    sys.exit(3)

print(f"aux: 7")
print(f"score: {(X - 1.0) ** 2 + 0.5 + OFFSET:.6f}")
'''

PREPARE = '''\
"""Frozen: the evaluation's constant. Never changed by the agent."""
OFFSET = 0.0
'''

PROGRAM = "# Tiny program\n\nMake `score` lower by changing the constants in train.py.\n"

TOML = '''\
[experiment]
run = "python train.py"
budget_s = 1
timeout_s = 20
grace_s = 1
editable = ["train.py"]
protected = ["prepare.py"]
{extra_experiment}
[metric]
name = "score"
direction = "min"
record = ["aux"]
memory = ""
{extra}
[policy]
name = "greedy"  # the original's rule; the noise-aware policies have their own tests
'''


def git(cwd: Path, *args: str, check: bool = True) -> str:
    """Run git in `cwd` with a fixed identity; returns stdout stripped."""
    r = subprocess.run(["git", *GIT_ID, *args], cwd=cwd, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {r.stderr}")
    return r.stdout.strip()


def make_project(root: Path, *, files: Optional[dict[str, str]] = None, toml: Optional[str] = None,
                 extra_toml: str = "", extra_experiment: str = "", control: Optional[Path] = None,
                 commit: bool = True) -> Path:
    """A tiny research project in a fresh git repository at `root` (see the module docstring).

    `files` replaces or adds files (None as a value drops one); `toml` replaces the whole config;
    `control`: absolute path of the control file, passed to every run as CONTROL.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if control is not None:
        extra_experiment += f'\nenv = {{ CONTROL = "{control}" }}\n'
    content: dict[str, Optional[str]] = {
        "train.py": TRAIN, "prepare.py": PREPARE, "program.md": PROGRAM,
        "autoresearch.toml": toml if toml is not None else TOML.format(extra=extra_toml,
                                                                       extra_experiment=extra_experiment),
    }
    content.update(files or {})
    for rel, text in content.items():
        if text is None:
            continue
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    if commit:
        git(root, "init", "-q", "-b", "main")
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", "tiny project")
    return root


def write_control(path: Path, **ctl) -> Path:
    """Write the control file train.py reads (experiment ids): sleep_on, sleep_s, crash_on, grandchild_on.

    The file is only read by the run (a sandboxed run sees paths named in its environment read-only)."""
    Path(path).write_text(json.dumps(ctl))
    return Path(path)


def set_constant(path: Path, name: str, value) -> None:
    """Rewrite the `NAME = ...` line of a file (what a scripted agent does)."""
    lines = Path(path).read_text().splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith(f"{name} = "):
            lines[i] = f"{name} = {value}\n"
            break
    else:
        raise AssertionError(f"no `{name} = ` line in {path}")
    Path(path).write_text("".join(lines))


class ScriptedAgent:
    """An in-process agent that follows a script: each step is a function `step(ctx, workdir) -> str|Proposal`.

    When the script runs out it proposes X = X - 0.01 (a small improvement), so a loop never starves.
    """

    name = "scripted"

    def __init__(self, steps: Iterable[Callable] = ()):
        self.steps = list(steps)
        self.calls = 0
        self.contexts = []

    def propose(self, ctx, workdir):
        from autoresearch.agents.base import Proposal

        self.calls += 1
        self.contexts.append(ctx)
        step = self.steps.pop(0) if self.steps else improve_by(0.01)
        out = step(ctx, Path(workdir))
        return out if isinstance(out, Proposal) else Proposal(str(out))


def set_x(value) -> Callable:
    def step(ctx, wt: Path) -> str:
        set_constant(wt / "train.py", "X", value)
        return f"X = {value}"
    return step


def improve_by(delta: float) -> Callable:
    def step(ctx, wt: Path) -> str:
        text = (wt / "train.py").read_text()
        x = float(text.split("\nX = ", 1)[1].split("\n", 1)[0])
        set_constant(wt / "train.py", "X", round(x - delta, 6))
        return f"X {x} -> {round(x - delta, 6)}"
    return step


def edit(rel: str, text: str, description: str = "") -> Callable:
    def step(ctx, wt: Path) -> str:
        (wt / rel).parent.mkdir(parents=True, exist_ok=True)
        (wt / rel).write_text(text)
        return description or f"edit {rel}"
    return step


def cli_argv() -> list[str]:
    """The installed `autoresearch` console script next to this interpreter, or `python -m autoresearch.cli`."""
    script = Path(sys.executable).parent / "autoresearch"
    return [str(script)] if script.exists() else [sys.executable, "-m", "autoresearch.cli"]


def cli(*args: str, cwd: Path, timeout: float = 120, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    """Run `autoresearch ARGS` as a real subprocess in `cwd`; returns the CompletedProcess (text)."""
    return subprocess.run(cli_argv() + list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env if env is not None else dict(os.environ), stdin=subprocess.DEVNULL)


def cli_popen(*args: str, cwd: Path, log: Optional[Path] = None, env: Optional[dict] = None) -> subprocess.Popen:
    """Start `autoresearch ARGS` in the background (own session, so signals aimed at it hit only it)."""
    out = open(log, "ab") if log else subprocess.DEVNULL
    try:
        return subprocess.Popen(cli_argv() + list(args), cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env if env is not None else dict(os.environ),
                                start_new_session=True)
    finally:
        if log:
            out.close()


def wait_until(pred: Callable[[], object], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or pred}")
        time.sleep(interval)


def ran(root: Path, tag: str) -> list[int]:
    """Ids of the experiments whose run command was started (the judge opens their log to run them)."""
    logs = Path(root) / ".autoresearch" / "logs" / tag
    return sorted(int(p.name[:5]) for p in logs.glob("[0-9][0-9][0-9][0-9][0-9].log")) if logs.exists() else []


def ledger_of(root: Path):
    from autoresearch.ledger import Ledger

    return Ledger(Path(root) / ".autoresearch" / "ledger.db")


def rows_of(root: Path, tag: str) -> list:
    """The ledger's rows for `tag` (opens and closes the database each time: safe while a run writes)."""
    path = Path(root) / ".autoresearch" / "ledger.db"
    if not path.exists():
        return []
    led = ledger_of(root)
    try:
        return led.experiments(tag)
    finally:
        led.close()


def load_cfg(root: Path, **overrides):
    from autoresearch.config import load

    return load(root, overrides or None)


def assert_consistent(root: Path, tag: str) -> list:
    """The durability contract after any interruption and a resume; returns the rows.

    - every row terminal, ids unique and increasing;
    - no commit measured twice except as a retry of an interrupted row;
    - every experiment commit pinned under refs/autoresearch/<tag>/ has its row (nothing lost);
    - the branch tip is the latest keep, which is also the best keep, and every commit on the branch
      since the baseline has a keep row;
    - results.tsv lists exactly the ledger's rows;
    - no process of this project is left (by marker).
    """
    from autoresearch.ledger import TERMINAL
    from autoresearch.procs import marked_pids
    from autoresearch.session import marker_prefix

    rows = rows_of(root, tag)
    assert rows, "no rows at all"
    ids = [e.id for e in rows]
    assert ids == sorted(set(ids)), f"ids not unique/increasing: {ids}"
    for e in rows:
        assert e.status in TERMINAL, f"#{e.id} is {e.status}"
    # identical code proposed again is measured again on purpose (researcher.same_code: evidence pooled);
    # the same change proposed while its twin is in flight is never run (same_change_as)
    measured = [e.commit for e in rows if e.commit and e.status != "interrupted"
                and not {"same_code_as", "same_change_as"} & set(e.evidence or {})]
    assert len(measured) == len(set(measured)), f"a commit was measured twice: {measured}"
    pins = git(root, "for-each-ref", "--format=%(refname) %(objectname)", f"refs/autoresearch/{tag}/")
    by_id = {e.id: e for e in rows}
    for line in pins.splitlines():
        ref, sha = line.split()
        exp_id = int(ref.rsplit("/", 1)[1])
        assert exp_id in by_id, f"{ref} has no ledger row (lost)"
        assert by_id[exp_id].commit == sha, f"{ref} points at {sha}, its row at {by_id[exp_id].commit}"
    keeps = [e for e in rows if e.status == "keep"]
    assert keeps, "no keep row (no baseline?)"
    tip = git(root, "rev-parse", f"autoresearch/{tag}")
    assert tip == keeps[-1].commit, f"tip {tip[:7]} is not the latest keep #{keeps[-1].id} {keeps[-1].commit[:7]}"
    best = min(keeps, key=lambda e: e.metric)
    assert best.commit == tip, "the tip is not the best kept commit"
    kept = {e.commit for e in keeps}
    on_branch = git(root, "rev-list", f"{keeps[0].commit}..{tip}").split()
    assert set(on_branch) <= kept, f"commits on the branch with no keep row: {set(on_branch) - kept}"
    tsv = (Path(root) / "results.tsv").read_text().splitlines()
    assert len(tsv) == 1 + len(rows), f"results.tsv has {len(tsv) - 1} rows, the ledger {len(rows)}"
    for line, e in zip(tsv[1:], rows):
        assert line.split("\t")[3] == e.status
    left = marked_pids(marker_prefix(Path(root), tag))
    assert not left, f"orphan processes of the run: {left}"
    return rows


def kill_group(proc: subprocess.Popen) -> None:
    """Best-effort cleanup of a background CLI started with cli_popen."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The default tiny project in `tmp_path/proj`."""
    return make_project(tmp_path / "proj")
