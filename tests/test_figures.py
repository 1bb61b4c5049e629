"""One improvement figure, one numbering, every decision explained (issue 13, items 2-4).

Each test drives the real CLI (a real process) on a real git repository and a real SQLite
ledger; histories are built with tests/runbuilder.py (real commits, rows and measurements),
`autoresearch confirm` runs for real. Each fails on the code before figures.py: there,
`status` printed the baseline's single run next to the best's mean, finalize claimed an
improvement confirm had refuted, and report.md counted rows from 0.
"""

from __future__ import annotations

import html
import io
from pathlib import Path

from conftest import ScriptedAgent, cli, git, make_project, set_x
from runbuilder import RunBuilder

from autoresearch.config import load
from autoresearch.ledger import Experiment
from autoresearch.live import PlainReporter
from autoresearch.driver import Driver, Limits


def _improvement_line(text: str) -> str:
    line = next((ln for ln in text.splitlines() if ln.startswith("improvement: ")), None)
    assert line is not None, f"no `improvement:` line in:\n{text}"
    return line[len("improvement: "):]


def mixed_up_night(tmp_path: Path) -> tuple[RunBuilder, Experiment]:
    """The issue's numbers: the baseline's first run 0.260468 and its calibration run 0.182532 (mean
    0.2215); the best kept on two runs with mean 0.138046 (its first run 0.120193)."""
    b = RunBuilder(tmp_path / "proj", baseline=0.260468)
    led, base = b.ledger, b.baseline
    led.add_measurement(base.id, base.commit, 42, 0.260468, {}, 30.0, "ok")
    led.add_measurement(base.id, base.commit, 43, 0.182532, {}, 30.0, "ok")
    best = b.experiment({"WIDTH": 320}, "width 320", "keep", 0.120193,
                        evidence={"runs": 2, "mean": 0.138046, "p_value": 0.04})
    led.add_measurement(best.id, best.commit, 42, 0.120193, {}, 30.0, "ok")
    led.add_measurement(best.id, best.commit, 44, 0.155899, {}, 30.0, "ok")
    worse = b.experiment({"DROPOUT": 0.2}, "more dropout", "discard", 0.19, reason="not better than #2 (0.19 vs 0.138)")
    led.add_measurement(worse.id, worse.commit, 42, 0.19, {}, 30.0, "ok")
    return b, best


def test_every_view_shows_the_same_figure_from_the_same_definition(tmp_path: Path):
    b, best = mixed_up_night(tmp_path)
    b.close()
    root = b.root
    status = cli("status", cwd=root)
    assert status.returncode == 0, status.stderr
    assert "0.260468" not in status.stdout  # the baseline's first run alone, next to the best's mean of two
    figure = _improvement_line(status.stdout)
    # Both means, with their run counts: the baseline's is the mean of its two runs, not its first run.
    assert figure.startswith("score 0.221 (2 runs) → 0.138 (2 runs), -37.68%; improvement +0.083"), figure
    assert "best score 0.138 (2 runs)" in status.stdout
    assert "noise: sd 0.043, 2 degrees of freedom, pooled over 2 commit(s)" in status.stdout  # what it rests on

    results = cli("results", cwd=root).stdout
    assert _improvement_line(results) == figure
    watch = cli("watch", "--once", "--plain", cwd=root).stdout
    assert _improvement_line(watch) == figure
    assert "best score 0.138 (2 runs)" in watch.splitlines()[0]
    out = tmp_path / "out"
    assert cli("report", "--out", str(out), cwd=root).returncode == 0
    md = (out / "report.md").read_text()
    assert f"| Improvement | {figure} (lower is better) |" in md
    assert "| Baseline score | 0.221 (2 runs" in md and "| Best score | 0.138 (2 runs" in md
    assert cli("report", "--html", "--out", str(out), cwd=root).returncode == 0
    assert html.escape(figure) in (out / "report.html").read_text()
    fin = cli("finalize", "--branch", "pr/x", cwd=root)
    assert fin.returncode == 0, fin.stderr
    assert fin.stdout.startswith("## autoresearch/t: score 0.221 → 0.138 (-37.68%, lower is better)")
    assert f"Improvement: {figure}" in fin.stdout

    # The agents' context and the live lines, from the loop itself.
    stream = io.StringIO()
    driver = Driver(load(root), "t", ScriptedAgent(), reporter=PlainReporter("score", stream))
    history = driver.team[0].context(root, None, [], []).history_summary()
    assert f"Improvement: {figure}" in history and "Current best: 0.138 over 2 run(s)" in history
    driver.session.after_record(driver.ledger.get(best.id + 1))
    assert "best=0.138 " in stream.getvalue()


