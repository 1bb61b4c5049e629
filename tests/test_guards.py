"""Guards (guards.py) through the real loop: the checks command (failing, hanging with a grandchild
that ignores SIGTERM, only paid for by would-be keeps, scrubbed environment) and bounds on secondary
metrics; plus the strict validation of `metric.bounds`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoresearch import agents
from autoresearch.bounds import parse_bound
from autoresearch.config import load
from autoresearch.errors import AutoresearchError, ConfigError
from autoresearch.guards import check_bounds
from autoresearch.ledger import Ledger
from autoresearch.driver import Driver, Limits
from autoresearch.procs import marked_pids
from autoresearch.session import marker_prefix

RUN = """SCORE = 1.0
MEM = 100.0
BROKEN = False
HANG = False
QUIET = False
print(f"score: {SCORE}")
if not QUIET:
    print(f"mem_mb: {MEM}")
"""

# The guard: fails loudly when run.py says BROKEN, hangs (with a grandchild that ignores SIGTERM)
# when it says HANG, and reports what it can see of the environment.
CHECK = """import os, subprocess, sys, time
text = open("run.py").read()
print("secret:", os.environ.get("GUARD_SECRET", "<unset>"), "flag:", os.environ.get("AUTORESEARCH_CHECKS"))
if "HANG = True" in text:
    subprocess.Popen([sys.executable, "-c",
                      "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
    time.sleep(120)
if "BROKEN = True" in text:
    for i in range(80):
        print(f"noise line {i}")
    print("AssertionError: BROKEN must be False")
    sys.exit(3)
print("all good")
"""

TOML = """[experiment]
run = "python run.py"
budget_s = 5
timeout_s = 30
grace_s = 1
editable = ["run.py"]
protected = ["check.py"]
checks = "python check.py"
checks_timeout_s = 2

[metric]
name = "score"
direction = "max"
record = ["mem_mb"]
memory = ""
"""

# The scripted agent: sets the constants of run.py given by the k-th edit.
AGENT = r"""
import json, os, re, sys
edits, counter = json.load(open(sys.argv[1])), sys.argv[2]
k = int(open(counter).read()) if os.path.exists(counter) else 0
open(counter, "w").write(str(k + 1))
text = open("run.py").read()
for name, value in edits[k].items():
    text = re.sub(rf"^{name} = .*$", f"{name} = {value!r}", text, flags=re.M)
open("run.py", "w").write(text)
open(os.environ["AUTORESEARCH_DESCRIPTION_FILE"], "w").write(json.dumps(edits[k]))
"""


def make_project(root: Path, toml: str = TOML, run: str = RUN, files: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True)
    for rel, text in (files or {}).items():
        (root / rel).write_text(text)
    (root / "run.py").write_text(run)
    (root / "check.py").write_text(CHECK)
    (root / "autoresearch.toml").write_text(toml)
    (root / "program.md").write_text("Raise the score.\n")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start"], cwd=root, check=True)
    return root


def run_loop(root: Path, tmp: Path, edits: list[dict]) -> list:
    (tmp / "edits.json").write_text(json.dumps(edits))
    (tmp / "agent.py").write_text(AGENT)
    command = f"{sys.executable} {tmp / 'agent.py'} {tmp / 'edits.json'} {tmp / 'counter'}"
    cfg = load(root, {"agent": {"name": "command", "command": command}})
    Driver(cfg, "g", agents.create("command", cfg), limits=Limits(max_experiments=len(edits))).run()
    return Ledger(root / ".autoresearch" / "ledger.db").experiments("g")


def tip(root: Path) -> str:
    return subprocess.run(["git", "rev-parse", "autoresearch/g"], cwd=root, capture_output=True, text=True).stdout.strip()


# ---------------------------------------------------------------- the checks command

def test_checks_gate_keeps_and_only_would_be_keeps_pay_for_them(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("GUARD_SECRET", "sk-do-not-leak")
    root = make_project(tmp_path / "p")
    base, worse, broken, good = run_loop(root, tmp_path, [
        {"SCORE": 0.5, "BROKEN": True},  # worse: discarded by the policy, the checks never run
        {"SCORE": 2.0, "BROKEN": True},  # better but breaks the guard: checks_failed
        {"SCORE": 3.0},                  # better and passes: kept
    ])
    assert [e.status for e in (base, worse, broken, good)] == ["keep", "discard", "checks_failed", "keep"]

    assert "guards" not in worse.evidence
    assert not Path(worse.log_path).with_name(f"{worse.id:05d}.checks.log").exists()

    assert broken.metric == 2.0  # the measurement stays on record
    assert broken.reason.startswith("checks `python check.py` exited 3: ")
    assert "AssertionError: BROKEN must be False" in broken.reason and "noise line 79" in broken.reason
    assert "noise line 31\n" in broken.log_tail and "noise line 29\n" not in broken.log_tail  # the tail, not all
    checks = broken.evidence["guards"]["checks"]
    assert checks["status"] == "failed" and checks["exit_code"] == 3
    log = Path(checks["log"]).read_text()
    assert "noise line 0\n" in log
    # The checks see the experiment's scrubbed environment, not the user's secrets.
    assert "secret: <unset> flag: 1" in log

    assert good.evidence["guards"]["checks"]["status"] == "passed"
    assert tip(root) == good.commit
    assert "BROKEN = False" in subprocess.run(["git", "show", "autoresearch/g:run.py"], cwd=root,
                                              capture_output=True, text=True).stdout


def test_checks_timeout_kills_the_whole_tree(tmp_path: Path):
    root = make_project(tmp_path / "p")
    t0 = time.monotonic()
    base, hung = run_loop(root, tmp_path, [{"SCORE": 2.0, "HANG": True}])
    assert time.monotonic() - t0 < 40
    assert hung.status == "checks_failed"
    assert "timed out after 2s (experiment.checks_timeout_s)" in hung.reason
    checks = hung.evidence["guards"]["checks"]
    assert checks["status"] == "timeout" and 2 <= checks["wall_s"] < 2 + 1 + 5  # timeout + grace + slack
    assert marked_pids(marker_prefix(root, "g")) == []  # the grandchild that ignored SIGTERM is gone too
    assert tip(root) == base.commit


def test_failing_checks_at_the_starting_point_stop_the_run(tmp_path: Path):
    root = make_project(tmp_path / "p", run=RUN.replace("BROKEN = False", "BROKEN = True"))
    with pytest.raises(AutoresearchError) as err:
        run_loop(root, tmp_path, [{"SCORE": 2.0}])
    assert "checks_failed" in str(err.value) and "starting point" in str(err.value)
    (base,) = Ledger(root / ".autoresearch" / "ledger.db").experiments("g")
    assert base.status == "checks_failed"


def test_no_checks_configured_means_no_guard_run(tmp_path: Path):
    root = make_project(tmp_path / "p", toml=TOML.replace('checks = "python check.py"', 'checks = ""'))
    base, broken = run_loop(root, tmp_path, [{"SCORE": 2.0, "BROKEN": True}])
    assert broken.status == "keep" and "checks" not in broken.evidence.get("guards", {})


# ---------------------------------------------------------------- bounds on secondary metrics

def test_bounds_through_the_loop(tmp_path: Path):
    toml = TOML.replace('checks = "python check.py"', 'checks = ""').replace(
        'memory = ""', 'memory = ""\nbounds = { mem_mb = ["+10%", "<= 125"] }')
    root = make_project(tmp_path / "p", toml=toml)
    base, ok, grew, quiet, ok2, capped = run_loop(root, tmp_path, [
        {"SCORE": 2.0, "MEM": 108.0},  # +8%: kept
        {"SCORE": 3.0, "MEM": 120.0},  # +11.1% over 108: discarded
        {"SCORE": 3.0, "QUIET": True},  # does not print mem_mb: nothing shows it is within bounds
        {"SCORE": 3.0, "MEM": 118.0},  # +9.3%: kept
        {"SCORE": 4.0, "MEM": 126.0},  # +6.8% over 118 but above the absolute 125
    ])
    assert [e.status for e in (base, ok, grew, quiet, ok2, capped)] == \
        ["keep", "keep", "discard", "discard", "keep", "discard"], [(e.status, e.reason) for e in (grew, quiet)]
    assert "mem_mb 120 is outside its bound +10% (limit 118.8" in grew.reason and "incumbent 108" in grew.reason
    verdict, _, why = grew.reason.partition("; but ")  # the policy's verdict, then why it is not kept
    assert verdict and why.startswith("mem_mb 120")
    assert "mem_mb was not printed" in quiet.reason
    assert "mem_mb 126 is outside its bound <= 125 (limit 125: an absolute bound" in capped.reason
    rows = {b["bound"]: b for b in capped.evidence["guards"]["bounds"]}
    assert rows["+10%"]["ok"] is True and rows["<= 125"]["ok"] is False and rows["+10%"]["incumbent"] == 118.0
    assert base.evidence["guards"]["bounds"][0]["note"] == "no incumbent value to compare with"
    assert tip(root) == ok2.commit


@pytest.mark.parametrize("text,incumbent,value,ok", [
    ("+10%", 100.0, 110.0, True), ("+10%", 100.0, 110.01, False),
    ("-5%", 0.8, 0.76, True), ("-5%", 0.8, 0.759, False),
    ("+64", 1000.0, 1064.0, True), ("+64", 1000.0, 1064.5, False),
    ("-0.5", 3.0, 2.5, True), ("-0.5", 3.0, 2.4, False),
    ("<= 900", None, 900.0, True), ("< 900", None, 900.0, False),
    (">= 0.9", 0.1, 0.9, True), ("> 0.9", None, 0.9, False), (">= -2", None, -1.5, True),
    ("+10%", -10.0, -9.0, True), ("+10%", -10.0, -8.9, False),  # relative to |incumbent|
    ("+0%", 5.0, 5.0, True), ("+0%", 5.0, 5.0001, False),
])
def test_bound_semantics(tmp_path, text, incumbent, value, ok):
    cfg = _cfg_with_bounds(f'x = "{text}"', tmp_path)
    problems, rows = check_bounds(cfg, {"x": value}, {"x": incumbent} if incumbent is not None else None)
    assert rows[0]["ok"] is ok and (not problems) is ok


def test_a_relative_bound_without_an_incumbent_value_is_not_checked(tmp_path):
    cfg = _cfg_with_bounds('x = "+10%"', tmp_path)
    problems, rows = check_bounds(cfg, {"x": 1e9}, {"other": 1.0})
    assert problems == [] and rows[0]["limit"] is None


@pytest.mark.parametrize("bounds,message", [
    ('x = "10%"', "`metric.bounds.x` has a bound '10%' that is not understood: write one of"),
    ('x = "+ten%"', "`metric.bounds.x` has a bound '+ten%'"),
    ('x = "<= "', "`metric.bounds.x` has a bound '<= '"),
    ('x = []', "`metric.bounds.x` is empty"),
    ('x = 10', "`metric.bounds.x` must be a list"),
    ('x = [10]', "`metric.bounds.x[0]` must be a string"),
    ('y = "+10%"', "`metric.bounds.y`: y is not recorded"),
    ('score = "+10%"', "`metric.bounds.score` bounds the primary metric"),
])
def test_bounds_are_validated_with_the_key_named(tmp_path, bounds, message):
    with pytest.raises(ConfigError) as err:
        _cfg_with_bounds(bounds, tmp_path)
    assert message in str(err.value)


def test_checks_timeout_must_be_positive(tmp_path):
    root = make_project(tmp_path / "p", toml=TOML.replace("checks_timeout_s = 2", "checks_timeout_s = 0"))
    with pytest.raises(ConfigError, match="`experiment.checks_timeout_s` must be positive"):
        load(root)


def test_parse_bound_keeps_the_text():
    b = parse_bound("alloc_kb", " +10 % ")
    assert (b.op, b.amount, b.relative, b.percent, b.text) == ("<=", 10.0, True, True, "+10 %")


def _cfg_with_bounds(line: str, tmp: Path):
    root = tmp / "c"
    root.mkdir(exist_ok=True)
    (root / "run.py").write_text("print('score: 1')\n")
    (root / "program.md").write_text("x\n")
    (root / "autoresearch.toml").write_text(
        '[experiment]\nrun = "python run.py"\neditable = ["run.py"]\n'
        f'[metric]\nname = "score"\nrecord = ["x"]\nbounds = {{ {line} }}\n')
    return load(root)


# ---------------------------------------------------------------- flaky checks: experiment.checks_retries

# Fails the first time it sees the candidate (SCORE = 2.0), passes from then on: its memory is a file
# outside the worktree (so unsandboxed: a sandboxed check could not write there).
FLAKY = """import os, sys
state = os.environ["FLAKY_STATE"]
if "SCORE = 2.0" in open("run.py").read() and not os.path.exists(state):
    open(state, "w").write("failed once")
    print("test_timing FAILED: took 212 ms > 200 ms")
    sys.exit(1)
print("all good")
"""


def flaky_project(root: Path, state: Path, retries: str) -> Path:
    toml = TOML.replace('checks = "python check.py"', f'checks = "python flaky.py"\n{retries}\nsandbox = "none"\n'
                        f'env = {{ FLAKY_STATE = "{state}" }}').replace('protected = ["check.py"]',
                                                                         'protected = ["check.py", "flaky.py"]')
    return make_project(root, toml, files={"flaky.py": FLAKY})


def test_a_check_that_fails_once_is_retried_and_both_outcomes_are_recorded(tmp_path: Path):
    """Default `experiment.checks_retries = 1`: the flaky failure is re-run, the pass keeps the change,
    and the evidence holds both attempts (the failure's log included); the reason says it was flaky."""
    state = tmp_path / "flaky-state"
    root = flaky_project(tmp_path / "p", state, "")
    base, good = run_loop(root, tmp_path, [{"SCORE": 2.0}])
    assert good.status == "keep" and tip(root) == good.commit, (good.status, good.reason)
    checks = good.evidence["guards"]["checks"]
    assert [(a["status"], a["exit_code"]) for a in checks["attempts"]] == [("failed", 1), ("passed", 0)]
    assert checks["status"] == "passed" and checks["flaky"] is True
    assert "took 212 ms" in Path(checks["attempts"][0]["log"]).read_text()
    assert "all good" in Path(checks["attempts"][1]["log"]).read_text()
    assert "checks failed (exit 1" in good.reason and "passed on retry 1: flaky" in good.reason
    assert [a["status"] for a in base.evidence["guards"]["checks"]["attempts"]] == ["passed"]  # no retry needed


def test_without_retries_a_flaky_check_rejects_the_change(tmp_path: Path):
    """The control: `checks_retries = 0` is the old behaviour, one run, `checks_failed`."""
    state = tmp_path / "flaky-state"
    root = flaky_project(tmp_path / "p", state, "checks_retries = 0")
    base, good = run_loop(root, tmp_path, [{"SCORE": 2.0}])
    assert good.status == "checks_failed" and tip(root) == base.commit
    assert [a["status"] for a in good.evidence["guards"]["checks"]["attempts"]] == ["failed"]
    assert "took 212 ms" in good.reason


def test_a_check_failing_every_attempt_says_so(tmp_path: Path):
    root = make_project(tmp_path / "p", toml=TOML.replace("checks_timeout_s = 2", "checks_timeout_s = 2\n"
                                                          "checks_retries = 2"))
    base, broken = run_loop(root, tmp_path, [{"SCORE": 2.0, "BROKEN": True}])
    assert broken.status == "checks_failed"
    assert [a["exit_code"] for a in broken.evidence["guards"]["checks"]["attempts"]] == [3, 3, 3]
    assert "it failed all 3 attempts (experiment.checks_retries)" in broken.reason


@pytest.mark.parametrize("value,message", [("-1", "`experiment.checks_retries` must be between 0 and 10"),
                                           ("11", "`experiment.checks_retries` must be between 0 and 10"),
                                           ("1.5", "`experiment.checks_retries` must be a whole number")])
def test_checks_retries_is_validated(tmp_path, value, message):
    root = make_project(tmp_path / "p", toml=TOML.replace("checks_timeout_s = 2", f"checks_retries = {value}"))
    with pytest.raises(ConfigError, match=message):
        load(root)
