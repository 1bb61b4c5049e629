"""Honest degradation: without the sandbox the run says once which protections are off, every row
it makes is marked unverified, and status (text and --json), results (--json and the table),
report.md, report.html and finalize's pull-request text say so. With the sandbox on, none does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import ScriptedAgent, cli, git, ledger_of, make_project, rows_of, set_x

from autoresearch.config import load
from autoresearch.driver import Driver, Limits
from autoresearch.sandbox import probe


def _run(root: Path, sandbox: str) -> list:
    cfg = load(root, {"experiment": {"sandbox": sandbox}})
    notes: list[str] = []
    Driver(cfg, "t", ScriptedAgent([set_x(2.0), set_x(3.5), set_x(1.5)]), limits=Limits(max_experiments=3),
         reporter=lambda kind, **d: notes.append(d["message"]) if kind == "note" else None).run()
    return notes


def _views(root: Path, tmp: Path) -> dict[str, str]:
    out = {"status": cli("status", cwd=root).stdout, "status_json": cli("status", "--json", cwd=root).stdout,
           "results": cli("results", cwd=root).stdout, "results_json": cli("results", "--json", cwd=root).stdout}
    assert cli("report", "--out", str(tmp / "rep"), cwd=root).returncode == 0
    assert cli("report", "--html", "--out", str(tmp / "rep"), cwd=root).returncode == 0
    out["report_md"] = (tmp / "rep" / "report.md").read_text()
    out["report_html"] = (tmp / "rep" / "report.html").read_text()
    fin = cli("finalize", "--summary", str(tmp / "pr.md"), cwd=root)
    assert fin.returncode == 0, fin.stderr
    out["finalize"] = (tmp / "pr.md").read_text()
    return out


def test_without_the_sandbox_every_row_is_unverified_and_every_view_says_so(tmp_path):
    root = make_project(tmp_path / "proj")
    notes = _run(root, "none")
    said = [n for n in notes if n.startswith("sandbox:")]
    assert len(said) == 1, notes  # said once, plainly, with the list of what is off
    assert "Protections off: runs can read and write the ledger" in said[0] and "marked unverified" in said[0]
    led = ledger_of(root)
    try:
        assert [ev["message"] for ev in led.events("t") if ev["kind"] == "sandbox"] == said
    finally:
        led.close()
    rows = rows_of(root, "t")
    assert [e.status for e in rows] == ["keep", "keep", "discard", "keep"]
    assert all(e.unverified == 'experiment sandbox off: experiment.sandbox = "none"' for e in rows), \
        [e.unverified for e in rows]

    v = _views(root, tmp_path)
    assert "UNVERIFIED: 4 of 4 experiments were measured without the sandbox; 2 of 2 kept changes" in v["status"]
    assert "[unverified]" in v["status"]  # the best itself
    s = json.loads(v["status_json"])
    assert s["unverified"] == 4 and s["unverified_kept"] == 2 and s["best_unverified"].startswith("experiment sandbox")
    assert all(r["unverified"] for r in json.loads(v["results_json"]))
    table = v["results"].splitlines()
    assert all(line.split()[2].endswith("*") for line in table[1:5]), table
    assert table[-1].startswith("* unverified: measured without the sandbox")
    assert "| **Unverified** | UNVERIFIED: 4 of 4 experiments" in v["report_md"]
    assert v["report_md"].count("**(unverified)**") == 3  # the baseline and the two kept changes
    assert "<p class=unverified id=unverified>UNVERIFIED: 4 of 4" in v["report_html"]
    assert v["report_html"].count("<span class=unverified>unverified:") == 2  # each kept change's facts
    assert "**2 of the kept changes were measured without the sandbox: unverified**" in v["finalize"]
    assert "unverified: experiment sandbox off" in git(root, "log", "-1", "--format=%B", "autoresearch/t-final")


@pytest.mark.skipif(not probe()[0], reason="bubblewrap cannot run here")
def test_with_the_sandbox_no_row_is_unverified_and_no_view_says_so(tmp_path):
    root = make_project(tmp_path / "proj")
    notes = _run(root, "bwrap")
    assert not any("Protections off" in n for n in notes)
    assert all(e.unverified == "" for e in rows_of(root, "t"))
    v = _views(root, tmp_path)
    for name, text in v.items():
        text = re.sub(r"<style>.*?</style>", "", text, flags=re.S)  # the stylesheet names the class
        assert "unverified" not in text.lower() or name.endswith("_json"), name
    assert all(r["unverified"] == "" for r in json.loads(v["results_json"]))
    assert json.loads(v["status_json"])["unverified"] == 0
