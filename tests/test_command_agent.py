"""The `command` agent: any shell command as the researcher, run for real in the proposal's worktree."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import pytest
from conftest import cli, git, make_project, rows_of

from autoresearch import agents
from autoresearch.config import load
from autoresearch.driver import Driver, Limits
from autoresearch.procs import marked_pids, pid_alive
from autoresearch.sandbox import probe
from autoresearch.session import marker_prefix

AGENT = textwrap.dedent("""\
    # A scripted researcher: the n-th call does plan[n].
    import json, os, re, subprocess, sys, time
    here = sys.argv[1]
    plan = json.load(open(os.path.join(here, "plan.json")))
    calls = os.path.join(here, "calls.txt")
    n = len(open(calls).read().splitlines()) if os.path.exists(calls) else 0
    with open(calls, "a") as f:
        f.write(os.environ.get("AUTORESEARCH_REPAIR", "?") + "\\n")
    action = plan[n] if n < len(plan) else "improve"
    ctx = open(os.environ["AUTORESEARCH_CONTEXT"]).read()
    with open(os.path.join(here, f"context{n}.md"), "w") as f:
        f.write(ctx)
    assert os.environ["AUTORESEARCH_WORKTREE"] == os.getcwd()
    text = open("train.py").read()
    x = float(re.search(r"^X = (.*)$", text, re.M).group(1))
    if action == "hang":
        subprocess.Popen(["sleep", "300"])
        with open(os.path.join(here, "hung.pid"), "w") as f:
            f.write(str(os.getpid()))
        time.sleep(300)
    if action == "fail":
        print("agent: the model server said no", flush=True)
        sys.exit(3)
    if action == "break":
        text = text.replace('print(f"aux: 7")', 'raise SystemExit("agent broke it: exit 4")')
    if action == "fix":
        text = text.replace('raise SystemExit("agent broke it: exit 4")', 'print(f"aux: 7")')
    new = round(x - 0.5, 4)
    open("train.py", "w").write(re.sub(r"^X = .*$", f"X = {new}", text, count=1, flags=re.M))
    if action == "nodesc":
        print("thinking...")
        print(f"lowered X to {new}")
    else:
        with open(os.environ["AUTORESEARCH_DESCRIPTION_FILE"], "w") as f:
            f.write(f"X {x} -> {new}\\nsecond line is ignored\\n")
""")


def setup(tmp_path: Path, plan: list[str], timeout_s: float = 30) -> Path:
    (tmp_path / "agent.py").write_text(AGENT)
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    return make_project(tmp_path / "p", extra_toml=(
        f'[agent]\nname = "command"\ncommand = "python {tmp_path / "agent.py"} {tmp_path}"\n'
        f"timeout_s = {timeout_s}\n"))


def run(root: Path, n: int):
    cfg = load(root)
    agent = agents.create("command", cfg)
    out = Driver(cfg, "c", agent, limits=Limits(max_experiments=n)).run()
    return out, rows_of(root, "c")


def test_takes_the_change_and_the_description_file(tmp_path):
    root = setup(tmp_path, ["improve", "nodesc"])
    out, rows = run(root, 2)
    assert [e.status for e in rows] == ["keep", "keep", "keep"]
    assert rows[1].description == "X 3.0 -> 2.5" and rows[1].agent == "command"
    assert rows[2].description == "lowered X to 2.0"  # no description file: its last line of output
    assert "+X = 2.5" in rows[1].patch and git(root, "rev-parse", "autoresearch/c") == rows[2].commit
    ctx = (tmp_path / "context0.md").read_text()
    assert "Make `score` lower" in ctx and "train.py" in ctx and "X = 3.0" in ctx
    assert "X 3.0 -> 2.5" in (tmp_path / "context1.md").read_text()  # the history reaches the next call
    assert (tmp_path / "calls.txt").read_text().split() == ["0", "0"]


def test_hanging_agent_is_killed_at_its_timeout_and_the_loop_goes_on(tmp_path):
    root = setup(tmp_path, ["hang", "improve"], timeout_s=1.5)
    t0 = time.monotonic()
    out, rows = run(root, 2)
    took = time.monotonic() - t0
    assert [e.status for e in rows] == ["keep", "crash", "keep"]
    assert "timed out after 1.5s" in rows[1].reason and "agent.timeout_s" in rows[1].reason
    assert rows[1].commit is None
    assert took < 1.5 + 1 + 15, took  # killed at 1.5 s (+ grace), not after the 300 s it wanted
    assert not marked_pids(marker_prefix(root, "c")), "the agent's processes outlived its proposal"
    if not probe()[0]:  # unconfined, its pid is the host's (in its namespace it is a small number)
        assert not pid_alive(int((tmp_path / "hung.pid").read_text()))


def test_failing_agent_is_a_recorded_failed_proposal(tmp_path):
    root = setup(tmp_path, ["fail", "fail", "improve"])
    out, rows = run(root, 3)
    assert [e.status for e in rows] == ["keep", "crash", "crash", "keep"]
    assert "agent command exited 3" in rows[1].reason and "the model server said no" in rows[1].reason
    assert out.stop_reason == "reached --max-experiments 3"


def test_a_crash_gets_a_repair_call_with_the_log(tmp_path):
    root = setup(tmp_path, ["break", "fix"])
    out, rows = run(root, 2)
    assert [(e.kind, e.status) for e in rows] == [("baseline", "keep"), ("candidate", "crash"), ("repair", "keep")]
    assert (tmp_path / "calls.txt").read_text().split() == ["0", "1"]  # AUTORESEARCH_REPAIR
    repair_ctx = (tmp_path / "context1.md").read_text()
    assert "agent broke it: exit 4" in repair_ctx  # the crashed run's log tail
    assert rows[2].repair_of == rows[1].id and rows[2].metric == pytest.approx((2.0 - 1) ** 2 + 0.5)


def test_cli_agent_command_flag(tmp_path):
    root = make_project(tmp_path / "p")
    cmd = "sed -i 's/^X = 3.0/X = 2.0/' train.py && echo set X to 2.0"
    r = cli("run", "--tag", "c", "--agent", "command", "--agent-command", cmd, "--max-experiments", "1", "--no-live",
            cwd=root)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = rows_of(root, "c")
    assert [e.status for e in rows] == ["keep", "keep"] and rows[1].description == "set X to 2.0"
    r = cli("run", "--tag", "c", "--agent", "command", "--max-experiments", "1", cwd=root)
    assert r.returncode == 1 and "--agent-command" in r.stderr and "Traceback" not in r.stderr