def refuted_night(tmp_path: Path) -> RunBuilder:
    """A keep whose one lucky run (0.975 against 1.0) the fresh runs of `confirm` do not bear out:
    the project's train.py prints `score: 1.0` whatever the change."""
    b = RunBuilder(tmp_path / "proj", baseline=1.0)
    led, base = b.ledger, b.baseline
    led.add_measurement(base.id, base.commit, 42, 1.0, {}, 1.0, "ok")
    led.add_measurement(base.id, base.commit, 43, 1.01, {}, 1.0, "ok")
    best = b.experiment({"WIDTH": 320}, "width 320", "keep", 0.975, evidence={"runs": 1, "p_value": 0.0256})
    led.add_measurement(best.id, best.commit, 42, 0.975, {}, 1.0, "ok")
    b.close()
    return b


def test_finalize_refuses_to_claim_what_confirm_refuted(tmp_path: Path):
    b = refuted_night(tmp_path)
    root = b.root
    conf = cli("confirm", "--runs", "3", cwd=root)
    assert conf.returncode == 0, conf.stderr
    assert "the interval includes no improvement" in conf.stdout

    refused = cli("finalize", "--branch", "pr/x", cwd=root)
    assert refused.returncode == 1
    assert "refuted the improvement" in refused.stderr and "--force" in refused.stderr
    assert git(root, "branch", "--list", "pr/x") == ""

    forced = cli("finalize", "--branch", "pr/x", "--force", cwd=root)
    assert forced.returncode == 0, forced.stderr
    head = forced.stdout.splitlines()[0]
    assert "no confirmed improvement" in head and "refuted" in head
    assert "score 1 → 0.975" not in forced.stdout and "-2.50%" not in head
    assert "which `confirm`'s fresh runs did not bear out" in forced.stdout  # the per-change table is not a claim
    assert "**Refuted.** Improvement: score 1.0000 (3 runs) → 1.0000 (3 runs)" in forced.stdout

    status = cli("status", cwd=root).stdout  # and status says the same
    assert "REFUTED by `autoresearch confirm`" in _improvement_line(status)
    assert "score 1.0000 (3 runs) → 1.0000 (3 runs)" in _improvement_line(status)  # confirm's fresh runs are the figure


def test_one_numbering_the_ledger_id(tmp_path: Path):
    b = RunBuilder(tmp_path / "proj", baseline=1.0)
    for i in range(3):  # another tag's rows first: ids are shared across tags, positions are not
        other = Experiment(tag="other", parent=None, commit=None, description=f"other {i}")
        b.ledger.begin(other)
        other.status = "crash"
        b.ledger.finish(other)
    lr = b.experiment({"LEARNING_RATE": 0.04}, "raise the learning rate", "keep", 0.99)
    drop = b.experiment({"DROPOUT": 0.2}, "more dropout", "discard", 0.995, reason="not better than the best")
    crash = b.experiment({"DEPTH": 12}, "depth 12", "crash", None, reason="exit code 1")
    width = b.experiment({"WIDTH": 320}, "width 320", "keep", 0.98)
    b.close()
    root = b.root
    assert lr.id == 5  # the 2nd row of tag t: a position would say 1 (from 0) or 2 (from 1)

    out = tmp_path / "out"
    assert cli("report", "--out", str(out), "--tag", "t", cwd=root).returncode == 0
    md = (out / "report.md").read_text()
    kept = md.split("## Kept changes")[1].split("\n## ")[0]
    for e in (lr, width):
        assert f"\n| {e.id} | `{e.short}` |" in kept
    assert f"  - #{crash.id} `{crash.short}` depth 12 — exit code 1" in md
    everything = md.split("## All experiments")[1].split("## Failures")[0]
    results = cli("results", "--tag", "t", cwd=root).stdout.splitlines()
    for e in (lr, drop, crash, width):
        assert f"\n| {e.id} | `{e.short}` | {e.status} |" in everything
        assert any(ln.split()[:3] == [str(e.id), e.short, e.status] for ln in results), results
        diff = cli("diff", str(e.id), cwd=root)
        assert diff.returncode == 0 and e.description in diff.stderr
        assert diff.stdout.rstrip("\n") == e.patch.rstrip("\n")  # `diff N` is experiment N
    # Every verdict's reason where people look: report.md and `results`.
    assert "| not better than the best | more dropout |" in everything
    assert any(ln.split()[:3] == [str(drop.id), drop.short, "discard"] and ln.rstrip().endswith(
        "not better than the best") for ln in results)
    assert cli("report", "--html", "--out", str(out), "--tag", "t", cwd=root).returncode == 0
    page = (out / "report.html").read_text()
    assert f"<td class=num>{lr.id}</td><td><code>{lr.short}</code>" in page
    fin = cli("finalize", "--tag", "t", "--branch", "pr/n", cwd=root)
    assert fin.returncode == 0, fin.stderr
    assert f"\n| {lr.id} | raise the learning rate |" in fin.stdout and f"\n| {width.id} | width 320 |" in fin.stdout
    watch = cli("watch", "--once", "--plain", "--tag", "t", cwd=root).stdout
    assert f"#{drop.id:<4} discard" in watch


