"""The ledger's storage contract, as a conformance suite any future backend must pass.

Real SQLite files in tmp dirs; concurrency with real processes; migration from a database file
built by hand as an older version wrote it.
"""

from __future__ import annotations

import math
import multiprocessing
import sqlite3
import threading
from pathlib import Path

import pytest

from autoresearch.errors import LedgerError
from autoresearch.ledger import MIGRATIONS, TERMINAL, Experiment, Ledger, write_tsv


def new(tag: str = "t", description: str = "try something", **kw) -> Experiment:
    return Experiment(tag=tag, parent="a" * 40, commit="b" * 40, description=description, **kw)


@pytest.fixture
def ledger(tmp_path):
    led = Ledger(tmp_path / ".autoresearch" / "ledger.db")
    yield led
    led.close()


def test_begin_writes_running_row(ledger):
    exp = new()
    exp_id = ledger.begin(exp)
    assert exp.id == exp_id
    row = ledger.get(exp_id)
    assert row.status == "running" and row.started_at > 0 and row.pid and row.host
    assert ledger.begin(new()) > exp_id  # ids increase


def test_finish_reaches_terminal_and_never_changes(ledger):
    exp = new()
    ledger.begin(exp)
    exp.status, exp.metric, exp.reason = "discard", 1.25, "not better"
    ledger.finish(exp)
    row = ledger.get(exp.id)
    assert row.status == "discard" and row.metric == 1.25 and row.ended_at >= row.started_at
    exp.status, exp.metric = "keep", 0.5
    with pytest.raises(LedgerError, match="not running"):
        ledger.finish(exp)
    with pytest.raises(LedgerError):
        ledger.update_running(exp.id, log_path="/elsewhere")
    row = ledger.get(exp.id)
    assert row.status == "discard" and row.metric == 1.25 and row.log_path == ""


def test_finish_needs_a_terminal_status_and_an_id(ledger):
    exp = new()
    with pytest.raises(ValueError):
        ledger.finish(exp)  # no id
    ledger.begin(exp)
    exp.status = "running"
    with pytest.raises(ValueError):
        ledger.finish(exp)
    assert ledger.get(exp.id).status == "running"


def test_update_running(ledger):
    exp = new()
    ledger.begin(exp)
    ledger.update_running(exp.id, pid=4242, log_path="/x.log")
    row = ledger.get(exp.id)
    assert (row.pid, row.log_path, row.status) == (4242, "/x.log", "running")


def test_interrupt_stale_only_touches_running_rows_of_the_tag(ledger):
    a, b, other = new(), new(), new(tag="other")
    for e in (a, b, other):
        ledger.begin(e)
    b.status = "keep"
    b.metric = 1.0
    ledger.finish(b)
    stale = ledger.interrupt_stale("t")
    assert [e.id for e in stale] == [a.id]
    assert ledger.get(a.id).status == "interrupted" and ledger.get(a.id).ended_at
    assert ledger.get(b.id).status == "keep"
    assert ledger.get(other.id).status == "running"
    assert ledger.interrupt_stale("t") == []  # idempotent


def test_incumbent_is_latest_keep_of_the_tag(ledger):
    assert ledger.incumbent("t") is None
    ids = []
    for status, metric in (("keep", 3.0), ("discard", 2.5), ("keep", 2.0), ("crash", None), ("discard", 1.0)):
        e = new(description=f"{status} {metric}")
        ledger.begin(e)
        e.status, e.metric = status, metric
        ledger.finish(e)
        ids.append(e.id)
    other = new(tag="u")
    ledger.begin(other)
    other.status, other.metric = "keep", 0.1
    ledger.finish(other)
    inc = ledger.incumbent("t")
    assert inc.id == ids[2] and inc.metric == 2.0
    assert ledger.counts("t") == {"keep": 2, "discard": 2, "crash": 1}
    assert ledger.tags() == ["t", "u"]


