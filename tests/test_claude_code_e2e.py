"""End to end with a real coding agent and no network: the real Claude Code CLI drives the loop.

The CLI is the one bundled in the `claude-agent-sdk` package (skipped cleanly when that
is not installed). It is pointed with ANTHROPIC_BASE_URL at a local server that speaks the
Anthropic Messages API (streaming SSE, tool_use blocks) and plays a model that reads
train.py, edits it, and ends with DESCRIPTION/RATIONALE/NOTES. The harness, not the CLI,
commits the change; the judge runs it; the ledger records the CLI's own cost and tokens.
A second run plays a model that never answers: the CLI is killed at agent.timeout_s and
leaves no process behind.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from _llm_servers import Reply, ScriptedServer, Sleep, ToolUse, _estimate, tool_results
from autoresearch import agents
from autoresearch.agents.select import bundled_claude
from autoresearch.config import load
from autoresearch.ledger import Ledger
from autoresearch.driver import Driver, Limits
from autoresearch.procs import marked_pids
from autoresearch.session import marker_prefix

pytestmark = pytest.mark.skipif(not bundled_claude(), reason="claude-agent-sdk (which bundles the Claude Code CLI) "
                                                             "is not installed: pip install claude-agent-sdk")

TRAIN = "LR = 0.02\nval_loss = abs(LR - 0.05) * 10\nprint(f'val_loss: {val_loss:.6f}')\n"
FINAL = "DESCRIPTION: raise LR to 0.05\nRATIONALE: the loss is linear in the distance to 0.05.\nNOTES: LR is now optimal"


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


def project(tmp_path: Path, url: str, timeout_s: float) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "train.py").write_text(TRAIN)
    (root / "prepare.py").write_text("DATA = 1\n")
    (root / "program.md").write_text("Lower val_loss by tuning LR in train.py.\n")
    (root / "autoresearch.toml").write_text(
        '[experiment]\nrun = "python train.py"\nbudget_s = 5\ntimeout_s = 30\neditable = ["train.py"]\n'
        'protected = ["prepare.py"]\n[metric]\nname = "val_loss"\nmemory = ""\n'
        f'[agent]\nname = "claude-code"\nbase_url = "{url}"\ntimeout_s = {timeout_s}\n')
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "start")
    return root


@pytest.fixture
def offline_claude(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    for var, value in (("HOME", str(home)), ("ANTHROPIC_API_KEY", "sk-fake"), ("DISABLE_TELEMETRY", "1"),
                       ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"), ("DISABLE_AUTOUPDATER", "1")):
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no `claude` on PATH: the agent finds the bundled one


def model_that_reads_then_edits(body: dict):
    """One turn of a scripted model: Read train.py, then Edit it, then the final message."""
    if not body.get("tools"):
        return Reply("ok")  # any side request the CLI makes without tools
    cwd = re.search(r"Primary working directory: ([^\s\\\"]+)", json.dumps(body)).group(1)
    path = f"{cwd}/train.py"
    n = tool_results(body)
    if n == 0:
        return ToolUse("Read", {"file_path": path}, text="Let me look at the training script.")
    if n == 1:
        return ToolUse("Edit", {"file_path": path, "old_string": "LR = 0.02", "new_string": "LR = 0.05"})
    return Reply(FINAL, tokens_in=500, tokens_out=40)


def test_real_claude_code_edits_and_the_loop_commits_and_judges(tmp_path, offline_claude):
    with ScriptedServer("anthropic", default=model_that_reads_then_edits) as srv:
        root = project(tmp_path, srv.url.rstrip("/"), timeout_s=120)
        cfg = load(root)
        agent = agents.create("claude-code", cfg)
        assert agent.exe == bundled_claude()
        out = Driver(cfg, "e2e", agent, limits=Limits(max_experiments=1)).run()
        requests = list(srv.requests)
    ledger = Ledger(root / ".autoresearch" / "ledger.db")
    base, exp = ledger.experiments("e2e")
    assert exp.status == "keep", (exp.status, exp.reason)
    assert exp.metric == pytest.approx(0.0) and base.metric == pytest.approx(0.3)
    assert exp.description == "raise LR to 0.05" and "linear" in exp.rationale
    assert "+LR = 0.05" in exp.patch and git(root, "rev-parse", "autoresearch/e2e").strip() == exp.commit
    assert git(root, "log", "-1", "--format=%an", exp.commit).strip() != "Claude"  # the harness committed
    # The real CLI talked the real protocol: streaming, with its tools, and saw our prompt.
    tooled = [b for b in requests if b.get("tools")]
    assert len(tooled) >= 3 and all(b.get("stream") for b in tooled)
    assert "# Your task" in json.dumps(tooled[0]) and "DESCRIPTION:" in json.dumps(tooled[0])
    # Its own cost and token figures are what the ledger holds.
    (call,) = ledger.llm_calls("e2e")
    assert call["backend"] == "claude-code" and call["experiment_id"] == exp.id and call["error"] == ""
    # The server reported input tokens of len(body) // 4 per request, 500 for the last: Claude Code summed them.
    assert exp.tokens_in == sum(_estimate(b) for b in tooled[:-1]) + 500 and exp.tokens_out >= 40
    assert exp.cost_usd > 0 and call["cost_usd"] == pytest.approx(exp.cost_usd)
    assert "LR is now optimal" in (root / ".autoresearch" / "notes" / "e2e.md").read_text()
    assert out.incumbent.id == exp.id


def test_real_claude_code_that_hangs_is_killed_at_agent_timeout(tmp_path, offline_claude):
    with ScriptedServer("anthropic", default=Sleep(60, Reply("too late"))) as srv:
        root = project(tmp_path, srv.url.rstrip("/"), timeout_s=6)
        cfg = load(root)
        t0 = time.monotonic()
        Driver(cfg, "hang", agents.create("claude-code", cfg), limits=Limits(max_experiments=1)).run()
        took = time.monotonic() - t0
    rows = Ledger(root / ".autoresearch" / "ledger.db").experiments("hang")
    assert rows[-1].status == "crash" and "timed out after 6s" in rows[-1].reason
    assert took < 40
    assert marked_pids(marker_prefix(root, "hang")) == []  # the CLI and anything it started are gone
