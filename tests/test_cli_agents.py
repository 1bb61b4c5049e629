"""Coding-agent CLIs, run headless by the loop: fake executables on PATH that accept the real flags.

Each fake is a small program named like the real CLI (claude, codex, aider, opencode,
gemini). It parses its arguments strictly with the real CLI's documented flags (an
unknown flag exits 2, as the real ones do), reads the prompt the way the real one does
(stdin or --message-file), edits train.py in its working directory, and prints its output
in the real CLI's documented format (Claude Code's JSON result, Codex's JSONL events,
aider's "Tokens: ... Cost: ..." lines, OpenCode's NDJSON parts, Gemini's JSON). Modes
make it hang (with a grandchild), touch a protected file, or leave scratch files.
The real Claude Code CLI is exercised end to end in test_claude_code_e2e.py.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoresearch import agents
from autoresearch.agents.select import choose
from autoresearch.config import load
from autoresearch.errors import AgentError
from autoresearch.ledger import Ledger
from autoresearch.driver import Driver, Limits
from autoresearch.procs import marked_pids
from autoresearch.sandbox import probe
from autoresearch.session import marker_prefix

BWRAP = probe()[0]
TRAIN = "LR = 0.02\nval_loss = abs(LR - 0.05) * 10\nprint(f'val_loss: {val_loss:.6f}')\n"

FAKE = r'''#!PYTHON
"""Fake NAME: the real CLI's documented headless flags, strictly parsed."""
import argparse, json, os, subprocess, sys, time
from pathlib import Path

name = "NAME"
p = argparse.ArgumentParser(prog=name)
if name == "claude":
    p.add_argument("-p", "--print", action="store_true", required=True)
    p.add_argument("--output-format", choices=["text", "json", "stream-json"], required=True)
    p.add_argument("--permission-mode", choices=["acceptEdits", "auto", "bypassPermissions", "manual", "dontAsk",
                                                 "plan"])
    p.add_argument("--allowedTools", "--allowed-tools")
    p.add_argument("--model")
    p.add_argument("prompt", nargs="?")
elif name == "codex":
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("exec")
    e.add_argument("--json", action="store_true")
    e.add_argument("-s", "--sandbox", choices=["read-only", "workspace-write", "danger-full-access"])
    e.add_argument("--skip-git-repo-check", action="store_true")
    e.add_argument("-o", "--output-last-message")
    e.add_argument("-m", "--model")
    e.add_argument("prompt", nargs="?")
elif name == "aider":
    p.add_argument("--message-file", "-f", required=True)
    for flag in ("--yes-always", "--no-auto-commits", "--no-dirty-commits", "--no-git", "--no-pretty", "--no-stream",
                 "--no-check-update", "--no-analytics", "--no-show-model-warnings"):
        p.add_argument(flag, action="store_true")
    p.add_argument("--chat-history-file")
    p.add_argument("--input-history-file")
    p.add_argument("--model")
    p.add_argument("--openai-api-base")
    p.add_argument("--file", action="append", default=[])
    p.add_argument("--read", action="append", default=[])
elif name == "opencode":
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--format", choices=["default", "json"])
    r.add_argument("-m", "--model")
    r.add_argument("message", nargs="*")
elif name == "gemini":
    p.add_argument("-p", "--prompt", required=True)
    p.add_argument("--output-format", "-o", choices=["text", "json", "stream-json"])
    p.add_argument("--approval-mode", choices=["default", "auto_edit", "yolo", "plan"])
    p.add_argument("-m", "--model")
args = p.parse_args()
# stderr reaches the agent's log: the one channel out of a confined agent
print("FAKE_SEEN " + json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd()}), file=sys.stderr, flush=True)
prompt = Path(args.message_file).read_text() if name == "aider" else sys.stdin.read()
if "# Your task" not in prompt or "DESCRIPTION:" not in prompt:
    print("the prompt did not arrive", file=sys.stderr)
    sys.exit(3)
mode = os.environ.get("FAKE_MODE", "edit")
if mode == "hang":
    child = subprocess.Popen(["sleep", "300"])
    print(f"FAKE_CHILD {child.pid}", file=sys.stderr, flush=True)
    time.sleep(300)
if mode == "fail":
    print("error: not logged in", file=sys.stderr)
    sys.exit(1)
