"""Durability: the loop killed with SIGKILL at chosen and random moments, then `autoresearch run` again.

After every resume the contract (conftest.assert_consistent) must hold: no lost row, no duplicate,
every row terminal, the branch tip at the latest (= best) keep, results.tsv equal to the ledger,
and no process of the run left alive. Ctrl-C and SIGTERM end a run cleanly with exit code 0.

Precise kill points (right after a commit, between record and keep, ...) use a small driver that
runs the real CLI in a subprocess with one harness function wrapped to SIGKILL its own process
right after it returns. Kills during a run are done from outside, once the ledger shows the
experiment running. The agent is the `command` backend running a script that alternates a small
improvement and a clear regression (never the same change twice), so keeps and discards both happen early.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import (assert_consistent, cli, cli_popen, git, kill_group, make_project, rows_of,
                      wait_until, write_control)

from autoresearch.procs import marked_pids
from autoresearch.session import marker_prefix

TAG = "k"

AGENT = textwrap.dedent("""\
    import os, re, sys
    calls = sys.argv[1]
    n = len(open(calls).read().splitlines()) if os.path.exists(calls) else 0
    with open(calls, "a") as f:
        f.write("call\\n")
    text = open("train.py").read()
    x = float(re.search(r"^X = (.*)$", text, re.M).group(1))
    # n grows across kills (calls.txt persists), so no two proposals are ever the same change
    new = round(x - 0.05 - n * 1e-4, 6) if n % 2 == 0 else round(x + 1.0 + n * 1e-4, 6)
    open("train.py", "w").write(re.sub(r"^X = .*$", f"X = {new}", text, count=1, flags=re.M))
    with open(os.environ["AUTORESEARCH_DESCRIPTION_FILE"], "w") as f:
        f.write(f"X {x} -> {new}\\n")
""")

DRIVER = textwrap.dedent("""\
    # Runs the real CLI, SIGKILLing its own process right after the n-th call of one harness function.
    import os, signal, sys
    from autoresearch import cli
    from autoresearch.ledger import Ledger
    from autoresearch.workspace import Workspace

    point, nth = sys.argv[1], int(sys.argv[2])
    seen = [0]

    def after(cls, name, cond):
        orig = getattr(cls, name)

        def wrapper(*a, **k):
            out = orig(*a, **k)
            if cond(*a, **k):
                seen[0] += 1
                if seen[0] == nth:
                    os.kill(os.getpid(), signal.SIGKILL)
            return out
        setattr(cls, name, wrapper)

    if point == "after_commit":
        after(Workspace, "commit_files", lambda *a, **k: True)
    elif point == "after_begin":
        after(Ledger, "begin", lambda self, exp: exp.kind != "baseline")
    elif point == "after_keep_record":
        after(Ledger, "finish", lambda self, exp: exp.status == "keep" and exp.kind != "baseline")
    elif point == "after_advance":
        after(Workspace, "advance", lambda *a, **k: True)
    else:
        raise SystemExit(f"unknown point {point}")
    sys.exit(cli.main(sys.argv[3:]))
