"""The API backends through the real `openai` and `anthropic` SDKs against scripted local servers.

Nothing of the SDKs is mocked: each test starts a ThreadingHTTPServer on 127.0.0.1 that
speaks the real wire protocol (OpenAI chat completions; Anthropic messages, streamed as
SSE) and scripts its replies: good edits, edits that do not apply, malformed replies,
429 with retry-after, 500, timeouts, edits of a protected file. The loop runs for real
(git, judge, SQLite ledger); the quickstart run goes through the `autoresearch` CLI.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _llm_servers import Raw, Reply, ScriptedServer, Sleep, Status, last_user_text
from autoresearch import agents
from autoresearch.agents import notebook
from autoresearch.agents.context import Context, read_files
from autoresearch.agents.edits import Edit, EditError, apply_edits, parse_edits
from autoresearch.agents.llm import parse_reply
from autoresearch.agents.prices import cost_usd, price_of
from autoresearch.config import load
from autoresearch.errors import AgentError
from autoresearch.ledger import Ledger
from autoresearch.driver import Driver, Limits

needs_sdks = pytest.mark.skipif(
    importlib.util.find_spec("openai") is None or importlib.util.find_spec("anthropic") is None,
    reason="the openai and anthropic SDKs are not installed: pip install 'autoresearch[openai,anthropic]'")

TRAIN = """\
LR = 0.02
WIDTH = 16
DEPTH = 2

