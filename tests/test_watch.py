"""`autoresearch watch`: a read-only view of a running loop, from another process.

Snapshots are checked on a run built with real ledger rows and git commits; following is checked
against a real `autoresearch run` subprocess, with watch as a real CLI process beside it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from conftest import cli, cli_argv, cli_popen, kill_group, ledger_of, make_project, rows_of, wait_until, write_control
from runbuilder import RunBuilder, agent_command


def test_once_prints_a_snapshot_of_the_ledger(tmp_path: Path):
    b = RunBuilder(tmp_path / "proj", baseline=1.0)
    b.experiment({"LEARNING_RATE": 0.04}, "raise the learning rate", "keep", 0.99)
    b.experiment({"DEPTH": 12}, "depth 12", "crash", None, reason="exit code 1")
    b.experiment({"DROPOUT": 0.2}, "more dropout", "discard", 0.995)
    b.ledger.event("t", "steering", 'program.md changed (sha256:aaa, was sha256:bbb), +1 -0 lines: line 4 now "x"')
    best = b.rows()[1]
    b.close()
    before = (tmp_path / "proj" / ".autoresearch" / "ledger.db").read_bytes()

    r = cli("watch", "--once", "--plain", cwd=b.root)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == (f"autoresearch t: best score 0.99 (1 run) (#{best.id} {best.short}) | 4 experiments: "
                        "crash 1, discard 1, keep 2")
    assert lines[1].startswith("improvement: score 1 (1 run) → 0.99 (1 run), -1.00%; improvement +0.01")
    assert lines[2] == "not running"
    assert "#3    crash         score=-  depth 12  [exit code 1]" in lines
    assert "#4    discard       score=0.995000  more dropout" in lines
    assert 'steering: program.md changed (sha256:aaa, was sha256:bbb), +1 -0 lines: line 4 now "x"' in r.stdout
    piped = cli("watch", "--once", cwd=b.root)  # no --plain, but stdout is a pipe: plain lines all the same
    assert piped.returncode == 0 and piped.stdout == r.stdout
    assert (tmp_path / "proj" / ".autoresearch" / "ledger.db").read_bytes() == before  # read-only

    gone = cli("watch", "--plain", cwd=b.root)  # following, but no loop runs: a snapshot and a clear word
    assert gone.returncode == 0 and gone.stdout.rstrip().endswith("autoresearch: no loop is running on tag t")
    empty = make_project(tmp_path / "empty")
    none = cli("watch", cwd=empty)
    assert none.returncode == 1 and "no runs yet" in none.stderr


def test_follow_prints_each_experiment_and_exits_when_the_session_ends(tmp_path: Path):
    write_control(tmp_path / "control.json", sleep_on=[2, 3, 4], sleep_s=1.0)
    root = make_project(tmp_path / "proj", control=tmp_path / "control.json")
    cmd, _ = agent_command(tmp_path / "agent", [2.5, 2.8, 2.0])
    run = cli_popen("run", "--tag", "w", "--no-live", "--max-experiments", "3", "--agent", "command",
                    "--agent-command", cmd, cwd=root, log=tmp_path / "run.log")
    watcher = interrupted = None
    try:
        def session_open():
            led = ledger_of(root)
            try:
                return any(s["ended_at"] is None for s in led.sessions("w"))
            finally:
                led.close()

        wait_until(lambda: rows_of(root, "w") and session_open(), 30, what="the run's session")
        watcher = subprocess.Popen(cli_argv() + ["watch", "--plain", "--interval", "0.2"], cwd=root, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        interrupted = subprocess.Popen(cli_argv() + ["watch", "--plain", "--tag", "w"], cwd=root, text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        time.sleep(1.5)
        t0 = time.monotonic()
        os.killpg(interrupted.pid, signal.SIGINT)  # Ctrl-C leaves quietly
        assert interrupted.wait(timeout=10) == 0 and time.monotonic() - t0 < 5
        assert run.wait(timeout=60) == 0
        out, _ = watcher.communicate(timeout=15)  # exits by itself once the session has ended
    finally:
        kill_group(run)
        for p in (watcher, interrupted):
            if p is not None and p.poll() is None:
                p.kill()
    assert watcher.returncode == 0
    rows = rows_of(root, "w")
    assert [e.status for e in rows] == ["keep", "keep", "discard", "keep"]
    for e in rows[1:]:  # every experiment that finished while watching has its line
        assert f"#{e.id:<4} {e.status:<13} score={e.metric:.6f}  X = " in out, out
    assert out.rstrip().splitlines()[-1].startswith("autoresearch: the session on w ended; autoresearch w: best score "
                                                    "1.5 (1 run)")