def test_every_field_round_trips(ledger):
    exp = new(kind="repair", patch="--- a\n+++ b\n", rationale="because", agent="mutate", seed=7, budget_s=300.0,
              timeout_s=660.0, log_path="/l.log", hardware="x86_64-2cpu", worker="w1", repair_of=3,
              tokens_in=11, tokens_out=22, cost_usd=0.125, agent_latency_s=1.5)
    ledger.begin(exp)
    exp.status, exp.reason, exp.exit_code, exp.wall_s = "keep", "better", 0, 12.5
    exp.metric, exp.metrics = 0.9979, {"peak_vram_mb": 45060.2, "mfu_percent": 39.8}
    exp.peak_mem_mb, exp.log_tail = 45060.2, "line 1\nline 2"
    exp.evidence = {"runs": 3, "deltas": [0.1, 0.2], "nested": {"p": 0.01}}
    ledger.finish(exp)
    row = ledger.get(exp.id)
    for name in ("tag", "parent", "commit", "description", "kind", "patch", "rationale", "agent", "seed", "budget_s",
                 "timeout_s", "status", "reason", "exit_code", "wall_s", "metric", "metrics", "peak_mem_mb",
                 "log_path", "log_tail", "hardware", "worker", "repair_of", "evidence", "tokens_in", "tokens_out",
                 "cost_usd", "agent_latency_s", "started_at", "ended_at", "pid", "host"):
        assert getattr(row, name) == getattr(exp, name), name
    assert row.to_json()["metrics"]["peak_vram_mb"] == 45060.2


def test_nan_metric_is_stored_as_none(ledger):
    exp = new()
    ledger.begin(exp)
    exp.status, exp.metric = "crash", float("nan")
    ledger.finish(exp)
    assert ledger.get(exp.id).metric is None
    assert new(metric=math.inf).to_json()["metric"] is None


def test_side_tables(ledger):
    exp = new()
    ledger.begin(exp)
    ledger.add_measurement(exp.id, "c" * 40, 1, 0.5, {"aux": 7.0}, 1.2, "ok")
    ledger.add_measurement(exp.id, "c" * 40, 2, 0.6, {}, 1.1, "ok")
    ms = ledger.measurements(commit="c" * 40, tag="t")
    assert [m["seed"] for m in ms] == [1, 2] and ms[0]["metrics"] == {"aux": 7.0}
    ledger.log_llm_call(experiment_id=exp.id, tag="t", backend="openai", model="m", prompt="p", reply="r",
                        tokens_in=5, tokens_out=6, cost_usd=0.01, latency_s=0.2)
    assert ledger.llm_calls("t")[0]["reply"] == "r"
    ledger.event("t", "note", "hello", exp.id)
    assert ledger.events("t")[0]["message"] == "hello"
    sid = ledger.start_session("t", {"experiment": {"run": "x"}})
    ledger.end_session(sid)
    s = ledger.sessions("t")[0]
    assert s["config"] == {"experiment": {"run": "x"}} and s["ended_at"]


def _writer(path: str, tag: str, n: int, barrier) -> None:
    led = Ledger(path)
    barrier.wait()
    for i in range(n):
        e = Experiment(tag=tag, parent="p", commit=f"{tag}{i}", description=f"{tag} {i}")
        led.begin(e)
        e.status, e.metric = ("keep" if i % 3 == 0 else "discard"), float(i)
        led.finish(e)
        led.event(tag, "note", f"{i}")
    led.close()


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    path = str(tmp_path / "ledger.db")
    Ledger(path).close()
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(path, tag, 60, barrier)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    led = Ledger(path)
    rows = led.experiments()
    assert len(rows) == 120 and len({e.id for e in rows}) == 120
    assert all(e.status in TERMINAL for e in rows)
    for tag in ("a", "b"):
        mine = led.experiments(tag)
        assert [e.commit for e in mine] == [f"{tag}{i}" for i in range(60)]
        assert len(led.events(tag)) == 60