def test_identical_code_proposed_again_adds_runs_to_its_measurement(tmp_path: Path):
    root = make_project(tmp_path / "proj")
    agent = ScriptedAgent([set_x(5.0), set_x(5.0)])  # worse, so discarded: the parent stays the same
    Driver(load(root), "t", agent, limits=Limits(max_experiments=2)).run()
    from conftest import ledger_of

    led = ledger_of(root)
    rows = led.experiments("t")
    first, again = rows[1], rows[2]
    assert (first.status, again.status) == ("discard", "discard")
    assert again.commit == first.commit and again.evidence["same_code_as"] == first.id
    runs = [m for m in led.measurements(commit=first.commit) if m["status"] == "ok"]
    assert sorted(m["experiment_id"] for m in runs) == [first.id, again.id]
    assert len({m["seed"] for m in runs}) == 2  # a fresh seed: a new draw of the noise, not a repeat
    assert any(ev["kind"] == "same code" and f"#{first.id}" in ev["message"] for ev in led.events("t"))


def test_the_chart_numbers_by_ledger_id_and_puts_a_fast_failure_in_its_lane(tmp_path: Path):
    from autoresearch.ledger import Ledger
    from autoresearch.report import chart_groups, progress_png

    led = Ledger(tmp_path / "ledger.db")

    def record(tag: str, description: str, status: str, metric, kind: str = "candidate") -> Experiment:
        e = Experiment(tag=tag, parent=None, commit=None, description=description, kind=kind)
        led.begin(e)
        e.status, e.metric = status, metric
        led.finish(e)
        return e

    record("other", "another tag's row", "crash", None)
    base = record("t", "baseline", "keep", 1.0, kind="baseline")
    fast = record("t", "skip the work", "checks_failed", 0.01)  # fast because it is wrong: the tests failed
    gain = record("t", "real gain", "keep", 0.9)
    rows = led.experiments("t")
    done, scored, lanes = chart_groups(rows)
    assert [x for x, _ in done] == [base.id, fast.id, gain.id] == [2, 3, 4]  # ledger ids, not positions
    assert [(x, e.status) for x, e, _ in scored] == [(base.id, "keep"), (gain.id, "keep")]
    assert [(x, e.status) for x, e in lanes] == [(fast.id, "checks_failed")]  # its lane, not "off scale"
    assert progress_png(rows, tmp_path / "p.png", "score", True).stat().st_size > 0


def test_finalize_text_gives_times_for_people_and_the_evaluation_command(tmp_path: Path):
    from autoresearch.finalize import finalize

    b = RunBuilder(tmp_path / "proj", baseline=1.0)
    b.experiment({"WIDTH": 320}, "width 320", "keep", 0.98, wall_s=16.4,
                 evidence={"runs": 2, "mean": 0.98, "interval": [0.004, 0.036], "confidence": 0.9})
    snap = b.cfg.snapshot()
    snap["metric"] = dict(snap["metric"], command="python evaluate.py")  # the metric comes from metric.command
    b.ledger.start_session("t", snap)
    done = finalize(b.root, "t", b.ledger, branch="pr/t")
    text = done.summary
    assert "Reproduce: `git checkout pr/t && python train.py && python evaluate.py` (the evaluation command " \
           "prints `score`)" in text
    assert "0.00 h" not in text and "of which the experiments' own runs 5m 46s" in text  # 330 s + 16.4 s
    assert "90% CI [+0.004, +0.036]" in text and "interval=2" not in text  # evidence as values, not list lengths


def test_an_earlier_run_of_the_same_code_is_not_evidence_about_its_reference():
    """Pooled runs of identical code are the candidate's runs; they must not also move the level
    of the incumbent it is judged against (levels.py), or the test would compare them with themselves."""
    from autoresearch import levels

    rows = [Experiment(tag="t", parent=None, commit="A", description="baseline", kind="baseline", status="keep", id=1),
            Experiment(tag="t", parent="A", commit="B", description="hidden 16", status="discard", id=2),
            Experiment(tag="t", parent="A", commit="B", description="hidden 16 again", status="running", id=3)]
    runs = {1: [("A", 1.0), ("A", 1.02)], 2: [("B", 0.9)], 3: [("B", 0.91)]}
    found, _ = levels.estimate(rows, runs, 0.02, True, judged_id=3)
    assert found["A"].mean == __import__("pytest").approx(1.01)  # the baseline's own runs alone
    other, _ = levels.estimate(rows, runs, 0.02, True, judged_id=None)
    assert other["A"].mean < 1.009  # a discarded child of other code is evidence about its parent, as before
