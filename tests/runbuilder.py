"""Helpers for tests of whole runs: a run's history built directly, and a scripted agent for real runs.

`RunBuilder` builds a run's history without running it: real ledger rows and real git commits, as the loop makes them.

Each experiment is a real commit on top of the branch tip made with Workspace (pinned under
refs/autoresearch/<tag>/<id>), its patch the real diff, its row begun and finished in the
real Ledger; a keep advances the branch by compare-and-swap. Only the measurement is skipped:
the metric is given. Used by the HTML report and finalize tests, where 30 real experiments
would cost time and prove nothing more.

`agent_command()` writes a scripted agent for a real `autoresearch run --agent command`: call n sets
`X = steps[n]` in the tiny project's train.py (conftest.py) and appends the context it was shown to a file.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Callable, Optional, Union

from conftest import make_project

from autoresearch.config import load
from autoresearch.ledger import Experiment, Ledger
from autoresearch.workspace import Workspace

TRAIN = '''\
"""A small model's training script (the agent's file)."""
LEARNING_RATE = 0.02
WARMUP_STEPS = 100
WEIGHT_DECAY = 0.0
DEPTH = 8
WIDTH = 256
DROPOUT = 0.1
BATCH_SIZE = 64
SOFTCAP = 15.0


def schedule(step, total):
    if step < WARMUP_STEPS:
        return LEARNING_RATE * step / WARMUP_STEPS
    return LEARNING_RATE * (1 - step / total)


print("score: 1.0")
'''

Edit = Union[dict[str, object], Callable[[Path], None]]


class RunBuilder:
    def __init__(self, root: Path, tag: str = "t", baseline: float = 1.0, t0: float = 1_764_000_000.0):
        self.root = make_project(root, files={"train.py": TRAIN})
        self.tag = tag
        self.cfg = load(self.root)
        self.ws = Workspace(self.root, tag)
        self.ws.prepare()
        self.ledger = Ledger(self.root / ".autoresearch" / "ledger.db")
        self.session = self.ledger.start_session(tag, self.cfg.snapshot())
        self.clock = t0
        start = self.ws.tip()
        self.baseline = self._record(Experiment(tag=tag, parent=start, commit=start, description="baseline",
                                                kind="baseline"), "keep", baseline)

    def experiment(self, edit: Optional[Edit], description: str, status: str, metric: Optional[float] = None,
                   *, parent: Optional[str] = None, kind: str = "candidate", commit: Optional[str] = None,
                   **fields) -> Experiment:
        """Commit `edit` on `parent` (default: the tip) and record it; `edit` maps constant names to values.

        With no edit, `commit` names an existing commit the row records (e.g. a re-measurement).
        """
        parent = parent or self.ws.tip()
        patch = ""
        if edit is not None:
            wt = self.ws.worktree("build", at=parent)
            if callable(edit):
                edit(wt)
            else:
                for name, value in edit.items():
                    set_line(wt / "train.py", name, value)
            changed = self.ws.changed_paths(wt)
            commit = self.ws.commit(wt, changed, f"{description}\n\nautoresearch: {kind} on {self.tag}", parent)
            patch = self.ws.diff(parent, commit)
        exp = Experiment(tag=self.tag, parent=parent, commit=commit, description=description, kind=kind, patch=patch)
        return self._record(exp, status, metric, **fields)

    def _record(self, exp: Experiment, status: str, metric: Optional[float], **fields) -> Experiment:
        exp.started_at = self.clock
        exp.seed, exp.budget_s, exp.agent = 42, 300.0, exp.agent or ("" if exp.kind == "baseline" else "scripted")
        self.ledger.begin(exp)
        if exp.commit:
            self.ws.pin(exp.id, exp.commit)
        wall = fields.pop("wall_s", 330.0 if metric is not None else 45.0)
        self.clock += wall + 20
        exp.status, exp.metric, exp.wall_s, exp.ended_at = status, metric, wall, exp.started_at + wall
        for k, v in fields.items():
            setattr(exp, k, v)
        self.ledger.finish(exp)
        if status == "keep" and exp.kind != "baseline" and exp.commit != exp.parent:
            self.ws.advance(exp.commit, exp.parent)
        return self.ledger.get(exp.id)

    def rows(self) -> list[Experiment]:
        return self.ledger.experiments(self.tag)

    def close(self) -> None:
        """End the session (as a loop does when it stops) and close the ledger."""
        self.ledger.end_session(self.session)
        self.ledger.close()


def set_line(path: Path, name: str, value: object) -> None:
    lines = path.read_text().splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith(f"{name} = "):
            lines[i] = f"{name} = {value}\n"
            break
    else:
        raise AssertionError(f"no `{name} = ` line in {path}")
    path.write_text("".join(lines))


AGENT = """\
import json, os, pathlib
state = pathlib.Path({state!r})
n = int(state.read_text()) if state.exists() else 0
state.write_text(str(n + 1))
with open({contexts!r}, "a") as f:
    f.write("=== call %d\\n" % n + pathlib.Path(os.environ["AUTORESEARCH_CONTEXT"]).read_text() + "\\n")
steps = json.loads({steps!r})
value = steps[n] if n < len(steps) else round(1.5 - 0.01 * n, 4)
train = pathlib.Path("train.py")
lines = ["X = %s" % value if ln.startswith("X = ") else ln for ln in train.read_text().splitlines()]
train.write_text("\\n".join(lines) + "\\n")
pathlib.Path(os.environ["AUTORESEARCH_DESCRIPTION_FILE"]).write_text("X = %s" % value)
"""


def agent_command(folder: Path, steps: list) -> tuple[str, Path]:
    """A shell command for `--agent-command`, and the file where each call's context is appended."""
    folder.mkdir(parents=True, exist_ok=True)
    contexts = folder / "contexts.txt"
    script = folder / "agent.py"
    script.write_text(AGENT.format(state=str(folder / "calls"), contexts=str(contexts), steps=json.dumps(steps)))
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}", contexts