target = "prepare.py" if mode == "protected" else "train.py"
text = Path(target).read_text()
Path(target).write_text(text.replace("LR = 0.02", "LR = 0.04") if target == "train.py" else text + "HACK = 1\n")
if mode == "scratch":  # what each real CLI is known to leave in its working directory
    if name == "aider":
        Path(".aider.tags.cache.v3").mkdir()
        Path(".aider.tags.cache.v3/cache.db").write_text("x")
        Path(".aider.chat.history.md").write_text("# chat")
    else:
        Path(f".{name}").mkdir()
        Path(f".{name}/settings.local.json").write_text("{}")
final = "I raised the learning rate.\nDESCRIPTION: raise LR to 0.04\nRATIONALE: the loss is far from its optimum.\n" \
        "NOTES: try 0.05 next\n"
if name == "claude":
    print(json.dumps({"type": "result", "subtype": "success", "is_error": False, "result": final, "num_turns": 3,
                      "total_cost_usd": 0.0123, "usage": {"input_tokens": 1200, "cache_creation_input_tokens": 100,
                                                          "cache_read_input_tokens": 50, "output_tokens": 80},
                      "modelUsage": {"claude-sonnet-4-5": {"inputTokens": 1350, "outputTokens": 80}}}))
elif name == "codex":
    for ev in ({"type": "thread.started", "thread_id": "t1"}, {"type": "turn.started"},
               {"type": "item.completed", "item": {"id": "i1", "type": "agent_message", "text": final}},
               {"type": "turn.completed", "usage": {"input_tokens": 3000, "cached_input_tokens": 1000,
                                                    "output_tokens": 200}}):
        print(json.dumps(ev))
    Path(args.output_last_message).write_text(final)
elif name == "aider":
    print(f"Aider v0.86.2\nMain model: gpt-4.1 with diff edit format\n{final}\nApplied edit to train.py\n"
          "Tokens: 2.5k sent, 120 received. Cost: $0.0090 message, $0.0090 session.")
elif name == "opencode":
    print(json.dumps({"type": "step_start", "part": {"type": "step-start"}}))
    print(json.dumps({"type": "text", "part": {"type": "text", "text": final}}))
    print(json.dumps({"type": "step_finish", "part": {"type": "step-finish", "reason": "stop", "cost": 0.004,
                                                      "tokens": {"input": 1800, "output": 90}}}))
elif name == "gemini":
    print(json.dumps({"response": final, "stats": {"models": {"gemini-2.5-pro": {
        "api": {"totalRequests": 2}, "tokens": {"prompt": 3000, "candidates": 150, "total": 3200, "cached": 0,
                                               "thoughts": 50}}}}}))