def _opener(path: str, barrier, n: int) -> None:
    barrier.wait()
    led = Ledger(path)  # every process finds an empty file and migrates it at the same moment
    e = Experiment(tag="o", parent="p", commit=f"c{n}", description="x")
    led.begin(e)
    led.close()


def test_processes_creating_a_new_ledger_at_once(tmp_path):
    path = str(tmp_path / "fresh.db")
    ctx = multiprocessing.get_context("fork")
    for attempt in range(5):
        Path(path).unlink(missing_ok=True)
        barrier = ctx.Barrier(4)
        procs = [ctx.Process(target=_opener, args=(path, barrier, i)) for i in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0, 0, 0]
        led = Ledger(path)
        assert len(led.experiments("o")) == 4 and led.schema_version == len(MIGRATIONS)
        led.close()


def test_threads_share_one_ledger(ledger):
    def work(k: int) -> None:
        for i in range(30):
            e = new(tag="th", description=f"{k}-{i}")
            ledger.begin(e)
            e.status = "discard"
            ledger.finish(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = ledger.experiments("th")
    assert len(rows) == 120 and all(e.status == "discard" for e in rows)


# -- migrations ------------------------------------------------------------------------------
# Schema v1 exactly as autoresearch 0.1.0 wrote it. Frozen here on purpose: later migrations
# must upgrade a file like this one without losing a row.
V1_SCHEMA = """
CREATE TABLE experiments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tag TEXT NOT NULL, parent TEXT, "commit" TEXT, description TEXT NOT NULL,
    kind TEXT NOT NULL, patch TEXT, rationale TEXT, agent TEXT, seed INTEGER,
    budget_s REAL, timeout_s REAL, status TEXT NOT NULL, reason TEXT,
    started_at REAL, ended_at REAL, wall_s REAL, exit_code INTEGER,
    metric REAL, metrics TEXT, peak_mem_mb REAL, log_path TEXT, log_tail TEXT,
    pid INTEGER, host TEXT, hardware TEXT, worker TEXT, repair_of INTEGER,
    evidence TEXT, tokens_in INTEGER, tokens_out INTEGER, cost_usd REAL,
    agent_latency_s REAL
);
CREATE INDEX experiments_tag ON experiments(tag, id);
CREATE TABLE sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, tag TEXT NOT NULL, started_at REAL,
    ended_at REAL, pid INTEGER, host TEXT, config TEXT, note TEXT
);
CREATE TABLE measurements (
    id INTEGER PRIMARY KEY AUTOINCREMENT, experiment_id INTEGER NOT NULL,
    "commit" TEXT, seed INTEGER, metric REAL, metrics TEXT, wall_s REAL,
    status TEXT, created_at REAL
);
CREATE TABLE llm_calls (
    id INTEGER PRIMARY KEY AUTOINCREMENT, experiment_id INTEGER, tag TEXT,
    backend TEXT, model TEXT, prompt TEXT, reply TEXT, tokens_in INTEGER,
    tokens_out INTEGER, cost_usd REAL, latency_s REAL, error TEXT, created_at REAL
);
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, tag TEXT, experiment_id INTEGER,
    kind TEXT, message TEXT, created_at REAL
);
"""


def test_opens_an_empty_v0_file(tmp_path):
    path = tmp_path / "ledger.db"
    sqlite3.connect(path).close()  # an empty database: user_version 0
    led = Ledger(path)
    assert led.schema_version == len(MIGRATIONS)
    e = new()
    led.begin(e)
    assert led.get(e.id).status == "running"


def test_migrates_a_v1_file_without_losing_rows(tmp_path):
    path = tmp_path / "ledger.db"
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    db.execute(
        'INSERT INTO experiments (tag, parent, "commit", description, kind, status, metric, metrics, evidence, '
        "started_at, ended_at, tokens_in, tokens_out, cost_usd) "
        "VALUES ('old', 'p1', 'c1', 'baseline', 'baseline', 'keep', 0.9979, '{\"peak_vram_mb\": 45060.2}', NULL, "
        "1.0, 2.0, NULL, NULL, NULL)"
    )
    db.execute(
        'INSERT INTO experiments (tag, parent, "commit", description, kind, status, started_at) '
        "VALUES ('old', 'c1', 'c2', 'was running when it died', 'candidate', 'running', 3.0)"
    )
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    led = Ledger(path)
    assert led.schema_version == len(MIGRATIONS)
    rows = led.experiments("old")
    assert [(e.commit, e.status) for e in rows] == [("c1", "keep"), ("c2", "running")]
    assert rows[0].metrics == {"peak_vram_mb": 45060.2} and rows[0].evidence == {} and rows[0].tokens_in == 0
    assert led.incumbent("old").commit == "c1"
    assert [e.id for e in led.interrupt_stale("old")] == [rows[1].id]
    e = new(tag="old")
    assert led.begin(e) > rows[1].id


def test_refuses_a_newer_file(tmp_path):
    path = tmp_path / "ledger.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.commit()
    db.close()
    with pytest.raises(LedgerError, match="newer"):
        Ledger(path)


def test_refuses_a_file_that_is_not_a_database(tmp_path):
    path = tmp_path / "ledger.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LedgerError, match="cannot open"):
        Ledger(path)


# -- results.tsv ------------------------------------------------------------------------------
def test_results_tsv_is_the_original_format(tmp_path, ledger):
    rows = []
    history = (("baseline", "keep", 0.997900, 45060.2), ("increase LR", "discard", 0.9985, 45100),
               ("swap to GeLU\tand  more", "crash", None, None), ("hack", "violation", None, 1.0),
               ("big", "timeout", None, None), ("ok", "keep", 0.99, 46000.0))
    for desc, status, metric, mem in history:
        e = Experiment(tag="t", parent="p" * 40, commit=f"{len(rows):07d}" + "f" * 33, description=desc)
        ledger.begin(e)
        e.status, e.metric, e.peak_mem_mb = status, metric, mem
        ledger.finish(e)
        rows.append(e)
    running = Experiment(tag="t", parent="p", commit="r" * 40, description="in flight")
    ledger.begin(running)
    path = tmp_path / "results.tsv"
    write_tsv(path, ledger.experiments("t"), "val_bpb")
    assert path.read_text() == (
        "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
        "0000000\t0.997900\t44.0\tkeep\tbaseline\n"
        "0000001\t0.998500\t44.0\tdiscard\tincrease LR\n"
        "0000002\t0.000000\t0.0\tcrash\tswap to GeLU and more\n"
        "0000003\t0.000000\t0.0\tviolation\thack\n"
        "0000004\t0.000000\t0.0\ttimeout\tbig\n"
        "0000005\t0.990000\t44.9\tkeep\tok\n"
    )
    assert not list(tmp_path.glob(".results.tsv*"))  # no temp file left


# -- the seal chain -----------------------------------------------------------------------------
def _finished(led: Ledger, status: str = "discard", metric: float = 1.0, tag: str = "t") -> Experiment:
    e = new(tag=tag)
    led.begin(e)
    led.add_measurement(e.id, e.commit, 0, metric, {"aux": 7.0}, 1.0, "ok")
    e.status, e.metric = status, metric
    led.finish(e)
    return e


def _raw(led: Ledger, sql: str, *args) -> None:
    """An edit made behind the ledger's back (a hand edit, a daemon with its own connection)."""
    db = sqlite3.connect(led.path)
    db.execute(sql, args)
    db.commit()
    db.close()


def test_a_clean_ledger_verifies_and_is_checked_on_open(ledger):
    a, b = _finished(ledger, "keep", 2.0), _finished(ledger)
    e = new()
    ledger.begin(e)  # running rows are not sealed yet, and that is no break
    assert ledger.verify() == [] and ledger.verify("t") == []
    _raw(ledger, "UPDATE experiments SET status = 'keep' WHERE id = ?", b.id)
    reopened = Ledger(ledger.path)
    assert [(x.kind, x.ids) for x in reopened.integrity] == [("edited", [b.id])]
    reopened.close()


def test_editing_a_finished_row_is_a_break_naming_it(ledger):
    a, b = _finished(ledger, "keep", 2.0), _finished(ledger, "discard", 3.0)
    _raw(ledger, "UPDATE experiments SET status = 'keep' WHERE id = ?", b.id)
    breaks = ledger.verify("t")
    assert [(x.kind, x.table, x.ids) for x in breaks] == [("edited", "experiments", [b.id])]
    assert f"#{b.id} (keep) was edited" in breaks[0].message
    with pytest.raises(LedgerError, match=rf"#{b.id} \(keep\) was edited.*ledger accept --tag t"):
        ledger.require_intact("t")
    assert ledger.verify("other") == []  # another tag's record is not this one's business


def test_a_forged_keep_row_is_a_break(ledger):
    _finished(ledger, "keep", 2.0)
    _raw(ledger, 'INSERT INTO experiments (tag, parent, "commit", description, kind, status, metric) '
                 "VALUES ('t', 'x', 'y', 'forged', 'candidate', 'keep', 0.1)")
    forged = ledger.incumbent("t")
    assert [(x.kind, x.ids) for x in ledger.verify()] == [("unsealed", [forged.id])]


def test_deleting_a_row_is_a_break(ledger):
    a, b = _finished(ledger, "keep", 2.0), _finished(ledger)
    _raw(ledger, "DELETE FROM experiments WHERE id = ?", b.id)
    assert [(x.kind, x.table, x.ids) for x in ledger.verify("t")] == [("deleted", "experiments", [b.id])]


def test_changing_deleting_or_forging_a_measurement_is_a_break(ledger):
    a = _finished(ledger, "keep", 2.0)
    m = ledger.measurements(tag="t")[0]["id"]
    _raw(ledger, "UPDATE measurements SET metric = 0.01 WHERE id = ?", m)
    assert [(x.kind, x.table, x.ids, x.subject) for x in ledger.verify("t")] == [("edited", "measurements", [a.id], m)]
    _raw(ledger, "DELETE FROM measurements WHERE id = ?", m)
    assert [(x.kind, x.subject) for x in ledger.verify("t")] == [("deleted", m)]
    _raw(ledger, 'INSERT INTO measurements (experiment_id, "commit", seed, metric, status) VALUES (?, ?, 9, 0.0, ?)',
         a.id, a.commit, "ok")
    assert sorted(x.kind for x in ledger.verify("t")) == ["deleted", "unsealed"]


def test_a_measurement_added_to_a_finished_row_is_sealed(ledger):
    a = _finished(ledger, "keep", 2.0)
    ledger.add_measurement(a.id, a.commit, 5, 2.1, {}, 1.0, "ok")  # what `confirm` does
    assert ledger.verify() == []


def test_interrupted_rows_are_sealed(ledger):
    e = new()
    ledger.begin(e)
    ledger.interrupt_stale("t")
    assert ledger.verify() == []
    _raw(ledger, "UPDATE experiments SET status = 'keep' WHERE id = ?", e.id)
    assert [x.ids for x in ledger.verify()] == [[e.id]]


def test_editing_or_deleting_seals_is_a_chain_break(ledger):
    rows = [_finished(ledger) for _ in range(3)]
    _raw(ledger, "UPDATE seals SET content = 'x' WHERE seq = 2")
    kinds = {(x.kind, x.table) for x in ledger.verify()}
    assert ("chain", "seals") in kinds
    assert ledger.accept("t") and ledger.verify() == []
    _raw(ledger, "DELETE FROM seals WHERE seq = (SELECT MAX(seq) FROM seals)")
    assert any(x.kind == "chain" and "newest" in x.message for x in ledger.verify())
    assert len(rows) == 3


def test_accept_seals_rows_as_they_are_and_records_it(ledger):
    a, b = _finished(ledger, "keep", 2.0), _finished(ledger)
    c = _finished(ledger)
    _raw(ledger, "UPDATE experiments SET description = 'fixed by hand' WHERE id = ?", b.id)
    _raw(ledger, "DELETE FROM experiments WHERE id = ?", c.id)
    assert len(ledger.verify("t")) == 2
    accepted = ledger.accept("t")
    assert sorted(x.ids[0] for x in accepted) == [b.id, c.id]
    assert ledger.verify() == [] and Ledger(ledger.path).integrity == []
    event = [e for e in ledger.events("t") if e["kind"] == "ledger-accept"]
    assert len(event) == 1 and f"#{b.id}" in event[0]["message"] and f"#{c.id} was deleted" in event[0]["message"]
    _raw(ledger, "UPDATE experiments SET metric = 0 WHERE id = ?", b.id)  # an edit after the acceptance: a break again
    assert [x.ids for x in ledger.verify()] == [[b.id]]


def test_a_v1_file_is_sealed_when_migrated(tmp_path):
    path = tmp_path / "ledger.db"
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    for status in ("keep", "discard", "running"):
        db.execute('INSERT INTO experiments (tag, parent, "commit", description, kind, status, metric, started_at) '
                   "VALUES ('old', 'p', 'c', 'x', 'candidate', ?, 1.0, 1.0)", (status,))
    db.execute('INSERT INTO measurements (experiment_id, "commit", seed, metric, status) VALUES (1, \'c\', 0, 1.0, \'ok\')')
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    led = Ledger(path)
    assert led.schema_version == len(MIGRATIONS) and led.integrity == []
    n = sqlite3.connect(path).execute("SELECT kind, COUNT(*) FROM seals GROUP BY kind ORDER BY kind").fetchall()
    assert n == [("experiment", 2), ("measurement", 1)]  # the running row is sealed when it ends
    assert any(e["kind"] == "ledger-sealed" and "trust on first use" in e["message"] for e in led.events("old"))
    _raw(led, "UPDATE experiments SET status = 'keep' WHERE id = 2")
    assert [x.ids for x in led.verify("old")] == [[2]]


def test_researcher_round_trips_and_rows_from_before_it_keep_their_seals(tmp_path, monkeypatch):
    # A v5 file (before migration 6) whose finished rows are sealed; opened by this version it gains the
    # `researcher` column, every old seal still verifies and old rows read researcher "".
    import autoresearch.ledger as ledger_module

    path = tmp_path / "ledger.db"
    monkeypatch.setattr(ledger_module, "MIGRATIONS", MIGRATIONS[:5])
    old = Ledger(path)
    assert old.schema_version == 5
    for status in ("keep", "discard", "crash"):
        _raw(old, 'INSERT INTO experiments (tag, parent, "commit", description, kind, status, agent, metric, '
                  "started_at) VALUES ('v5', 'p', 'c', 'x', 'candidate', ?, 'mutate', 1.0, 1.0)", status)
    old.accept("v5")  # sealed as they are, by the v5 code path
    assert old.verify() == []
    old.close()
    monkeypatch.setattr(ledger_module, "MIGRATIONS", MIGRATIONS)
    led = Ledger(path)
    assert led.schema_version == 6 == len(MIGRATIONS) and led.integrity == [] and led.verify() == []
    assert [(e.researcher, e.agent) for e in led.experiments("v5")] == [("", "mutate")] * 3
    e = new(tag="v5", agent="claude-code", researcher="claude-code:sonnet#2")
    led.begin(e)
    assert led.get(e.id).researcher == "claude-code:sonnet#2"
    e.status = "discard"
    led.finish(e)
    assert led.get(e.id).researcher == "claude-code:sonnet#2" and led.verify() == []
    _raw(led, "UPDATE experiments SET researcher = 'codex#1' WHERE id = ?", e.id)  # who proposed it is sealed too
    assert [b.ids for b in led.verify("v5")] == [[e.id]]
