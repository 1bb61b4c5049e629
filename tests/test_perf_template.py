"""The `perf` template through the real loop: a scripted agent makes one real speed-up (kept), one
faster change that breaks a test (`checks_failed`, not kept) and one faster change that allocates
more than `metric.bounds` allows (discarded). Real git, real processes, the template's own
benchmark and test suite.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from autoresearch import agents
from autoresearch.cli import main as cli
from autoresearch.config import load
from autoresearch.ledger import Ledger
from autoresearch.driver import Driver, Limits
from autoresearch.scaffold import init_project

# The scripted agent: applies the k-th patch, each a set of top-level functions that replace
# (by name) those of tinydiff.py, and describes it. Its state is a counter file.
AGENT = r'''
import ast, json, os, sys
patches, counter = json.load(open(sys.argv[1])), sys.argv[2]
k = int(open(counter).read()) if os.path.exists(counter) else 0
open(counter, "w").write(str(k + 1))
patch = patches[k]
text = open("tinydiff.py").read()
for node in ast.parse(patch["code"]).body:
    new = ast.get_source_segment(patch["code"], node) + "\n"
    old = next((n for n in ast.parse(text).body if getattr(n, "name", None) == node.name), None)
    lines = text.splitlines(keepends=True)
    text = (text + "\n\n" + new) if old is None else "".join(lines[:old.lineno - 1]) + new + "".join(lines[old.end_lineno:])
open("tinydiff.py", "w").write(text)
open(os.environ["AUTORESEARCH_DESCRIPTION_FILE"], "w").write(patch["description"])
'''

MYERS = '''
def _edit_script(a: list[str], b: list[str]) -> list[tuple[str, str]]:
    # Myers' O(ND) algorithm in linear space: find the middle snake of a shortest path,
    # then solve the two halves around it the same way.
    ops: list[tuple[str, str]] = []
    _solve(a, 0, len(a), b, 0, len(b), ops)
    return ops


def _solve(a, a0, a1, b, b0, b1, ops):
    while a0 < a1 and b0 < b1 and a[a0] == b[b0]:
        ops.append((" ", a[a0]))
        a0 += 1
        b0 += 1
    tail = 0
    while a0 < a1 and b0 < b1 and a[a1 - 1] == b[b1 - 1]:
        a1 -= 1
        b1 -= 1
        tail += 1
    if a0 == a1:
        ops.extend(("+", b[j]) for j in range(b0, b1))
    elif b0 == b1:
        ops.extend(("-", a[i]) for i in range(a0, a1))
    else:
        x, y, u, v = _middle_snake(a, a0, a1, b, b0, b1)
        _solve(a, a0, x, b, b0, y, ops)
        ops.extend((" ", a[i]) for i in range(x, u))
        _solve(a, u, a1, b, v, b1, ops)
    ops.extend((" ", a[i]) for i in range(a1, a1 + tail))


def _middle_snake(a, a0, a1, b, b0, b1):
    n, m = a1 - a0, b1 - b0
    delta = n - m
    odd = delta & 1
    max_d = (n + m + 1) // 2
    off = max_d + 1
    vf = [0] * (2 * max_d + 3)
    vb = [0] * (2 * max_d + 3)
    for d in range(max_d + 1):
        for k in range(-d, d + 1, 2):
            if k == -d or (k != d and vf[off + k - 1] < vf[off + k + 1]):
                x = vf[off + k + 1]
            else:
                x = vf[off + k - 1] + 1
            y = x - k
            x0, y0 = x, y
            while x < n and y < m and a[a0 + x] == b[b0 + y]:
                x += 1
                y += 1
            vf[off + k] = x
            if odd and delta - (d - 1) <= k <= delta + (d - 1) and x + vb[off + delta - k] >= n:
                return a0 + x0, b0 + y0, a0 + x, b0 + y
        for k in range(-d, d + 1, 2):
            if k == -d or (k != d and vb[off + k - 1] < vb[off + k + 1]):
                x = vb[off + k + 1]
            else:
                x = vb[off + k - 1] + 1
            y = x - k
            x0, y0 = x, y
            while x < n and y < m and a[a1 - 1 - x] == b[b1 - 1 - y]:
                x += 1
                y += 1
            vb[off + k] = x
            if not odd and -d <= delta - k <= d and x + vf[off + delta - k] >= n:
                return a0 + n - x, b0 + m - y, a0 + n - x0, b0 + m - y0
    raise AssertionError("unreachable: the two searches always meet")
'''

# Faster still, but not always a *shortest* script: the test suite catches it.
GREEDY = '''
def _edit_script(a: list[str], b: list[str]) -> list[tuple[str, str]]:
    # Fast path: match each new line with the next equal line among the next few old
    # lines, instead of searching for a longest common subsequence.
    ops: list[tuple[str, str]] = []
    i, n = 0, len(a)
    for line in b:
        for p in range(i, min(i + 8, n)):
            if a[p] == line:
                ops.extend(("-", a[q]) for q in range(i, p))
                ops.append((" ", line))
                i = p + 1
                break
        else:
            ops.append(("+", line))
    ops.extend(("-", line) for line in a[i:])
    return ops
'''

# Correct and faster still, but it keeps a bit-row per line: about twice the allocations.
BITPARALLEL = '''
def _edit_script(a: list[str], b: list[str]) -> list[tuple[str, str]]:
    # Bit-parallel LCS (Allison-Dix, Hyyro): a whole row of the LCS table is one Python
    # integer, advanced with four big-integer operations per line of `a`. Every row is
    # kept so the script can be read back from the table without a second search.
    n, m = len(a), len(b)
    masks: dict[str, int] = {}
    for j, line in enumerate(b):
        masks[line] = masks.get(line, 0) | (1 << j)
    full = (1 << m) - 1
    v = full
    rows = [v]
    for line in a:
        u = v & masks.get(line, 0)
        v = ((v + u) | (v - u)) & full
        rows.append(v)
    ops: list[tuple[str, str]] = []
    i, j = n, m
    while i > 0 and j > 0:
        if a[i - 1] == b[j - 1]:
            ops.append((" ", a[i - 1]))
            i -= 1
            j -= 1
        elif (~rows[i - 1] & ((1 << j) - 1)).bit_count() == (~rows[i] & ((1 << j) - 1)).bit_count():
            ops.append(("-", a[i - 1]))
            i -= 1
        else:
            ops.append(("+", b[j - 1]))
            j -= 1
    ops.extend(("-", a[k]) for k in range(i - 1, -1, -1))
    ops.extend(("+", b[k]) for k in range(j - 1, -1, -1))
    ops.reverse()
    return ops
'''

PATCHES = [
    {"description": "Myers O(ND) diff in linear space instead of the quadratic LCS table", "code": MYERS},
    {"description": "greedy look-ahead matching instead of a longest common subsequence", "code": GREEDY},
    {"description": "bit-parallel LCS, one big integer per table row", "code": BITPARALLEL},
]


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    root = tmp_path / "perf"
    init_project(root, "perf")
    return root


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_template_stands_alone(project: Path):
    bench = _run([sys.executable, "bench.py"], project)
    assert bench.returncode == 0, bench.stderr
    values = dict(line.split(": ") for line in bench.stdout.splitlines())
    assert float(values["time_ms"]) > 0 and float(values["alloc_kb"]) > 100  # the quadratic table is big
    tests = _run([sys.executable, "run_tests.py"], project)
    assert tests.returncode == 0 and " passed, 0 failed" in tests.stdout, tests.stdout
    cfg = load(project)
    assert cfg.experiment.checks == "python run_tests.py" and cfg.metric.bounds == {"alloc_kb": ["+10%"]}
    assert cfg.is_protected("tests/test_tinydiff.py") and cfg.is_editable("tinydiff.py")


def test_the_runner_fails_on_a_broken_library(project: Path):
    (project / "tinydiff.py").write_text((project / "tinydiff.py").read_text().replace(
        'ops.append(("-", a[i]))\n            i += 1', 'ops.append(("-", a[i] + " "))\n            i += 1'))
    tests = _run([sys.executable, "run_tests.py"], project)
    assert tests.returncode == 1
    assert re.match(r"\d+ passed, [1-9]\d* failed in ", tests.stdout.splitlines()[-1]), tests.stdout[-300:]
    assert "FAILED test_tinydiff.py::" in tests.stdout


def test_a_speed_up_is_kept_a_broken_one_fails_the_checks_a_hungry_one_is_discarded(project: Path, tmp_path: Path,
                                                                                      capsys):
    (tmp_path / "patches.json").write_text(json.dumps(PATCHES))
    (tmp_path / "agent.py").write_text(AGENT)
    command = f"{sys.executable} {tmp_path / 'agent.py'} {tmp_path / 'patches.json'} {tmp_path / 'counter'}"
    cfg = load(project, {"agent": {"name": "command", "command": command}})
    outcome = Driver(cfg, "t", agents.create("command", cfg), limits=Limits(max_experiments=3)).run()
    assert outcome.experiments == 3

    base, fast, broken, hungry = Ledger(project / ".autoresearch" / "ledger.db").experiments("t")
    assert [e.status for e in (base, fast, broken, hungry)] == ["keep", "keep", "checks_failed", "discard"], \
        [(e.status, e.reason) for e in (base, fast, broken, hungry)]

    # The baseline passed its checks too: a broken suite would have stopped the run at once.
    assert base.evidence["guards"]["checks"]["status"] == "passed"
    # The real speed-up: much faster, and within the allocation bound (far below, in fact).
    assert fast.metric < base.metric / 3, (base.metric, fast.metric)
    assert fast.metrics["alloc_kb"] < base.metrics["alloc_kb"]
    assert fast.evidence["guards"]["checks"]["status"] == "passed"
    assert [b["ok"] for b in fast.evidence["guards"]["bounds"]] == [True]

    # Faster again, so the policy would keep it, but it fails the suite: checks_failed, metric on record.
    assert broken.metric is not None and broken.metric < fast.metric
    assert "checks `python run_tests.py` exited 1" in broken.reason
    assert "FAILED test_tinydiff.py::test_shortest" in broken.reason + broken.log_tail
    checks = broken.evidence["guards"]["checks"]
    logs = [Path(a["log"]) for a in checks["attempts"]]  # a failing suite is run again once (checks_retries)
    assert [lg.name for lg in logs] == [f"{broken.id:05d}.checks.log", f"{broken.id:05d}.checks.retry1.log"]
    assert Path(checks["log"]) == logs[-1] and all("FAILED" in lg.read_text() for lg in logs)

    # Faster again and correct, but it allocates more than 10% over the incumbent: discarded on the bound,
    # before the (slower) checks ever ran.
    assert hungry.metric < fast.metric
    assert hungry.metrics["alloc_kb"] > 1.1 * fast.metrics["alloc_kb"]
    assert "alloc_kb" in hungry.reason and "+10%" in hungry.reason
    assert hungry.evidence["guards"]["bounds"][0]["ok"] is False and "checks" not in hungry.evidence["guards"]

    # The branch holds the speed-up and nothing else.
    tip = subprocess.run(["git", "rev-parse", "autoresearch/t"], cwd=project, capture_output=True, text=True)
    assert tip.stdout.strip() == fast.commit == outcome.incumbent.commit
    shown = subprocess.run(["git", "show", "autoresearch/t:tinydiff.py"], cwd=project, capture_output=True, text=True)
    assert "_middle_snake" in shown.stdout and "bit_count" not in shown.stdout

    # Every metric of every experiment is in `results --json` and the original's results.tsv.
    capsys.readouterr()
    assert cli(["results", "--json", "-C", str(project), "--tag", "t"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [sorted(r["metrics"]) for r in rows] == [["alloc_kb"]] * 4
    assert rows[3]["metrics"]["alloc_kb"] == hungry.metrics["alloc_kb"]
    tsv = (project / "results.tsv").read_text().splitlines()
    assert [line.split("\t")[3] for line in tsv[1:]] == ["keep", "keep", "checks_failed", "discard"]

    # `confirm` re-runs the start and the best on fresh seeds and tests them on the log scale, the
    # template's metric.noise = "relative": the improvement comes back in milliseconds.
    capsys.readouterr()
    assert cli(["confirm", "-C", str(project), "--tag", "t", "--runs", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["noise"].startswith("relative") and "log" in out["test"]
    assert 0 < out["interval"][0] < out["improvement"] < out["interval"][1] < out["baseline"]["mean"], out
    assert out["improvement_pct"] > 60  # the quadratic table against Myers: several times faster
    assert cli(["confirm", "-C", str(project), "--tag", "t", "--runs", "2"]) == 0
    assert "of run-to-run noise (sd " in (text := capsys.readouterr().out) and " of log(metric))" in text, text