val_loss = abs(LR - 0.05) * 10 + abs(WIDTH - 64) / 100 + abs(DEPTH - 4) / 10
print(f"val_loss: {val_loss:.6f}")
"""
PREPARE = "# the frozen judge\nSEED_DATA = 1234\n"


def edit(desc: str, search: str, replace: str, path: str = "train.py", notes: str = "") -> str:
    return (f"DESCRIPTION: {desc}\nRATIONALE: the history suggests it.\n\n{path}\n<<<<<<< SEARCH\n{search}\n=======\n"
            f"{replace}\n>>>>>>> REPLACE\n" + (f"\nNOTES: {notes}\n" if notes else ""))


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


def make_project(tmp_path: Path, agent_toml: str = "") -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "train.py").write_text(TRAIN)
    (root / "prepare.py").write_text(PREPARE)
    (root / "program.md").write_text("Lower val_loss.\n")
    (root / "autoresearch.toml").write_text(
        '[experiment]\nrun = "python train.py"\nbudget_s = 5\ntimeout_s = 30\neditable = ["train.py"]\n'
        'protected = ["prepare.py"]\n[metric]\nname = "val_loss"\ndirection = "min"\nmemory = ""\n'
        f'[agent]\n{agent_toml}\n')
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "start")
    return root


def config(root: Path, server: ScriptedServer, backend: str, **agent):
    agent = {"name": backend, "base_url": server.url, "model": "scripted-model", "prices":
             {"scripted-model": [1000.0, 2000.0]}, "max_retries": 3, "max_reasks": 2, "request_timeout_s": 5.0,
             **agent}
    return load(root, {"agent": agent})


def context(cfg, root: Path, tag: str = "t", ledger: Ledger | None = None) -> Context:
    hist = ledger.experiments(tag) if ledger else []
    return Context(cfg=cfg, tag=tag, program="Lower val_loss.", files=read_files(root, ["train.py"]),
                   readonly=read_files(root, ["prepare.py"]), history=hist,
                   incumbent=ledger.incumbent(tag) if ledger else None)


@pytest.fixture(autouse=True)
def keys(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")


# -- one proposal, each backend -----------------------------------------------------------
@needs_sdks
@pytest.mark.parametrize("backend", ["openai", "anthropic"])
def test_good_edit_is_applied_and_every_call_is_counted(tmp_path, backend):
    root = make_project(tmp_path)
    reply = edit("raise LR to 0.05", "LR = 0.02", "LR = 0.05", notes="width next")
    with ScriptedServer(backend, [Reply(reply, tokens_in=1000, tokens_out=100)]) as srv:
        cfg = config(root, srv, backend)
        agent = agents.create(backend, cfg)
        p = agent.propose(context(cfg, root), root)
    assert not p.error, p.error
    assert p.description == "raise LR to 0.05" and "history" in p.rationale
    assert (root / "train.py").read_text().startswith("LR = 0.05\n")
    assert (p.tokens_in, p.tokens_out) == (1000, 100)
    assert p.cost_usd == pytest.approx(1000 * 1000 / 1e6 + 100 * 2000 / 1e6)  # agent.prices override
    (call,) = p.meta["llm_calls"]
    assert set(call) == {"backend", "model", "prompt", "reply", "tokens_in", "tokens_out", "cost_usd", "latency_s",
                         "error"}
    assert call["backend"] == backend and call["reply"] == reply and "LR = 0.02" in call["prompt"]
    assert call["error"] == "" and call["latency_s"] > 0
    body = srv.requests[0]
    assert body["model"] == "scripted-model"
    if backend == "anthropic":
        assert body["stream"] is True and srv.paths[0].startswith("/v1/messages")
        assert "researcher" in json.dumps(body["system"])
    else:
        assert srv.paths[0] == "/v1/chat/completions" and body["messages"][0]["role"] == "system"
        assert body["max_tokens"] == cfg.agent.max_output_tokens  # a compatible server: max_tokens
    assert "width next" in notebook.read(root, "t")


@needs_sdks
@pytest.mark.parametrize("backend", ["openai", "anthropic"])
def test_edit_that_does_not_apply_goes_back_with_the_reason(tmp_path, backend):
    root = make_project(tmp_path)
    script = [Reply(edit("raise LR", "LR = 0.07", "LR = 0.05")),  # not in the file
              Reply(edit("raise LR", "LR = 0.02", "LR = 0.05"))]
    with ScriptedServer(backend, script) as srv:
        cfg = config(root, srv, backend)
        p = agents.create(backend, cfg).propose(context(cfg, root), root)
    assert not p.error and p.meta["reasks"] == 1 and len(p.meta["llm_calls"]) == 2
    reask = last_user_text(srv.requests[1])
    assert "was not found in train.py" in reask and "LR = 0.02" in reask  # the reason and the closest lines
    roles = [m["role"] for m in srv.requests[1]["messages"] if m["role"] != "system"]
    assert roles == ["user", "assistant", "user"]
    assert (root / "train.py").read_text().count("LR = 0.05") == 1


@needs_sdks
def test_malformed_replies_then_a_good_one(tmp_path):
    root = make_project(tmp_path)
    script = [Reply("I think we should raise the learning rate."),  # no edit block
              Reply("DESCRIPTION: x\ntrain.py\n<<<<<<< SEARCH\nLR = 0.02\n>>>>>>> REPLACE\n"),  # no =======
              Reply(edit("raise LR", "LR = 0.02", "LR = 0.04"))]
    with ScriptedServer("openai", script, default=Raw(b"{not json")) as srv:
        cfg = config(root, srv, "openai")
        p = agents.create("openai", cfg).propose(context(cfg, root), root)
    assert not p.error and p.meta["reasks"] == 2
    assert "no edit block" in last_user_text(srv.requests[1])
    assert "no `=======` line" in last_user_text(srv.requests[2])
    assert "LR = 0.04" in (root / "train.py").read_text()


@needs_sdks
def test_replies_that_never_apply_leave_the_worktree_untouched(tmp_path):
    root = make_project(tmp_path)
    two_blocks = edit("two", "WIDTH = 16", "WIDTH = 32") + "\n" + edit("two", "DEPTH = 9", "DEPTH = 3")
    with ScriptedServer("anthropic", default=Reply(two_blocks, tokens_in=10, tokens_out=5)) as srv:
        cfg = config(root, srv, "anthropic", max_reasks=1)
        p = agents.create("anthropic", cfg).propose(context(cfg, root), root)
    assert "no usable edit after 2 replies" in p.error and "block 2" in p.error
    assert (root / "train.py").read_text() == TRAIN  # block 1 applied nowhere: all or nothing
    assert len(p.meta["llm_calls"]) == 2 and (p.tokens_in, p.tokens_out) == (20, 10)  # spent is still counted


@needs_sdks
@pytest.mark.parametrize("backend", ["openai", "anthropic"])
def test_429_retry_after_is_honoured(tmp_path, backend):
    root = make_project(tmp_path)
    script = [Status(429, {"retry-after": "1"}), Reply(edit("raise LR", "LR = 0.02", "LR = 0.03"))]
    times: list[float] = []
    with ScriptedServer(backend, [lambda b: (times.append(time.monotonic()), script.pop(0))[1] for _ in
                                  range(2)]) as srv:
        cfg = config(root, srv, backend)
        agent = agents.create(backend, cfg)
        agent.backoff_base_s = 30.0  # would be far longer: the header must win
        p = agent.propose(context(cfg, root), root)
    assert not p.error
    assert 0.9 <= times[1] - times[0] < 10
    first, second = p.meta["llm_calls"]
    assert first["error"].startswith("HTTP 429") and first["tokens_in"] == 0 and second["error"] == ""


@needs_sdks
def test_retry_after_ms_and_500_backoff(tmp_path):
    root = make_project(tmp_path)
    script = [Status(503, {"retry-after-ms": "300"}), Status(500), Status(502),
              Reply(edit("raise LR", "LR = 0.02", "LR = 0.03"))]
    with ScriptedServer("openai", script) as srv:
        cfg = config(root, srv, "openai")
        agent = agents.create("openai", cfg)
        agent.backoff_base_s = 0.05
        slept: list[float] = []
        agent.sleep = lambda s: (slept.append(s), time.sleep(s))
        p = agent.propose(context(cfg, root), root)
    assert not p.error and len(p.meta["llm_calls"]) == 4
    assert slept[0] == pytest.approx(0.3) and slept[1] < slept[2] < 1  # header, then exponential backoff
    assert [c["error"][:8] for c in p.meta["llm_calls"]] == ["HTTP 503", "HTTP 500", "HTTP 502", ""]


@needs_sdks
@pytest.mark.parametrize("backend", ["openai", "anthropic"])
def test_timeout_is_retried(tmp_path, backend):
    root = make_project(tmp_path)
    script = [Sleep(4, Reply("late")), Reply(edit("raise LR", "LR = 0.02", "LR = 0.03"))]
    with ScriptedServer(backend, script) as srv:
        cfg = config(root, srv, backend, request_timeout_s=1.0)
        agent = agents.create(backend, cfg)
        agent.backoff_base_s = 0.01
        t0 = time.monotonic()
        p = agent.propose(context(cfg, root), root)
    assert not p.error and time.monotonic() - t0 < 4
    first = p.meta["llm_calls"][0]
    assert "Timeout" in first["error"] and 0.9 <= first["latency_s"] < 3.5


@needs_sdks
def test_gives_up_after_max_retries_and_does_not_retry_client_errors(tmp_path):
    root = make_project(tmp_path)
    with ScriptedServer("openai", default=Status(500)) as srv:
        cfg = config(root, srv, "openai", max_retries=2)
        agent = agents.create("openai", cfg)
        agent.backoff_base_s = 0.01
        p = agent.propose(context(cfg, root), root)
    assert "gave up after 3 attempts" in p.error and len(srv.requests) == 3 and len(p.meta["llm_calls"]) == 3
    with ScriptedServer("anthropic", default=Status(401)) as srv:
        cfg = config(root, srv, "anthropic")
        p = agents.create("anthropic", cfg).propose(context(cfg, root), root)
    assert "HTTP 401" in p.error and len(srv.requests) == 1
    assert (root / "train.py").read_text() == TRAIN


@needs_sdks
def test_a_change_tried_before_is_refused_and_asked_again(tmp_path):
    root = make_project(tmp_path)
    with ScriptedServer("openai", [Reply(edit("raise LR", "LR = 0.02", "LR = 0.05"))] * 1
                        + [Reply(edit("raise LR again", "LR = 0.02", "LR = 0.05")),
                           Reply(edit("wider", "WIDTH = 16", "WIDTH = 32"))]) as srv:
        cfg = config(root, srv, "openai")
        agent = agents.create("openai", cfg)
        first = agent.propose(context(cfg, root), root)
        patch = git(root, "diff")
        git(root, "checkout", "--", "train.py")
        ledger = Ledger(root / ".autoresearch" / "ledger.db")
        from autoresearch.ledger import Experiment
        e = Experiment(tag="t", parent="a" * 40, commit="b" * 40, description=first.description, patch=patch)
        ledger.begin(e)
        e.status = "discard"
        ledger.finish(e)
        second = agent.propose(context(cfg, root, ledger=ledger), root)
    assert not second.error and second.description == "wider"
    assert "already tried as #1" in last_user_text(srv.requests[2])
    assert "WIDTH = 32" in (root / "train.py").read_text() and "LR = 0.02" in (root / "train.py").read_text()


@needs_sdks
def test_missing_sdk_and_missing_key_are_clear_errors(tmp_path, monkeypatch):
    root = make_project(tmp_path)
    cfg = load(root, {"agent": {"name": "openai"}})
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(AgentError, match=r"\$OPENAI_API_KEY"):
        agents.create("openai", cfg)
    cfg = load(root, {"agent": {"name": "anthropic", "api_key_env": "MY_CLAUDE_KEY"}})
    with pytest.raises(AgentError, match=r"\$MY_CLAUDE_KEY"):
        agents.create("anthropic", cfg)
    # A local OpenAI-compatible server (Ollama, vLLM, llama.cpp) needs no key.
    assert agents.create("openai", load(root, {"agent": {"base_url": "http://127.0.0.1:9/v1"}})).model == "gpt-4.1"
    monkeypatch.setitem(sys.modules, "anthropic", None)  # as if not installed
    with pytest.raises(AgentError, match=r"pip install 'autoresearch\[anthropic\]'"):
        agents.create("anthropic", load(root, {"agent": {"name": "anthropic"}}))


# -- the loop around it -------------------------------------------------------------------------
@needs_sdks
def test_loop_goes_on_through_every_failure_and_loses_nothing(tmp_path):
    """Good edits, bad-then-fixed, malformed to the end, 429, 500, a timeout, a protected file: all recorded."""
    root = make_project(tmp_path)
    script = [
        Reply(edit("LR to 0.05", "LR = 0.02", "LR = 0.05"), tokens_in=100, tokens_out=10),      # 1 keep
        Reply(edit("width", "WIDTH = 99", "WIDTH = 64")),                                          # 2 bad...
        Reply(edit("width to 64", "WIDTH = 16", "WIDTH = 64")),                                    #   fixed: keep
        Status(429, {"retry-after": "0.2"}), Status(500),                                          # 3 retried...
        Reply(edit("depth to 5", "DEPTH = 2", "DEPTH = 5")),                                       #   keep
        Sleep(3, Reply("late")), Reply(edit("depth to 1", "DEPTH = 5", "DEPTH = 1")),              # 4 discard
        Reply(edit("seed data", "SEED_DATA = 1234", "SEED_DATA = 1", path="prepare.py")),         # 5 violation
        Reply("no idea"), Reply("still none"), Reply("nothing"),                                   # 6 agent failed
        Reply(edit("depth to 4", "DEPTH = 5", "DEPTH = 4")),                                       # 7 keep
    ]
    with ScriptedServer("openai", script) as srv:
        cfg = config(root, srv, "openai", request_timeout_s=1.0)
        agent = agents.create("openai", cfg)
        agent.backoff_base_s = 0.05
        out = Driver(cfg, "t", agent, limits=Limits(max_experiments=7)).run()
        requests = len(srv.requests)
    ledger = Ledger(root / ".autoresearch" / "ledger.db")
    rows = ledger.experiments("t")
    assert [r.status for r in rows] == ["keep", "keep", "keep", "keep", "discard", "violation", "crash", "keep"]
    assert rows[5].description == "seed data" and "prepare.py" in rows[5].reason
    assert "agent failed" in rows[6].reason and "no usable edit" in rows[6].reason
    assert out.experiments == 7 and out.incumbent.metric == pytest.approx(0.0)
    calls = ledger.llm_calls("t")
    assert len(calls) == requests == 13  # every request, failed ones included, is in the ledger
    by_exp = {}
    for c in calls:
        by_exp.setdefault(c["experiment_id"], []).append(c)
    assert [len(by_exp.get(r.id, [])) for r in rows] == [0, 1, 2, 3, 2, 1, 3, 1]
    assert sum(r.cost_usd for r in rows) == pytest.approx(sum(c["cost_usd"] for c in calls))
    assert rows[1].tokens_in == 100 and rows[1].cost_usd == pytest.approx(0.1 + 0.02)
    assert all(r.agent == "openai" for r in rows[1:]) and all(r.agent_latency_s for r in rows[1:])
    assert git(root, "rev-parse", "autoresearch/t").strip() == rows[-1].commit


@needs_sdks
def test_max_usd_and_max_tokens_stop_the_loop_cleanly(tmp_path):
    root = make_project(tmp_path)
    moves = iter([("LR = 0.02", "LR = 0.03"), ("LR = 0.03", "LR = 0.04"), ("LR = 0.04", "LR = 0.05"),
                  ("WIDTH = 16", "WIDTH = 20"), ("WIDTH = 20", "WIDTH = 30")])

    def step(body):
        s, r = next(moves)
        return Reply(edit(r, s, r), tokens_in=1000, tokens_out=500)  # $1 + $1 = $2 per proposal

    with ScriptedServer("anthropic", default=step) as srv:
        cfg = config(root, srv, "anthropic", max_usd=5.0)
        out = Driver(cfg, "t", agents.create("anthropic", cfg), limits=Limits(max_experiments=10)).run()
    assert "agent.max_usd" in out.stop_reason and out.experiments == 3  # $6 >= $5 after three
    with ScriptedServer("anthropic", default=step) as srv:
        cfg = config(root, srv, "anthropic", max_tokens=5000)  # 4500 already spent on this tag
        out = Driver(cfg, "t", agents.create("anthropic", cfg), limits=Limits(max_experiments=10)).run()
    assert "agent.max_tokens" in out.stop_reason and out.experiments == 1


# -- the quickstart, through the CLI -------------------------------------------------------------
class QuickstartScript:
    """Each request: read a constant's current value from the prompt (the incumbent) and change it."""

    names = ["LEARNING_RATE", "HIDDEN", "MOMENTUM", "WEIGHT_DECAY", "INIT_SCALE", "BATCH_SIZE"]

    def __init__(self):
        self.n = 0

    def __call__(self, body):
        import re

        self.n += 1
        name = self.names[self.n % len(self.names)]
        prompt = body["messages"][1]["content"]  # [0] is the system prompt; re-asks come after [1]
        old = re.search(rf"^{name} = ([0-9.]+)", prompt, re.MULTILINE).group(1)
        new = str(int(old) + 4 * self.n) if "." not in old else f"{float(old) * (1 + 0.1 * self.n):.6g}"
        return Reply(edit(f"{name} {old} -> {new}", f"{name} = {old}", f"{name} = {new}"), tokens_in=2000,
                     tokens_out=300)


