"""The session's own record: what the harness wrote is the truth for its session, whatever the files say.

Ledger: while a session holds a tag, reads of the tag answer from the rows as the session found or
wrote them; put_back() restores the file (a forged row removed and kept as a `forged` event, edits
and deletions undone, measurements too); a write over a row someone edited restores it and is
reported. Workspace: the branch and pins as the harness set them; put_back() restores them, and
advance() from the tip the harness set works even if someone moved the branch.
"""

from __future__ import annotations

import json
import sqlite3

from conftest import git, make_project

from autoresearch.ledger import Experiment, Ledger
from autoresearch.workspace import Workspace


def _row(tag: str, desc: str) -> Experiment:
    return Experiment(tag=tag, parent="p", commit="c" + desc, description=desc)


def _forger(path) -> sqlite3.Connection:
    return sqlite3.connect(path)


def test_reads_come_from_the_record_and_put_back_restores_the_file(tmp_path):
    path = tmp_path / "ledger.db"
    led = Ledger(path)
    session = led.start_session("t", {})
    kept, running = _row("t", "kept"), _row("t", "running")
    led.begin(kept)
    kept.status, kept.metric = "keep", 1.0
    led.finish(kept)
    led.begin(running)
    led.add_measurement(kept.id, kept.commit, 0, 1.0, {}, 0.1, "ok")
    before = [(e.id, e.status, e.metric) for e in led.experiments("t")]

    db = _forger(path)
    with db:
        db.execute("INSERT INTO experiments (tag, description, kind, status, metric, \"commit\") "
                   "VALUES ('t', 'forged', 'candidate', 'keep', 0.0001, 'f00')")
        db.execute("UPDATE experiments SET metric = 0.5 WHERE id = ?", (kept.id,))
        db.execute("DELETE FROM experiments WHERE id = ?", (running.id,))
        db.execute("INSERT INTO measurements (experiment_id, metric, status) VALUES (?, 0.0, 'ok')", (kept.id,))
    db.close()

    # the session does not see the forgery
    assert led.incumbent("t").id == kept.id and led.incumbent("t").metric == 1.0
    assert [(e.id, e.status, e.metric) for e in led.experiments("t")] == before
    assert [m["metric"] for m in led.measurements(tag="t")] == [1.0]
    assert led.counts("t") == {"keep": 1, "running": 1}

    found = led.put_back("t")
    assert len(found) == 1 and found[0].startswith("the ledger was edited (") and found[0].endswith("(restored)")
    assert "inserted (keep, 0.0001): removed" in found[0] and f"#{kept.id} metric 1.0 -> 0.5" in found[0]
    assert f"#{running.id} deleted" in found[0] and "measurement" in found[0]
    assert led.put_back("t") == []
    led.end_session(session)  # from here on reads go to the file: it is the record again
    assert [(e.id, e.status, e.metric) for e in led.experiments("t")] == before
    assert [m["metric"] for m in led.measurements(tag="t")] == [1.0]
    forged = [json.loads(ev["message"]) for ev in led.events("t") if ev["kind"] == "forged"]
    assert [f["description"] for f in forged] == ["forged"]  # kept as evidence
    led.close()


def test_a_running_row_someone_finished_is_still_the_harness_to_finish(tmp_path):
    path = tmp_path / "ledger.db"
    led = Ledger(path)
    led.start_session("t", {})
    exp = _row("t", "x")
    led.begin(exp)
    db = _forger(path)
    with db:
        db.execute("UPDATE experiments SET status = 'keep', metric = 0.0 WHERE id = ?", (exp.id,))
    db.close()
    exp.status, exp.metric = "discard", 2.0
    led.finish(exp)  # no "not running" crash: the record says it runs
    assert led.get(exp.id).status == "discard" and led.get(exp.id).metric == 2.0
    found = led.put_back("t")
    assert found and f"#{exp.id} was edited while it ran" in found[0]
    led.close()
    led = Ledger(path)
    assert (led.get(exp.id).status, led.get(exp.id).metric) == ("discard", 2.0)
    led.close()


def test_without_a_session_nothing_is_compared(tmp_path):
    led = Ledger(tmp_path / "ledger.db")
    assert not led.watching("t") and led.put_back("t") == []
    led.close()


def test_branch_and_pins_are_put_back_and_advance_survives_a_moved_branch(tmp_path):
    root = make_project(tmp_path / "p")
    ws = Workspace(root, "t")
    ws.prepare()
    base = ws.tip()
    ws.watch()
    wt = ws.worktree("w", at=base)
    (wt / "train.py").write_text("X = 1\n")
    one = ws.commit(wt, ["train.py"], "one", base)
    (wt / "train.py").write_text("X = 0\n")
    two = ws.commit(wt, ["train.py"], "two", one)
    ws.pin(1, one)
    git(root, "update-ref", ws.ref, two)  # someone moves the branch
    git(root, "update-ref", "refs/autoresearch/t/1", two)  # and a pin
    git(root, "update-ref", "refs/autoresearch/t/99", two)  # and adds one
    assert ws.expected_tip() == base
    found = ws.put_back()
    assert len(found) == 3 and any("autoresearch/t was moved" in f for f in found), found
    assert ws.tip() == base and git(root, "rev-parse", "refs/autoresearch/t/1") == one
    assert git(root, "for-each-ref", "refs/autoresearch/t/99") == ""
    assert ws.put_back() == []

    git(root, "update-ref", ws.ref, two)  # moved again, just before the harness advances
    ws.advance(one, base)
    assert ws.tip() == one and ws.expected_tip() == one
    assert ws.put_back() == [f"autoresearch/t was moved from {base[:7]} to {two[:7]} (restored)"]