""")


def durable_project(tmp_path: Path, **control) -> Path:
    ctl = write_control(tmp_path / "ctl.json", **control)
    # The agent's own folder (its state between proposals) is hidden from runs: the control file is not in it.
    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / "agent.py").write_text(AGENT)
    agent = f'[agent]\nname = "command"\ncommand = "python {tmp_path / "agent" / "agent.py"} ' \
            f'{tmp_path / "agent" / "calls.txt"}"\n' \
            f"timeout_s = 30\nrepair_attempts = 0\n"
    return make_project(tmp_path / "proj", control=ctl, extra_toml=agent)


def run_args(n: int) -> list[str]:
    return ["run", "--tag", TAG, "--max-experiments", str(n), "--no-live"]


def resume(root: Path, n: int = 3) -> subprocess.CompletedProcess:
    r = cli(*run_args(n), cwd=root, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def drive(root: Path, tmp_path: Path, point: str, nth: int, n: int = 8) -> subprocess.CompletedProcess:
    (tmp_path / "driver.py").write_text(DRIVER)
    return subprocess.run([sys.executable, str(tmp_path / "driver.py"), point, str(nth), *run_args(n)], cwd=root,
                          capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)


def live_markers(root: Path) -> list[int]:
    return marked_pids(marker_prefix(root, TAG))


@pytest.mark.parametrize("point,nth", [
    ("after_commit", 2),          # a commit exists that no row knows: it must never reach the branch
    ("after_begin", 3),           # a `running` row with a commit that was never pinned nor run
    ("after_keep_record", 1),     # `keep` recorded, the branch not yet advanced
    ("after_advance", 2),         # the branch advanced, results.tsv not yet rewritten
])
def test_sigkill_at_a_precise_point_then_resume(tmp_path, point, nth):
    root = durable_project(tmp_path)
    r = drive(root, tmp_path, point, nth)
    assert r.returncode == -signal.SIGKILL, f"the kill point was never reached: {r.stdout}{r.stderr}"
    before = rows_of(root, TAG)
    tip_before = git(root, "rev-parse", f"autoresearch/{TAG}")
    resume(root, 2)
    rows = assert_consistent(root, TAG)
    assert [e.id for e in rows[:len(before)]] == [e.id for e in before]  # nothing lost, nothing rewritten
    assert len(rows) == len(before) + 2
    for old, new in zip(before, rows):
        if old.status != "running":
            assert (new.status, new.commit, new.metric) == (old.status, old.commit, old.metric)
        else:
            assert new.status == "interrupted" and "gone" in new.reason
    if point == "after_keep_record":
        kept = [e for e in before if e.status == "keep"][-1]
        assert tip_before != kept.commit  # the kill really landed between record and keep
        r = subprocess.run(["git", "merge-base", "--is-ancestor", kept.commit, f"autoresearch/{TAG}"], cwd=root)
        assert r.returncode == 0, "the recorded keep never reached the branch"
    if point == "after_commit":
        assert git(root, "rev-parse", f"autoresearch/{TAG}") == tip_before or tip_before in \
            git(root, "rev-list", f"autoresearch/{TAG}").split()


@pytest.mark.parametrize("victim", [1, 3])  # 1: the baseline, 3: a candidate
def test_sigkill_during_a_run_with_a_grandchild_then_resume(tmp_path, victim):
    root = durable_project(tmp_path, sleep_on=[victim], grandchild_on=[victim], sleep_s=120)
    proc = cli_popen(*run_args(10), cwd=root, log=tmp_path / "cli.log")
    try:
        wait_until(lambda: any(e.id == victim and e.status == "running" for e in rows_of(root, TAG)), timeout=60,
                   what=f"#{victim} to run")
        wait_until(lambda: len(live_markers(root)) >= 2, timeout=30, what="the run and its grandchild")
        os.killpg(proc.pid, signal.SIGKILL)  # the harness only: the run is in a session of its own
        proc.wait(10)
    finally:
        kill_group(proc)
    before = rows_of(root, TAG)
    assert before[-1].id == victim and before[-1].status == "running"
    resume(root, 2)
    rows = assert_consistent(root, TAG)
    assert rows[victim - 1].status == "interrupted"
    assert len(rows) == len(before) + 2 + (1 if victim == 1 else 0)  # a killed baseline is measured again
    if victim == 1:
        assert rows[1].kind == "baseline" and rows[1].status == "keep"


def test_random_sigkills_then_resume(tmp_path):
    """Kill the loop at arbitrary moments, several times in a row; the contract holds after each restart."""
    root = durable_project(tmp_path)
    rng = random.Random(1234)
    kills = 0
    for i in range(4):
        proc = cli_popen(*run_args(50), cwd=root, log=tmp_path / "cli.log")
        try:
            time.sleep(rng.uniform(0.8, 2.5))
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                kills += 1
            proc.wait(10)
        finally:
            kill_group(proc)
    assert kills >= 3
    before = rows_of(root, TAG)
    resume(root, 2)
    rows = assert_consistent(root, TAG)
    assert len(rows) == len(before) + 2
    assert len([e for e in rows if e.status == "keep"]) >= 2


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_ends_the_run_cleanly(tmp_path, sig):
    root = durable_project(tmp_path, sleep_on=[3], grandchild_on=[3], sleep_s=120)
    proc = cli_popen(*run_args(10), cwd=root, log=tmp_path / "cli.log")
    try:
        wait_until(lambda: any(e.id == 3 and e.status == "running" for e in rows_of(root, TAG)), timeout=60,
                   what="#3 to run")
        wait_until(lambda: len(live_markers(root)) >= 2, timeout=30, what="the run and its grandchild")
        t0 = time.monotonic()
        proc.send_signal(sig)
        wait_until(lambda: rows_of(root, TAG)[-1].status == "interrupted", timeout=30, what="the record to end")
        took = time.monotonic() - t0
        rc = proc.wait(60)  # then it writes the report and exits
    finally:
        kill_group(proc)
    out = (tmp_path / "cli.log").read_text()
    assert rc == 0, out
    assert took < 1 + 6, took  # the run is stopped within its grace (1 s), with room for a loaded machine
    assert f"stopped by {signal.Signals(sig).name}" in out
    rows = rows_of(root, TAG)
    assert rows[-1].id == 3 and rows[-1].status == "interrupted"
    assert git(root, "status", "--porcelain") == ""
    assert not live_markers(root)
    assert_consistent(root, TAG)
    if sig == signal.SIGINT:
        resume(root, 1)
        assert len(assert_consistent(root, TAG)) == 4


def test_a_second_run_on_the_same_tag_is_refused_while_the_first_works(tmp_path):
    root = durable_project(tmp_path, sleep_on=[1], sleep_s=120)
    proc = cli_popen(*run_args(1), cwd=root, log=tmp_path / "cli.log")
    try:
        wait_until(lambda: rows_of(root, TAG), timeout=60, what="the first run to start")
        r = cli(*run_args(1), cwd=root, timeout=60)
        assert r.returncode == 1 and "another autoresearch process" in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        kill_group(proc)


def test_sigkill_while_the_agent_works_leaves_no_orphan_after_resume(tmp_path):
    """The command agent's own process tree (here: a worker it forked) must not outlive a killed harness."""
    flag = tmp_path / "hung-once"
    script = tmp_path / "slow_agent.sh"
    script.write_text(textwrap.dedent(f"""\
        if [ ! -e {flag} ]; then
            touch {flag}
            sleep 300 &
            sleep 300
        fi
        sed -i 's/^X = .*/X = 2.0/' train.py
        echo set X to 2.0
    """))
    ctl = write_control(tmp_path / "ctl.json")
    root = make_project(tmp_path / "proj", control=ctl, extra_toml=(
        f'[agent]\nname = "command"\ncommand = "sh {script}"\ntimeout_s = 600\n'))
    proc = cli_popen(*run_args(2), cwd=root, log=tmp_path / "cli.log")
    try:
        wait_until(flag.exists, timeout=60, what="the agent to start")
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        kill_group(proc)
    resume(root, 1)
    rows = assert_consistent(root, TAG)
    assert [e.status for e in rows] == ["keep", "keep"]
    from autoresearch.procs import MARKER_VAR

    leftovers = []
    for pid in os.listdir("/proc"):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if f"{MARKER_VAR}=".encode() in env and str(tmp_path).encode() in env + cmd and b"sleep" in cmd:
            leftovers.append(int(pid))
    leftovers = [p for p in leftovers if _alive(p)]
    assert not leftovers, f"the dead session's agent left processes behind: {leftovers}"


def _alive(pid: int) -> bool:
    from autoresearch.procs import pid_alive

    return pid_alive(pid)


def test_stale_git_ref_locks_from_a_killed_session_are_cleared(project):
    """SIGKILL inside `git update-ref` leaves `<ref>.lock`: the branch could never move again."""
    from conftest import ScriptedAgent, load_cfg, set_x

    from autoresearch.driver import Driver, Limits

    Driver(load_cfg(project), TAG, ScriptedAgent([set_x(2.0)]), limits=Limits(max_experiments=1)).run()
    gitdir = project / ".git"
    (gitdir / "refs" / "heads" / "autoresearch" / f"{TAG}.lock").write_text("")
    (gitdir / "refs" / "autoresearch" / TAG / "3.lock").write_text("")
    out = Driver(load_cfg(project), TAG, ScriptedAgent([set_x(1.5)]), limits=Limits(max_experiments=1)).run()
    assert any("refs/heads/autoresearch/k.lock" in n for n in out.notes)
    rows = rows_of(project, TAG)
    assert [e.status for e in rows] == ["keep", "keep", "keep"]
    assert git(project, "rev-parse", f"autoresearch/{TAG}") == rows[-1].commit
    assert not list(gitdir.rglob("*.lock"))