def run_cli(root: Path, *args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoresearch.cli", *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=240)


@needs_sdks
def test_quickstart_ten_experiments_show_tokens_and_dollars_and_a_max_usd_cap_stops_it(tmp_path):
    """`autoresearch run` on the quickstart with a scripted OpenAI-compatible server: $0.32 a proposal
    (2000 tokens in at $100/M, 300 out at $400/M); agent.max_usd = 3.1 stops it after exactly ten."""
    pytest.importorskip("numpy")
    root = tmp_path / "qs"
    env = dict(os.environ, OPENAI_API_KEY="sk-test")
    r = run_cli(tmp_path, "init", str(root), "--template", "quickstart", env=env)
    assert r.returncode == 0, r.stderr
    if not (root / ".git").exists():
        git(root, "init", "-q")
    with ScriptedServer("openai", default=QuickstartScript()) as srv:
        toml = (root / "autoresearch.toml").read_text().replace(
            'name = "mutate"', f'name = "openai"\nbase_url = "{srv.url}"\nmodel = "scripted-model"\n'
                               'prices = { "scripted-model" = [100.0, 400.0] }\nmax_usd = 3.1')
        (root / "autoresearch.toml").write_text(toml)
        git(root, "add", "-A")
        git(root, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "scripted agent")
        r = run_cli(root, "run", "--tag", "q", "--max-experiments", "20", "--budget", "0.5", "--no-live", env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "agent openai (named in the config" in r.stdout
        stopped = [ln for ln in r.stdout.splitlines() if ln.startswith("autoresearch: stopped")]
        assert stopped and "agent.max_usd" in stopped[-1], r.stdout  # the reason it stopped
        rows = json.loads(run_cli(root, "results", "--json", "--tag", "q", env=env).stdout)
        status = json.loads(run_cli(root, "status", "--json", "--tag", "q", env=env).stdout)
    assert len(rows) == 11 and len(srv.requests) == 10  # the baseline and ten proposals, one call each
    assert rows[0]["kind"] == "baseline" and rows[0]["cost_usd"] == 0
    for row in rows[1:]:
        assert row["agent"] == "openai" and (row["tokens_in"], row["tokens_out"]) == (2000, 300)
        assert row["cost_usd"] == pytest.approx(0.32) and row["agent_latency_s"] > 0
    assert (status["tokens_in"], status["tokens_out"]) == (20000, 3000)
    assert status["cost_usd"] == pytest.approx(3.2)
    assert status["counts"].get("keep", 0) >= 2
    calls = Ledger(root / ".autoresearch" / "ledger.db").llm_calls("q")
    assert sorted(c["experiment_id"] for c in calls) == [r["id"] for r in rows[1:]]


# -- edits and prices, the pieces -----------------------------------------------------------------
def test_edit_parsing_and_tolerant_matching(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("class A:\n    def f(self):\n        x = 1   \n        return x\n")
    reply = ("Some prose.\n```python\nm.py\n<<<<<<< SEARCH\n    def f(self):\n        x = 1\n=======\n    def f(self):\n"
             "        x = 2\n>>>>>>> REPLACE\n```\n\n**new.py**\n<<<<<<< FILE\nprint('hi')\n>>>>>>> END\n")
    edits = parse_edits(reply)
    assert [e.path for e in edits] == ["m.py", "new.py"]
    applied = apply_edits(tmp_path, edits)  # trailing spaces in the file: still matches
    assert "x = 2" in f.read_text() and (tmp_path / "new.py").read_text() == "print('hi')\n"
    applied.undo()
    assert "x = 1   " in f.read_text() and not (tmp_path / "new.py").exists()
    # Indentation changed uniformly: matched and re-indented.
    apply_edits(tmp_path, [Edit("m.py", "def f(self):\n    x = 1\n", "def f(self):\n    x = 3\n")])
    assert "        x = 3\n" in f.read_text()
    with pytest.raises(EditError, match="matches 2 places"):
        apply_edits(tmp_path, [Edit("m.py", "x", "y")])
    for bad in ("../escape.py", "/etc/passwd", ".git/config", ".autoresearch/ledger.db"):
        with pytest.raises(EditError):
            apply_edits(tmp_path, [Edit(bad, None, "x\n")])
    with pytest.raises(EditError, match="does not exist"):
        apply_edits(tmp_path, [Edit("nope.py", "a\n", "b\n")])
    r = parse_reply("## Description: **wider MLP**\nRATIONALE: more capacity\nm.py\n<<<<<<< SEARCH\n=======\nA = 1\n"
                    ">>>>>>> REPLACE\nNOTES:\n- try deeper next\n")
    assert r.description == "wider MLP" and r.notes == "- try deeper next" and r.edits[0].search is None


def test_prices_defaults_prefixes_and_overrides():
    assert price_of("claude-sonnet-4-5-20250929") == (3.0, 15.0)
    assert price_of("openai/gpt-4o-mini") == (0.15, 0.6)
    assert price_of("llama3.1:8b") is None and cost_usd("llama3.1:8b", 10**6, 10**6) == 0.0
    assert cost_usd("gpt-4o", 1_000_000, 100_000) == pytest.approx(2.5 + 1.0)
    assert cost_usd("llama3.1:8b", 2_000_000, 0, {"llama3.1": [0.1, 0.2]}) == pytest.approx(0.2)
    assert cost_usd("gpt-4o", 1_000_000, 0, {"gpt-4o": [1.0, 1.0]}) == pytest.approx(1.0)
