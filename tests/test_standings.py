"""Who is the best researcher (standings.py), through the views people and machines read.

A mixed team's rows are written through the real Ledger (begin, measurements, finish) into a real
project, and the real CLI (`status --json`, `status`, `results --json`, `report --html`) runs in a
subprocess on it: the per-researcher figures are the ones the rows imply, and they add up to the totals
and to status's own counts, tokens and cost.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import cli, load_cfg, make_project

from autoresearch import standings, stats
from autoresearch.figures import Spec
from autoresearch.ledger import Experiment, Ledger

TAG = "team"
C = {i: f"{i:x}" * 40 for i in range(10)}  # commit ids c0..c9


def _row(led: Ledger, *, researcher: str, status: str, commit=None, parent=C[0], kind="candidate", agent="",
         runs=(), cost=0.0, tokens=(0, 0), latency=None, evidence=None, metric=None) -> Experiment:
    e = Experiment(tag=TAG, parent=parent, commit=commit, description=f"{researcher or agent} {status}", kind=kind,
                   agent=agent or researcher.split("#")[0].split(":")[0], researcher=researcher, cost_usd=cost,
                   tokens_in=tokens[0], tokens_out=tokens[1], agent_latency_s=latency, evidence=evidence or {})
    led.begin(e)
    for seed, v in enumerate(runs, 1):
        led.add_measurement(e.id, commit, seed, v, {}, 0.5, "ok")
    e.status, e.metric = status, (runs[0] if runs else metric)
    led.finish(e)
    return e


@pytest.fixture(scope="module")
def team_project(tmp_path_factory):
    """A project whose ledger holds a mixed team's run: two claude-code on one model, one codex, one mutate,
    and a row from before teams (researcher '', agent mutate)."""
    root = make_project(tmp_path_factory.mktemp("team") / "p")
    cfg = load_cfg(root)
    led = Ledger(root / ".autoresearch" / "ledger.db")
    session = led.start_session(TAG, cfg.snapshot())
    _row(led, researcher="", status="keep", commit=C[0], parent=None, kind="baseline", runs=(2.50, 2.52, 2.48))
    s1, s2, cx, mu = "claude-code:sonnet#1", "claude-code:sonnet#2", "codex#3", "mutate#4"
    _row(led, researcher=s1, status="keep", commit=C[1], runs=(2.40, 2.42), cost=0.30, tokens=(1000, 200), latency=40)
    _row(led, researcher=s1, status="discard", commit=C[2], parent=C[1], runs=(2.45,), cost=0.25, tokens=(900, 100),
         latency=50)
    _row(led, researcher=s1, status="crash", parent=C[1], cost=0.10, tokens=(500, 0), latency=60)  # agent failed
    _row(led, researcher=s2, status="keep", commit=C[3], parent=C[1], runs=(2.30, 2.30), cost=0.50, tokens=(2000, 400),
         latency=30)
    _row(led, researcher=s2, status="timeout", commit=C[4], parent=C[3], cost=0.20, tokens=(700, 50), latency=35)
    _row(led, researcher=cx, status="violation", parent=C[3], cost=0.40, tokens=(3000, 300), latency=90)
    won = _row(led, researcher=cx, status="discard", commit=C[5], parent=C[1], runs=(2.25,), cost=0.30,
               tokens=(2500, 250), latency=80)  # beat its parent, the best had moved: rebased
    _row(led, researcher=cx, status="keep", commit=C[6], parent=C[3], kind="rebase", runs=(2.20, 2.21),
         evidence={"rebase_of": won.id})
    _row(led, researcher=mu, status="discard", commit=C[7], parent=C[6], runs=(2.6,), latency=0.01)
    _row(led, researcher=mu, status="checks_failed", commit=C[8], parent=C[6], runs=(2.1,), latency=0.02)
    _row(led, researcher=mu, status="interrupted", commit=C[9], parent=C[6], latency=0.03)
    _row(led, researcher="", agent="mutate", status="discard", commit="e" * 40, parent=C[6], runs=(2.7,))  # old row
    led.end_session(session)
    led.close()
    return root


def _pooled_sd() -> float:
    sd, _ = stats.pooled_sd([[2.50, 2.52, 2.48], [2.40, 2.42], [2.30, 2.30], [2.20, 2.21]])
    return sd


def test_status_json_per_researcher_figures_add_up_to_the_totals(team_project):
    r = cli("status", "--json", "--tag", TAG, cwd=team_project)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    team, total = s["researchers"], s["researchers_total"]
    assert [t["researcher"] for t in team] == ["claude-code:sonnet#1", "claude-code:sonnet#2", "codex#3", "mutate#4",
                                               "mutate"]
    for key in ("rows", "proposals", "keeps", "failed", "tokens_in", "tokens_out", "tokens"):
        assert sum(t[key] for t in team) == total[key], key
    assert sum(t["cost_usd"] for t in team) == pytest.approx(total["cost_usd"])
    for status in s["counts"]:  # every status of every row, less the baseline's keep
        assert sum(t["statuses"].get(status, 0) for t in team) == s["counts"][status] - (status == "keep")
    # ... and the totals are status's own
    assert total["rows"] == s["experiments"] - 1 and total["keeps"] == s["counts"]["keep"] - 1
    assert total["cost_usd"] == pytest.approx(s["cost_usd"]) == pytest.approx(2.05)
    assert total["tokens_in"] == s["tokens_in"] == 10600 and total["tokens_out"] == s["tokens_out"] == 1300
    assert total["failed"] == sum(s["counts"].get(k, 0) for k in ("crash", "timeout", "violation", "checks_failed"))

    by = {t["researcher"]: t for t in team}
    one, two, codex, mutate, old = (by[k] for k in ("claude-code:sonnet#1", "claude-code:sonnet#2", "codex#3",
                                                     "mutate#4", "mutate"))
    assert (one["proposals"], one["keeps"], one["failed"], one["statuses"]) == (3, 1, 1, {"keep": 1, "discard": 1,
                                                                                         "crash": 1})
    assert one["keep_rate"] == pytest.approx(1 / 3) and one["latency_s"] == 50 and one["tokens"] == 2700
    assert one["cost_usd"] == pytest.approx(0.65) and one["usd_per_keep"] == pytest.approx(0.65)
    assert (two["proposals"], two["keeps"], two["failed"], two["latency_s"]) == (2, 1, 1, 32.5)
    # codex: a violation, a discard that was rebased, and the rebase kept: two proposals, one keep
    assert (codex["rows"], codex["proposals"], codex["keeps"], codex["failed"]) == (3, 2, 1, 1)
    assert codex["keep_rate"] == 0.5 and codex["latency_s"] == 85 and codex["usd_per_keep"] == pytest.approx(0.70)
    assert (mutate["proposals"], mutate["keeps"], mutate["failed"], mutate["keep_rate"]) == (3, 0, 1, 0.0)
    assert mutate["usd_per_keep"] is None and mutate["effect"] is None and mutate["cost_usd"] == 0
    assert (old["rows"], old["proposals"], old["statuses"]) == (1, 1, {"discard": 1})
    # effect per keep: the keep's runs against its parent's, in metric units and in the pooled noise
    sd = _pooled_sd()
    assert s["noise"]["sd"] == pytest.approx(sd)
    assert one["effect"] == pytest.approx(2.50 - 2.41) and one["effect_sigma"] == pytest.approx(0.09 / sd)
    assert two["effect"] == pytest.approx(2.41 - 2.30) and two["effect_sigma"] == pytest.approx(0.11 / sd)
    assert codex["effect"] == pytest.approx(2.30 - 2.205) and codex["effects"] == 1
    assert total["effect"] == pytest.approx((0.09 + 0.11 + 0.095) / 3) and total["effects"] == 3
    assert total["effect_sigma"] == pytest.approx((0.09 + 0.11 + 0.095) / 3 / sd)
    assert total["keep_rate"] == pytest.approx(3 / 11) and total["proposals"] == 11


def test_status_text_shows_the_table(team_project):
    r = cli("status", "--tag", TAG, cwd=team_project)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("researcher "))
    table = lines[head:head + 7]
    assert table[0].split() == ["researcher", "proposals", "keeps", "rate", "effect/keep", "failed", "latency",
                                "tokens", "cost", "$/keep"]
    assert table[1].split()[:6] == ["claude-code:sonnet#1", "3", "1", "33%", f"+{0.09 / _pooled_sd():.2g}σ", "1"]
    assert table[3].split()[:4] == ["codex#3", "2", "1", "50%"] and table[3].split()[-2:] == ["$0.70", "$0.70"]
    assert table[6].split()[:4] == ["total", "11", "3", "27%"] and "$2.05" in table[6]


def test_results_json_rows_carry_their_researcher(team_project):
    items = json.loads(cli("results", "--json", "--tag", TAG, cwd=team_project).stdout)
    assert [i["researcher"] for i in items] == [""] + ["claude-code:sonnet#1"] * 3 + ["claude-code:sonnet#2"] * 2 + \
        ["codex#3"] * 3 + ["mutate#4"] * 3 + ["mutate"]  # the baseline is nobody's; the old row its agent's


def test_the_html_report_has_the_researchers_table(team_project, tmp_path):
    r = cli("report", "--html", "--tag", TAG, "--out", str(tmp_path), cwd=team_project)
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "report.html").read_text()
    table = page[page.index("<table id=researchers>"):]
    table = table[:table.index("</table>")]
    assert "effect per keep (σ)" in table
    for who in ("claude-code:sonnet#1", "claude-code:sonnet#2", "codex#3", "mutate#4", "mutate", "total"):
        assert f"data-researcher='{who}'" in table
    total = table[table.index("data-researcher='total'"):]
    assert "<td class=num>11</td><td class=num>3</td><td class=num>27%</td>" in total and "$2.05" in total


# -- compute() on its own: the edges ------------------------------------------------------------------------
def _e(i: int, **kw) -> Experiment:
    base = dict(tag="t", parent=None, commit=None, description=str(i), kind="candidate", status="discard", id=i)
    return Experiment(**(base | kw))


def test_nothing_but_a_baseline_gives_no_researcher():
    s = standings.compute([_e(1, kind="baseline", status="keep", commit="a", metric=1.0)], {}, None, 0, Spec())
    assert s.researchers == [] and s.total.rows == 0 and s.total.keep_rate is None and s.lines() == []


def test_without_measured_noise_the_effect_is_in_metric_units():
    rows = [_e(1, kind="baseline", status="keep", commit="a", metric=10.0),
            _e(2, researcher="x#1", status="keep", commit="b", parent="a", metric=8.0),
            _e(3, researcher="x#1", status="keep", commit="c", parent="zzz", metric=7.0)]  # parent unknown
    s = standings.compute(rows, {}, None, 0, Spec(lower=True))
    (x,) = s.researchers
    assert x.effect == 2.0 and x.effect_sigma is None and x.effects == 1 and x.keeps == 2 and not s.noise_measured
    s = standings.compute(rows, {}, 0.0, 3, Spec(lower=True))  # a deterministic metric: sd 0, no σ
    assert s.researchers[0].effect_sigma is None and s.researchers[0].effect == 2.0
    assert "+2" in s.lines()[1].split()[4]
    higher = standings.compute(rows, {}, None, 0, Spec(lower=False))  # higher is better: the same change is worse
    assert higher.researchers[0].effect == -2.0


def test_relative_noise_gives_the_effect_back_in_metric_units():
    rows = [_e(1, kind="baseline", status="keep", commit="a", metric=100.0),
            _e(2, researcher="x#1", status="keep", commit="b", parent="a", metric=80.0)]
    runs = {"a": [(1, 100.0), (2, 100.0)], "b": [(1, 80.0), (2, 80.0)]}
    s = standings.compute(rows, runs, 0.1, 2, Spec(lower=True, relative=True))
    assert s.researchers[0].effect == pytest.approx(20.0)
    assert s.researchers[0].effect_sigma == pytest.approx(math.log(100 / 80) / 0.1)


def test_team_order_is_by_number_then_name():
    rows = [_e(i, researcher=r) for i, r in enumerate(["a#10", "b#2", "zz", "a#1", "", "m"], 1)]
    rows[4].agent = "tool"
    s = standings.compute(rows, {}, None, 0, Spec())
    assert [x.researcher for x in s.researchers] == ["a#1", "b#2", "a#10", "m", "tool", "zz"]


def test_the_cli_reads_a_ledger_from_before_teams(tmp_path):
    # Rows with no researcher (written before migration 6): each counts for its agent.
    root = make_project(tmp_path / "p")
    led = Ledger(Path(root) / ".autoresearch" / "ledger.db")
    _row(led, researcher="", status="keep", commit=C[0], parent=None, kind="baseline", runs=(3.0,))
    for status in ("keep", "discard"):
        _row(led, researcher="", agent="mutate", status=status, commit=C[1] if status == "keep" else C[2],
             runs=(2.0,) if status == "keep" else (3.5,))
    led.close()
    s = json.loads(cli("status", "--json", "--tag", TAG, cwd=root).stdout)
    assert [(t["researcher"], t["proposals"], t["keeps"], t["effect"], t["effect_sigma"]) for t in s["researchers"]] \
        == [("mutate", 2, 1, 1.0, None)]


def test_spent_is_one_researchers_dollars_and_tokens():
    rows = [_e(1, kind="baseline", status="keep", cost_usd=9.0),
            _e(2, researcher="a#1", cost_usd=0.25, tokens_in=100, tokens_out=20),
            _e(3, researcher="b#2", cost_usd=1.0, tokens_in=1000, tokens_out=1),
            _e(4, researcher="a#1", status="crash", cost_usd=0.5, tokens_in=10, tokens_out=0)]
    assert standings.spent(rows, "a#1") == (0.75, 130)
    assert standings.spent(rows, "b#2") == (1.0, 1001) and standings.spent(rows, "c#3") == (0.0, 0)


def test_a_real_run_is_one_researcher_whose_figures_are_the_runs(tmp_path):
    # A real loop through the CLI (the mutate agent, three proposals): status names one researcher whose
    # figures are the run's (rows from today's sequential loop carry no researcher: they count for the agent;
    # the driver of issue 14 labels them mutate#1).
    root = make_project(tmp_path / "p")
    r = cli("run", "--agent", "mutate", "--max-experiments", "3", "--tag", "real", "--no-live", cwd=root)
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads(cli("status", "--json", "--tag", "real", cwd=root).stdout)
    (one,) = s["researchers"]
    assert one["researcher"] in ("mutate", "mutate#1") and one["proposals"] == 3 == s["experiments"] - 1
    assert one == s["researchers_total"] | {"researcher": one["researcher"]}
    assert one["keeps"] == s["counts"].get("keep", 0) - 1 and one["cost_usd"] == 0 and one["latency_s"] is not None
    kept = [e for e in json.loads(cli("results", "--json", "--tag", "real", cwd=root).stdout) if e["status"] == "keep"]
    assert len(kept) >= 2, kept  # the baseline and at least one keep (mutate, seed 0, on this project)
    # greedy, no noise measured: the effect is in metric units, the mean gain of each keep over the one before
    gains = [a["metric"] - b["metric"] for a, b in zip(kept, kept[1:])]
    assert one["effect"] == pytest.approx(sum(gains) / len(gains)) and one["effect_sigma"] is None