'''

EXPECTED = {  # (tokens_in, tokens_out, cost_usd) as each CLI reports them (or the price table, where it does not)
    "claude-code": (1350, 80, 0.0123),
    "codex": (3000, 200, None),  # no model named: no price
    "aider": (2500, 120, 0.009),
    "opencode": (1800, 90, 0.004),
    "gemini": (3000, 200, (3000 * 1.25 + 200 * 10.0) / 1e6),  # priced from the table (gemini-2.5-pro)
}
PROGRAM = {"claude-code": "claude", "codex": "codex", "aider": "aider", "opencode": "opencode", "gemini": "gemini"}


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def fakes(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for program in PROGRAM.values():
        path = bindir / program
        path.write_text(FAKE.replace("PYTHON", sys.executable).replace("NAME", program))
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "fake.log"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_MODE", "edit")
    return log


def make_project(tmp_path: Path, agent: str, **extra) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "train.py").write_text(TRAIN)
    (root / "prepare.py").write_text("DATA = 1\n")
    (root / "program.md").write_text("Lower val_loss.\n")
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in extra.items())
    (root / "autoresearch.toml").write_text(
        '[experiment]\nrun = "python train.py"\nbudget_s = 5\ntimeout_s = 30\neditable = ["train.py"]\n'
        f'protected = ["prepare.py"]\n[metric]\nname = "val_loss"\nmemory = ""\n[agent]\nname = "{agent}"\n{lines}')
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "start")
    return root


def fake_lines(root: Path, prefix: str) -> list[str]:
    """What the fakes said on stderr (the agent logs), after `prefix`."""
    out = []
    for log in sorted((root / ".autoresearch" / "logs" / "t").glob("agent-*.log")):
        out += [ln[len(prefix):] for ln in log.read_text().splitlines() if ln.startswith(prefix)]
    return out


def fake_seen(root: Path) -> dict:
    return json.loads(fake_lines(root, "FAKE_SEEN ")[-1])


def run_loop(root: Path, n: int = 1):
    cfg = load(root)
    out = Driver(cfg, "t", agents.create(cfg.agent.name, cfg), limits=Limits(max_experiments=n)).run()
    ledger = Ledger(root / ".autoresearch" / "ledger.db")
    return out, ledger.experiments("t"), ledger.llm_calls("t")


@pytest.mark.parametrize("agent", list(PROGRAM))
def test_each_cli_edits_headless_and_the_harness_commits(tmp_path, fakes, agent):
    root = make_project(tmp_path, agent)
    out, rows, calls = run_loop(root)
    exp = rows[-1]
    assert exp.status == "keep", (exp.status, exp.reason)
    assert exp.description == "raise LR to 0.04" and "optimum" in exp.rationale
    assert "LR = 0.04" in git(root, "show", f"{exp.commit}:train.py")
    assert git(root, "log", "-1", "--format=%s", "autoresearch/t").strip() == "raise LR to 0.04"  # the harness
    tin, tout, usd = EXPECTED[agent]
    assert (exp.tokens_in, exp.tokens_out) == (tin, tout)
    assert exp.cost_usd == pytest.approx(usd or 0.0)
    (call,) = calls
    assert call["backend"] == agent and call["experiment_id"] == exp.id and "# Your task" in call["prompt"]
    assert "DESCRIPTION: raise LR" in call["reply"] and call["error"] == "" and call["latency_s"] > 0
    seen = fake_seen(root)
    assert Path(seen["cwd"]).resolve() == (root / ".autoresearch" / "worktrees" / "t" / "propose").resolve()
    argv = seen["argv"]
    if agent == "claude-code":
        assert argv[:5] == ["-p", "--output-format", "json", "--permission-mode", "acceptEdits"]
        assert argv[argv.index("--allowedTools") + 1] == "Read,Edit,Write,Glob,Grep"
    elif agent == "aider":
        assert {"--yes-always", "--no-auto-commits", "--no-git"} <= set(argv)
        assert argv[argv.index("--file") + 1] == "train.py" and argv[argv.index("--read") + 1] == "prepare.py"
    elif agent == "codex":
        assert argv[:5] == ["exec", "--json", "--sandbox", "workspace-write", "--skip-git-repo-check"]
    assert "try 0.05 next" in (root / ".autoresearch" / "notes" / "t.md").read_text()


def test_model_allowed_tools_and_extra_args_reach_the_cli(tmp_path, fakes):
    root = make_project(tmp_path, "claude-code", model="claude-opus-4-1", allowed_tools=["Bash(python train.py)"])
    run_loop(root)
    argv = fake_seen(root)["argv"]
    assert argv[argv.index("--model") + 1] == "claude-opus-4-1"
    assert argv[argv.index("--allowedTools") + 1] == "Read,Edit,Write,Glob,Grep,Bash(python train.py)"


def test_unknown_flags_are_refused_by_the_fakes_and_recorded(tmp_path, fakes):
    root = make_project(tmp_path, "gemini", extra_args=["--no-such-flag"])
    out, rows, calls = run_loop(root)
    assert rows[-1].status == "crash" and "gemini exited 2" in rows[-1].reason
    assert "unrecognized arguments: --no-such-flag" in rows[-1].reason
    assert calls[0]["error"].startswith("gemini exited 2")


def test_a_hanging_cli_is_killed_with_its_children_at_agent_timeout(tmp_path, fakes, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "hang")
    root = make_project(tmp_path, "codex", timeout_s=2.0)
    t0 = time.monotonic()
    out, rows, calls = run_loop(root)
    assert time.monotonic() - t0 < 25
    assert rows[-1].status == "crash" and "timed out after 2s (agent.timeout_s)" in rows[-1].reason
    child = int(fake_lines(root, "FAKE_CHILD ")[-1])
    deadline = time.monotonic() + 5
    while not BWRAP and time.monotonic() < deadline and _alive(child):  # confined: a pid of its namespace
        time.sleep(0.1)
    assert BWRAP or not _alive(child), "the CLI's grandchild survived"
    assert marked_pids(marker_prefix(root, "t")) == []
    assert calls[0]["error"].startswith("codex timed out") and calls[0]["latency_s"] >= 2


@pytest.mark.parametrize("sandbox", ["none", "auto"])
def test_a_cli_touching_a_protected_file_is_a_violation(tmp_path, fakes, monkeypatch, sandbox):
    """Unconfined, the write lands and the change is refused before running; confined, the
    protected file is bound read-only and the CLI's write fails (a failed proposal)."""
    monkeypatch.setenv("FAKE_MODE", "protected")
    root = make_project(tmp_path, "opencode")
    toml = (root / "autoresearch.toml").read_text().replace("[metric]", f'sandbox = "{sandbox}"\n[metric]')
    (root / "autoresearch.toml").write_text(toml)
    git(root, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", f"sandbox {sandbox}")
    out, rows, calls = run_loop(root)
    if sandbox == "auto" and BWRAP:
        assert rows[-1].status == "crash" and "Read-only file system" in rows[-1].reason, rows[-1].reason
    else:
        assert rows[-1].status == "violation" and "prepare.py" in rows[-1].reason
        assert rows[-1].cost_usd == pytest.approx(0.004) and len(calls) == 1  # what it spent is still counted
    assert git(root, "rev-parse", "autoresearch/t") == git(root, "rev-parse", "HEAD")  # nothing committed


def test_scratch_files_are_removed_not_committed_and_failures_recorded(tmp_path, fakes, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "scratch")
    root = make_project(tmp_path, "aider")
    out, rows, calls = run_loop(root)
    assert rows[-1].status == "keep", rows[-1].reason
    assert git(root, "show", "--name-only", "--format=", rows[-1].commit).split() == ["train.py"]
    wt = root / ".autoresearch" / "worktrees" / "t" / "propose"
    assert not list(wt.glob(".aider*"))
    monkeypatch.setenv("FAKE_MODE", "fail")
    out, rows, calls = run_loop(root)
    assert rows[-1].status == "crash" and "aider exited 1" in rows[-1].reason and "not logged in" in rows[-1].reason


def test_missing_cli_names_the_install(tmp_path, monkeypatch):
    root = make_project(tmp_path, "gemini")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(AgentError, match="npm install -g @google/gemini-cli"):
        agents.create("gemini", load(root))
    with pytest.raises(AgentError, match=r"\$NOT_SET_ANYWHERE"):
        agents.create("codex", load(root, {"agent": {"executable": sys.executable, "api_key_env": "NOT_SET_ANYWHERE"}}))


def test_default_agent_selection(tmp_path, monkeypatch, fakes):
    root = make_project(tmp_path, "auto")
    for var in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    assert choose(load(root, {"agent": {"name": "aider"}})).name == "aider"  # configured wins
    assert choose(load(root)).name == "claude-code"  # the fakes are on PATH; claude first
    (tmp_path / "bin" / "claude").unlink()
    c = choose(load(root))
    assert c.name == "codex" and "`codex` found at" in c.reason
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    if __import__("importlib").util.find_spec("openai"):
        assert choose(load(root)) == agents.Choice("openai", "$OPENAI_API_KEY is set")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-x")
    monkeypatch.setitem(sys.modules, "anthropic", None)  # as if the SDK were missing: skipped, with the fix
    c = choose(load(root))
    assert c.name != "anthropic" and "pip install 'autoresearch[anthropic]'" in c.reason
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    c = choose(load(root))
    assert c.name == "mutate" and "no API key" in c.reason


def test_run_prints_which_agent_and_why(tmp_path):
    root = make_project(tmp_path, "auto")
    (root / "train.py").write_text("LR = 0.02\nWIDTH = 8\nprint(f'val_loss: {abs(LR - 0.05) + WIDTH / 100:.6f}')\n")
    git(root, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", "two constants")
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin"
    r = subprocess.run([sys.executable, "-m", "autoresearch.cli", "run", "--tag", "sel", "--max-experiments", "1",
                        "--no-live"], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "agent mutate (no API key" in r.stdout and "no coding-agent CLI" in r.stdout


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
