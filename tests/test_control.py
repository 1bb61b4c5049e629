"""Steering a running loop: pause/resume around the experiment in flight, and program.md edits noted in the ledger.

The loop is a real `autoresearch run` subprocess with a scripted command agent; pause, resume and
watch are real CLI processes beside it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from conftest import (assert_consistent, cli, cli_popen, kill_group, ledger_of, make_project, rows_of,
                      wait_until, write_control)
from runbuilder import agent_command

from autoresearch.control import Control, pause_path

STEER = "STEER: try values of X close to 1."


def events(root: Path, tag: str, kind: str) -> list[dict]:
    led = ledger_of(root)
    try:
        return [ev for ev in led.events(tag) if ev["kind"] == kind]
    finally:
        led.close()


def test_pause_lets_the_experiment_in_flight_finish_then_waits_and_resume_goes_on(tmp_path: Path):
    write_control(tmp_path / "control.json", sleep_on=[2], sleep_s=3)  # #2 runs for 3 s
    root = make_project(tmp_path / "proj", control=tmp_path / "control.json")
    cmd, contexts = agent_command(tmp_path / "agent", [2.5, 2.8, 2.0, 1.5])
    log = tmp_path / "run.log"
    proc = cli_popen("run", "--tag", "p", "--no-live", "--max-experiments", "4", "--agent", "command",
                     "--agent-command", cmd, cwd=root, log=log)
    try:
        wait_until(lambda: any(e.id == 2 and e.status == "running" for e in rows_of(root, "p")), 30, what="#2 running")
        r = cli("pause", "--tag", "p", cwd=root)
        assert r.returncode == 0, r.stderr
        assert "finishes #2 (in flight)" in r.stdout
        assert pause_path(root, "p").exists()

        wait_until(lambda: events(root, "p", "pause"), 30, what="the loop to pause")
        rows = rows_of(root, "p")
        assert [e.status for e in rows] == ["keep", "keep"]  # #2 completed and was recorded, not interrupted
        time.sleep(2.0)
        assert len(rows_of(root, "p")) == 2, "an experiment began while paused"
        assert proc.poll() is None
        snap = cli("watch", "--tag", "p", "--once", "--plain", cwd=root)
        assert "paused for" in snap.stdout and "autoresearch resume --tag p" in snap.stdout

        # Steering while paused: the human edits program.md; the next proposal sees it and the ledger notes it.
        with open(root / "program.md", "a") as f:
            f.write(STEER + "\n")
        r = cli("resume", "--tag", "p", cwd=root)
        assert r.returncode == 0 and "resumed p" in r.stdout
        assert proc.wait(timeout=60) == 0
    finally:
        kill_group(proc)

    out = log.read_text()
    assert "paused (after #2)" in out and "resumed after" in out
    rows = assert_consistent(root, "p")
    assert [e.status for e in rows] == ["keep", "keep", "discard", "keep", "keep"]
    assert "interrupted" not in [e.status for e in rows]
    (resume,) = events(root, "p", "resume")
    assert resume["message"].startswith("resumed after") and resume["experiment_id"] == 2
    steering = [ev["message"] for ev in events(root, "p", "steering")]
    assert steering[0].startswith("program.md read (sha256:")
    assert len(steering) == 2 and steering[1].startswith("program.md changed (sha256:")
    assert f'+1 -0 lines: line 4 now "{STEER}"' in steering[1]
    calls = contexts.read_text().split("=== call ")[1:]  # one per proposal: #2 before the pause, #3 after
    assert len(calls) == 4
    assert STEER not in calls[0] and STEER in calls[1]  # the first proposal after the edit saw it
    assert not pause_path(root, "p").exists()


def test_a_tag_paused_before_its_run_waits_after_the_baseline_and_ctrl_c_stops_it(tmp_path: Path):
    root = make_project(tmp_path / "proj")
    r = cli("pause", "--tag", "q", cwd=root)
    assert r.returncode == 0 and "the next `autoresearch run --tag q` waits" in r.stdout
    cmd, _ = agent_command(tmp_path / "agent", [2.5])
    proc = cli_popen("run", "--tag", "q", "--no-live", "--agent", "command", "--agent-command", cmd, cwd=root,
                     log=tmp_path / "run.log")
    try:
        wait_until(lambda: events(root, "q", "pause"), 30, what="the loop to pause")
        assert [e.status for e in rows_of(root, "q")] == ["keep"]  # only the baseline
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        assert time.monotonic() - t0 < 5, "Ctrl-C while paused must stop at once"
    finally:
        kill_group(proc)
    (resume,) = events(root, "q", "resume")
    assert resume["message"].startswith("stopped while paused")
    assert [e.status for e in assert_consistent(root, "q")] == ["keep"]
    assert pause_path(root, "q").exists()  # still paused: the flag outlives the loop
    assert cli("resume", "--tag", "q", cwd=root).stdout.strip() == "autoresearch: resumed q"
    assert cli("resume", "--tag", "q", cwd=root).stdout.strip() == "autoresearch: q was not paused"


def test_steering_notes_survive_a_restart_and_name_the_change(tmp_path: Path):
    root = make_project(tmp_path / "proj")
    led = ledger_of(root)
    notes: list[str] = []
    report = lambda kind, **data: notes.append(data["message"])  # noqa: E731
    c = Control(root, "s", led, report)
    assert [m.split(" (")[0] for m in c.note_steering()] == ["program.md read"]
    assert c.note_steering() == []  # nothing changed, nothing noted
    (root / "ideas.md").write_text("- try a cosine schedule\n")
    (added,) = c.note_steering()
    assert added.startswith("ideas.md added (sha256:") and '"- try a cosine schedule"' in added
    (root / "program.md").write_text((root / "program.md").read_text().replace("lower", "much lower"))
    (changed,) = c.note_steering()
    assert changed.startswith("program.md changed") and "+1 -1 lines: line 3 now" in changed and "much lower" in changed

    (root / "ideas.md").unlink()  # edited while no loop runs: a new session finds the digests in the ledger
    (root / "program.md").write_text("# New direction\n")
    restarted = Control(root, "s", led, report)
    got = restarted.note_steering()
    assert got[0].startswith("program.md changed since it was last read (sha256:")
    assert got[1].startswith("ideas.md removed (sha256:none, was sha256:")
    assert notes[-2:] == got
    assert Control(root, "s", led, report).note_steering() == []  # restarted again with no edit: nothing new
    assert len([ev for ev in led.events("s") if ev["kind"] == "steering"]) == 5
    led.close()
