"""The sandbox, the judge's metric channel and the integrity checks, with real processes.

Each sandbox test runs a probe as the experiment (under bubblewrap when it is usable here;
those tests skip otherwise) and asserts what it could and could not do: write the system,
the user's checkout or the ledger, run git, reach a server on 127.0.0.1, see API keys or the
harness's processes. The fallback (no sandbox) is exercised with sandbox = "none": the
checks must still catch what the sandbox would have prevented.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import ScriptedAgent, git, make_project, rows_of, set_x

from autoresearch import sandbox as sandbox_mod
from autoresearch.config import load
from autoresearch.errors import AutoresearchError, ConfigError
from autoresearch.integrity import RULES, review
from autoresearch.judge import judge
from autoresearch.driver import Driver, Limits
from autoresearch.procs import marked_pids
from autoresearch.sandbox import Sandbox
from autoresearch.stateguard import StateGuard
from autoresearch.workspace import Workspace

BWRAP, WHY = sandbox_mod.probe()
needs_bwrap = pytest.mark.skipif(not BWRAP, reason=f"no usable bubblewrap: {WHY}")
TEMPLATES = Path(__file__).resolve().parents[1] / "src" / "autoresearch" / "templates"

PROBE = '''\
import json, os, socket, subprocess
from pathlib import Path

root = Path(os.environ["PROBE_ROOT"])
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except Exception as e:
        out[name] = type(e).__name__
attempt("write_etc", lambda: open("/etc/autoresearch-probe", "w").close())
attempt("write_checkout", lambda: (root / "prepare.py").write_text("OFFSET = -100.0\\n"))
attempt("write_worktree", lambda: Path("scratch.txt").write_text("x"))
attempt("write_tmp", lambda: Path("/tmp/" + os.environ["PROBE_TMPNAME"]).write_text("x"))
attempt("write_artifacts", lambda: Path(os.environ["AUTORESEARCH_CHECKPOINT"]).write_text("weights"))
attempt("connect", lambda: socket.create_connection(("127.0.0.1", int(os.environ["PROBE_PORT"])), timeout=3).close())
out["ledger_visible"] = (root / ".autoresearch" / "ledger.db").exists()
out["git_rc"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True).returncode
out["env"] = sorted(os.environ)
out["nprocs"] = sum(1 for p in os.listdir("/proc") if p.isdigit())
print("PROBE " + json.dumps(out))
print("score: 1.0")
'''

API_KEYS = {"OPENAI_API_KEY": "sk-fake-openai", "ANTHROPIC_API_KEY": "sk-ant-fake", "GITHUB_TOKEN": "ghp_fake",
            "AWS_SECRET_ACCESS_KEY": "fake-aws", "HF_TOKEN": "hf_fake"}


@pytest.fixture
def server():
    """A TCP server on the host's 127.0.0.1 that the sandboxed run must not reach."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s.getsockname()[1]
    s.close()


class Bench:
    """A tiny project with its workspace and run worktree, ready to judge one run."""

    def __init__(self, root: Path, tmp: Path, **cfg_overrides):
        self.root, self.tmp = root, tmp
        self.cfg = load(root, cfg_overrides or None)
        self.ws = Workspace(root, "sb")
        self.ws.prepare()
        self.wt = self.ws.worktree("run0")
        self.digests = self.ws.digests(self.wt, self.cfg.experiment.protected)

    def judge(self, run: str = "", **kw):
        if run:
            self.cfg.experiment.run = run
        marker = f"test-sandbox:{uuid.uuid4().hex}"
        self.log = self.tmp / "logs" / f"{marker[-8:]}.log"
        m = judge(self.cfg, self.ws, self.wt, seed=3, log_path=self.log, marker=marker,
                  protected_digests=self.digests, restore_from=self.ws.tip(), **kw)
        assert not marked_pids(marker), "a process of the run survived"
        return m

    def probe(self) -> dict:
        line = [ln for ln in self.log.read_text().splitlines() if ln.startswith("PROBE ")][-1]
        return json.loads(line[6:])


def _project(tmp_path, server_port=0, *, experiment="", metric="", files=None) -> Path:
    root = tmp_path / "proj"
    env = f'env = {{ PROBE_ROOT = "{root}", PROBE_PORT = "{server_port}", PROBE_TMPNAME = "{tmp_path.name}" }}\n'
    return make_project(root, files={"probe.py": PROBE, **(files or {})}, extra_experiment=env + experiment,
                        extra_toml=metric)


@needs_bwrap
def test_sandboxed_run_is_confined(tmp_path, server, monkeypatch):
    for k, v in API_KEYS.items():
        monkeypatch.setenv(k, v)
    root = _project(tmp_path, server)
    (root / ".autoresearch").mkdir(exist_ok=True)
    (root / ".autoresearch" / "ledger.db").write_bytes(b"")
    bench = Bench(root, tmp_path)
    m = bench.judge("python probe.py")
    assert m.status == "ok", m.log_tail
    p = bench.probe()
    assert p["write_etc"] in ("OSError", "PermissionError")  # read-only system
    assert p["write_checkout"] == "OSError", "the user's checkout must be read-only"
    assert (root / "prepare.py").read_text().startswith('"""Frozen')
    assert p["write_worktree"] == "ok" and p["write_tmp"] == "ok" and p["write_artifacts"] == "ok"
    assert not (Path("/tmp") / tmp_path.name).exists(), "the run's /tmp must be private"
    assert p["ledger_visible"] is False, "the ledger must not be mounted"
    assert p["git_rc"] != 0, "git must not work inside the run (the main .git is not mounted)"
    assert p["connect"] in ("ConnectionRefusedError", "OSError", "TimeoutError"), "no network by default"
    assert not set(API_KEYS) & set(p["env"]), "API keys leaked into the experiment's environment"
    assert p["nprocs"] < 10, "the run must see only its own processes"


UNMOUNT = """
import subprocess
from pathlib import Path
root = Path(__import__("os").environ["PROBE_ROOT"])
subprocess.run(["umount", "-l", str(root / ".autoresearch")], capture_output=True)
print("ledger visible:", (root / ".autoresearch" / "ledger.db").exists())
print("score: 1.0")
"""


@needs_bwrap
@pytest.mark.skipif(__import__("os").geteuid() != 0, reason="only a run as root has capabilities to drop")
@pytest.mark.parametrize("drop", [True, False], ids=["caps dropped", "control: caps kept"])
def test_a_run_as_root_cannot_unmount_what_hides_the_ledger(tmp_path, monkeypatch, drop):
    """As root, bwrap keeps every capability unless told otherwise: a run could unmount the tmpfs over
    `.autoresearch` (or `.git`) and see the real ledger again. With the capabilities dropped it cannot."""
    monkeypatch.setattr(sandbox_mod, "DROP_CAPS", drop)
    root = _project(tmp_path, files={"unmount.py": UNMOUNT})
    (root / ".autoresearch").mkdir(exist_ok=True)
    (root / ".autoresearch" / "ledger.db").write_bytes(b"")
    bench = Bench(root, tmp_path)
    m = bench.judge("python unmount.py")
    assert m.status == "ok", m.log_tail
    assert ("ledger visible: True" in bench.log.read_text()) is (not drop), bench.log.read_text()


@needs_bwrap
def test_network_when_the_config_allows_it(tmp_path, server):
    bench = Bench(_project(tmp_path, server, experiment="network = true\n"), tmp_path)
    assert bench.judge("python probe.py").status == "ok"
    assert bench.probe()["connect"] == "ok"


def test_without_a_sandbox_the_run_is_not_confined_but_keys_still_never_leak(tmp_path, server, monkeypatch):
    for k, v in API_KEYS.items():
        monkeypatch.setenv(k, v)
    bench = Bench(_project(tmp_path, server, experiment='sandbox = "none"\n'), tmp_path)
    m = bench.judge("python probe.py")
    assert m.status == "ok"
    p = bench.probe()
    assert p["write_checkout"] == "ok" and p["git_rc"] == 0 and p["connect"] == "ok"  # what the checks are for
    assert not set(API_KEYS) & set(p["env"])
    (Path("/tmp") / tmp_path.name).unlink()


def test_sandbox_bwrap_without_bwrap_is_a_config_error_naming_the_fix(tmp_path, monkeypatch):
    root = make_project(tmp_path / "p", extra_experiment='sandbox = "bwrap"\n')
    sandbox_mod.probe.cache_clear()
    monkeypatch.setattr(sandbox_mod.shutil, "which", lambda name: None)
    try:
        with pytest.raises(ConfigError, match="apt-get install bubblewrap"):
            load(root)
        cfg = load(root, {"experiment": {"sandbox": "auto"}})
        box = Sandbox.for_project(cfg, Workspace(root, "t"))
        assert box.mode == "none" and "apt-get install bubblewrap" in box.notice
    finally:
        sandbox_mod.probe.cache_clear()


def test_the_fallback_is_said_once_in_the_ledger_and_on_the_console(tmp_path):
    root = make_project(tmp_path / "p", extra_experiment='sandbox = "none"\n')
    notes = []
    Driver(load(root), "fb", ScriptedAgent([set_x(2.0), set_x(1.5)]), limits=Limits(max_experiments=2),
         reporter=lambda kind, **d: notes.append(d.get("message", "")) if kind == "note" else None).run()
    said = [n for n in notes if n.startswith("sandbox:")]
    assert len(said) == 1 and "none" in said[0]
    from conftest import ledger_of

    led = ledger_of(root)
    assert [e["message"] for e in led.events("fb") if e["kind"] == "sandbox"] == said
    led.close()


# ------------------------------------------------------------------ the metric channel

EVAL = '''\
import os, sys
from pathlib import Path
ckpt = Path(os.environ["AUTORESEARCH_CHECKPOINT"])
mode = ckpt.read_text() if ckpt.exists() else "missing"
print("secret=" + os.environ.get("AUTORESEARCH_EVAL_SECRET", ""))
try:
    Path("written-by-eval").write_text("x")
    print("eval wrote the worktree")
except OSError:
    print("eval could not write the worktree")
if mode == "leak":
    print("violation: causal mask broken")
elif mode == "crash":
    sys.exit(4)
elif mode == "slow":
    import time; time.sleep(30)
print("score: 2.5")
'''


def _channel(tmp_path, experiment="", **kw):
    root = make_project(tmp_path / "ch", files={"evaluate.py": EVAL}, extra_experiment=experiment,
                        extra_toml='command = "python evaluate.py"\ntimeout_s = 3\n')
    text = (root / "autoresearch.toml").read_text().replace('protected = ["prepare.py"]',
                                                            'protected = ["prepare.py", "evaluate.py"]')
    (root / "autoresearch.toml").write_text(text)
    git(root, "commit", "-qam", "protect the evaluation")
    return Bench(root, tmp_path, **kw)


def test_the_metric_comes_only_from_the_evaluation(tmp_path):
    bench = _channel(tmp_path)
    m = bench.judge('echo -n ok > "$AUTORESEARCH_CHECKPOINT"; echo "score: 0.0001"; '
                    'echo "secret=[$AUTORESEARCH_EVAL_SECRET] external=$AUTORESEARCH_EXTERNAL_EVAL"')
    assert m.status == "ok" and m.metric == 2.5, "the candidate's own score line must be ignored"
    run_log = bench.log.read_text()
    assert "secret=[] external=1" in run_log, "the run must not get the evaluation's secret"
    eval_log = Path(m.eval_log).read_text()
    secret = (bench.root / ".autoresearch" / "eval_secret").read_text().strip()
    assert len(secret) >= 32 and f"secret={secret}" in eval_log
    assert "--- evaluation" in m.log_tail
    if BWRAP:
        assert "eval could not write the worktree" in eval_log
        assert not (bench.wt / "written-by-eval").exists()


ISOLATION_EVAL = '''\
import json, os, sys
from pathlib import Path
out = {"cwd": os.getcwd(), "path": sys.path, "safe": sys.flags.safe_path, "no_user_site": sys.flags.no_user_site,
       "env": sorted(k for k in os.environ if k.startswith("PYTHON")), "planted": Path("planted.txt").exists(),
       "secret": bool(os.environ.get("AUTORESEARCH_EVAL_SECRET"))}
for name, target in (("cwd", Path("written-by-eval")), ("ckpt", Path(os.environ["AUTORESEARCH_CHECKPOINT"])),
                     ("artifacts", Path(os.environ["AUTORESEARCH_ARTIFACTS"]) / "new")):
    try:
        target.write_text("x")
        out["wrote_" + name] = True
    except OSError:
        out["wrote_" + name] = False
print("PROBE " + json.dumps(out))
print("score: 2.5")
'''


@pytest.mark.parametrize("sandbox", ["auto", "none"])
def test_the_evaluation_runs_in_its_own_checkout_with_an_isolated_interpreter(tmp_path, sandbox):
    """Not in the run's worktree (what the run wrote there is absent), with no script folder, user site
    or PYTHON* settings of the user's on its path; under bwrap it can write neither its checkout nor
    the artefact it was handed."""
    bench = _channel(tmp_path, experiment=f'sandbox = "{sandbox}"\nenv = {{ PYTHONPATH = "{tmp_path}", '
                                                f'PYTHONSTARTUP = "{tmp_path / "startup.py"}" }}\n')
    (bench.root / "evaluate.py").write_text(ISOLATION_EVAL)
    git(bench.root, "commit", "-qam", "probe the evaluation")
    bench.wt = bench.ws.worktree("run0", at=bench.ws.git("rev-parse", "HEAD"))
    bench.digests = bench.ws.digests(bench.wt, bench.cfg.experiment.protected)
    m = bench.judge('echo -n ok > "$AUTORESEARCH_CHECKPOINT"; echo x > planted.txt; echo "PYTHONPATH=$PYTHONPATH"')
    assert m.status == "ok" and m.metric == 2.5, (m.status, m.reason)
    assert f"PYTHONPATH={tmp_path}" in bench.log.read_text(), "the run keeps the user's PYTHONPATH"
    probe = json.loads([ln for ln in Path(m.eval_log).read_text().splitlines() if ln.startswith("PROBE ")][-1][6:])
    assert Path(probe["cwd"]) == bench.ws.trees / "run0-eval" and (bench.wt / "planted.txt").exists()
    assert not probe["planted"] and probe["secret"]
    assert probe["env"] == ["PYTHONDONTWRITEBYTECODE", "PYTHONNOUSERSITE", "PYTHONSAFEPATH", "PYTHONUNBUFFERED"]
    assert probe["no_user_site"] and str(tmp_path) not in probe["path"]
    if sys.version_info >= (3, 11):
        assert probe["safe"] and probe["cwd"] not in probe["path"] and "" not in probe["path"]
    assert len(m.artifact_sha256) == 64
    if sandbox == "auto" and BWRAP:
        assert not (probe["wrote_cwd"] or probe["wrote_ckpt"] or probe["wrote_artifacts"]), probe


@pytest.mark.parametrize("mode,status,reason", [
    ("leak", "violation", "causal mask broken"),
    ("crash", "crash", "evaluation exited 4"),
    ("slow", "timeout", "metric.timeout_s"),
])
def test_evaluation_outcomes(tmp_path, mode, status, reason):
    bench = _channel(tmp_path)
    m = bench.judge(f'echo -n {mode} > "$AUTORESEARCH_CHECKPOINT"; echo "score: 0.0001"')
    assert (m.status, m.metric) == (status, None) and reason in m.reason


def test_no_evaluation_after_a_failed_run(tmp_path):
    bench = _channel(tmp_path)
    m = bench.judge("echo 'score: 0.1'; exit 3")
    assert m.status == "crash" and m.eval_log == ""


def test_running_past_budget_plus_overhead_is_a_violation(tmp_path):
    bench = Bench(make_project(tmp_path / "p", extra_experiment="overhead_s = 0.5\n"), tmp_path)
    assert bench.judge("python train.py").status == "ok"
    m = bench.judge("sleep 2; python train.py")  # budget 1 s + 0.5 s
    assert m.status == "violation" and "overhead_s" in m.reason and m.metric is None


# ------------------------------------------------------------------ hidden data, data, tripwire


def _hidden(tmp_path, sandbox="auto"):
    data = tmp_path / "data"
    data.mkdir()
    (data / "val.bin").write_text("VALIDATION")
    (data / "train.bin").write_text("TRAINING")
    root = make_project(tmp_path / "p", files={"evaluate.py": "print(open(__import__('os').environ['DATA'] + "
                                                                "'/val.bin').read()); print('score: 1')\n"},
                        extra_experiment=f'sandbox = "{sandbox}"\nhidden = ["$DATA/val.bin"]\ndata = ["$DATA"]\n'
                                         f'env = {{ DATA = "{data}" }}\n',
                        extra_toml='command = "python evaluate.py"\n')
    return Bench(root, tmp_path), data


@pytest.mark.parametrize("sandbox", [pytest.param("auto", marks=needs_bwrap), "none"])
def test_hidden_data_is_unreadable_or_caught_and_visible_to_the_evaluation(tmp_path, sandbox):
    bench, _ = _hidden(tmp_path, sandbox)
    m = bench.judge('cat "$DATA/train.bin"; echo; echo "[$(cat $DATA/val.bin 2>&1)]"; sleep 30')
    assert m.status == "violation" and "hidden data" in m.reason and "val.bin" in m.reason
    assert m.wall_s < 15, "a run caught reading hidden data is stopped at once"
    if sandbox == "auto":
        assert "[]" in bench.log.read_text(), "the run must not see the validation data"
    m = bench.judge('cat "$DATA/train.bin"')
    assert m.status == "ok" and "VALIDATION" in Path(m.eval_log).read_text()


def test_a_change_to_data_is_a_violation(tmp_path):
    bench, _ = _hidden(tmp_path, "none")
    m = bench.judge('echo more >> "$DATA/train.bin"')
    assert m.status == "violation" and "data changed" in m.reason and "train.bin" in m.reason


def test_setup_runs_once_per_session_and_a_failing_setup_stops(tmp_path):
    count = tmp_path / "setups"
    bench = Bench(make_project(tmp_path / "p", extra_experiment=f'setup = "echo x >> {count}"\n'), tmp_path)
    box = Sandbox.for_project(bench.cfg, bench.ws)
    assert bench.judge(sandbox=box).status == "ok" and bench.judge(sandbox=box).status == "ok"
    assert count.read_text() == "x\n"
    bench.cfg.experiment.setup = "exit 5"
    with pytest.raises(AutoresearchError, match="experiment.setup"):
        bench.judge()


# ------------------------------------------------------------------ the review of a patch


def _review(tmp_path, new_train: str, **toml):
    root = make_project(tmp_path / "r", extra_toml=toml.get("metric", ""))
    ws = Workspace(root, "rv")
    ws.prepare()
    wt = ws.worktree("propose")
    (wt / "train.py").write_text(new_train)
    parent = ws.tip()
    sha = ws.commit(wt, ["train.py"], "candidate", parent)
    return review(load(root), ws, parent, sha)


def test_review_sorts_noop_seed_only_and_real_changes(tmp_path):
    from conftest import TRAIN

    noop = TRAIN.replace("X = 3.0", "X = 3.0  # the knob").replace('"""The agent', '"""Docs of the agent')
    assert _review(tmp_path / "a", noop)[0] == "discard"
    seeded = TRAIN.replace("Y = 2\n", "Y = 2\nSEED = 1\n")
    assert _review(tmp_path / "b", seeded) is None  # a new statement is a real change, for the policy
    base = TRAIN.replace("Y = 2\n", "Y = 2\nSEED = 1\n")
    root = make_project(tmp_path / "c", files={"train.py": base})
    ws = Workspace(root, "rv")
    ws.prepare()
    wt = ws.worktree("propose")
    (wt / "train.py").write_text(base.replace("SEED = 1", "SEED = 2"))
    sha = ws.commit(wt, ["train.py"], "seed", ws.tip())
    found = review(load(root), ws, ws.tip(), sha)
    assert found[0] == "discard" and "seed-only" in found[1]
    assert _review(tmp_path / "d", TRAIN.replace("X = 3.0", "X = 2.0")) is None


@pytest.mark.parametrize("line,what", [
    ("time.perf_counter = lambda: 0.0", "clock"),
    ("import time; time.time = lambda: 0", "clock"),
    ("os.environ['AUTORESEARCH_BUDGET_S'] = '600'", "AUTORESEARCH_"),
    ("key = os.environ.get('AUTORESEARCH_EVAL_SECRET')", "secret"),
    ("open('../../../ledger.db', 'w')", "harness"),
    ("subprocess.run(['git', 'update-ref', 'refs/heads/x', 'HEAD'])", "git"),
    ("os.system('git reset --hard HEAD~1')", "git"),
    ("import prepare; prepare.OFFSET = -10", "protected module"),
    ("f = sys._getframe(1)", "introspects"),
])
def test_review_flags_hacks(tmp_path, line, what):
    from conftest import TRAIN

    found = _review(tmp_path, TRAIN + "\nimport os, subprocess, sys, time\n" + line + "\n")
    assert found and found[0] == "violation" and what in found[1]


def test_review_rules_pass_the_honest_templates():
    """No false alarm on the code the templates ship (every line read as if it were added)."""
    for path in [TEMPLATES / "quickstart" / "train.py", TEMPLATES / "gpt" / "train.py"]:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            if line.lstrip().startswith("#"):
                continue
            for pattern, why in RULES:
                assert not __import__("re").search(pattern, line), f"{path.name}: `{line}` flagged: {why}"


# ------------------------------------------------------------------ the state guard


def test_state_guard_restores_branch_pins_ledger_tsv_and_checkout(tmp_path):
    root = make_project(tmp_path / "g")
    cfg = load(root)
    Driver(cfg, "sg", ScriptedAgent([set_x(2.0), set_x(2.5)]), limits=Limits(max_experiments=2)).run()
    rows = rows_of(root, "sg")
    ws = Workspace(root, "sg")
    tip, tsv = ws.tip(), (root / "results.tsv").read_text()
    db_path = root / ".autoresearch" / "ledger.db"
    guard = StateGuard(cfg, ws, db_path, "sg")
    git(root, "update-ref", "refs/heads/autoresearch/sg", rows[2].commit)  # the discarded one
    git(root, "update-ref", f"refs/autoresearch/sg/{rows[1].id}", rows[2].commit)
    db = sqlite3.connect(db_path)
    with db:
        db.execute("UPDATE experiments SET status = 'keep', metric = 0.0 WHERE id = ?", (rows[2].id,))
        db.execute("DELETE FROM experiments WHERE id = ?", (rows[0].id,))
        db.execute("INSERT INTO experiments (tag, description, kind, status, metric) "
                   "VALUES ('sg', 'forged', 'candidate', 'keep', -1.0)")
    db.close()
    (root / "results.tsv").write_text("forged\n")
    (root / "prepare.py").write_text("OFFSET = -5\n")
    found = guard.check()
    assert len(found) == 5, found
    assert ws.tip() == tip and (root / "results.tsv").read_text() == tsv
    assert git(root, "rev-parse", f"refs/autoresearch/sg/{rows[1].id}") == rows[1].commit
    assert [(e.id, e.status, e.metric) for e in rows_of(root, "sg")] == [(e.id, e.status, e.metric) for e in rows]
    assert git(root, "status", "--porcelain", "prepare.py") == ""
    assert StateGuard(cfg, ws, db_path, "sg").check() == []


def test_state_guard_restores_git_config_hooks_and_attributes(tmp_path, monkeypatch):
    """A run or agent without a sandbox can write .git: what there names programs is put back."""
    from autoresearch import stateguard

    root = make_project(tmp_path / "g")
    cfg = load(root)
    ws = Workspace(root, "gd")
    ws.prepare()
    gitdir = root / ".git"
    config = (gitdir / "config").read_bytes()
    sample = gitdir / "hooks" / "pre-commit.sample"
    sample_bytes = sample.read_bytes() if sample.exists() else None
    guard = StateGuard(cfg, ws, root / ".autoresearch" / "ledger.db", "gd")
    git(root, "config", "filter.evil.clean", "touch /tmp/pwned; cat")
    (gitdir / "info").mkdir(exist_ok=True)
    (gitdir / "info" / "attributes").write_text("* filter=evil\n")
    (gitdir / "hooks" / "pre-commit").write_text("#!/bin/sh\ntouch /tmp/pwned\n")
    if sample_bytes is not None:
        sample.unlink()
    found = guard.check()
    assert ".git/config was changed (restored)" in found and ".git/info/attributes was added (removed)" in found
    assert ".git/hooks/pre-commit was added (removed)" in found
    assert (gitdir / "config").read_bytes() == config and not (gitdir / "hooks" / "pre-commit").exists()
    assert not (gitdir / "info" / "attributes").exists()
    assert sample_bytes is None or sample.read_bytes() == sample_bytes
    assert StateGuard(cfg, ws, root / ".autoresearch" / "ledger.db", "gd").check() == []
    # the control: with git's directory unwatched the same changes go unseen and stay
    monkeypatch.setattr(stateguard, "WATCH_GIT_DIR", False)
    guard = StateGuard(cfg, ws, root / ".autoresearch" / "ledger.db", "gd")
    (gitdir / "hooks" / "pre-commit").write_text("#!/bin/sh\n")
    assert guard.check() == [] and (gitdir / "hooks" / "pre-commit").exists()


def test_run_folders_of_a_dead_harness_are_removed(tmp_path):
    import tempfile

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = Path(tempfile.gettempdir()) / f"{sandbox_mod.RUN_DIR_PREFIX}{dead.pid}-xyz"
    (stale / "artifacts").mkdir(parents=True)
    mine = Sandbox("none", "", tmp_path, None, False).new_run_dir([])
    sandbox_mod.remove_stale_run_dirs()
    assert not stale.exists() and mine.artifacts.exists()
    mine.cleanup()


def nest(top: Path, depth: int) -> None:
    """`depth` folders `d/d/d/...` under `top`, made relative to a folder descriptor (no long path)."""
    import os

    fd = os.open(top, os.O_RDONLY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=fd)
        inner = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = inner
    open(os.open("leaf", os.O_WRONLY | os.O_CREAT, dir_fd=fd), "w").close()
    os.close(fd)


@pytest.mark.parametrize("with_rm", [True, False])
def test_a_deep_stale_run_folder_is_removed_not_a_crash(tmp_path, monkeypatch, with_rm):
    """A dead harness's run folder whose artefacts a run nested 3,000 deep (found in /tmp: shutil.rmtree
    raised RecursionError and every later session died at its start). It is removed, with `rm -rf`
    and without it (the fallback flattens the tree level by level); the control: shutil.rmtree fails."""
    import shutil
    import tempfile

    from autoresearch import workspace

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = Path(tempfile.gettempdir()) / f"{sandbox_mod.RUN_DIR_PREFIX}{dead.pid}-deep"
    (stale / "artifacts").mkdir(parents=True)
    try:
        nest(stale / "artifacts", 3000)
        if not with_rm:
            monkeypatch.setattr(workspace.shutil, "which", lambda name: None)
        assert sandbox_mod.remove_stale_run_dirs() >= 1
        assert not stale.exists()
        control = tmp_path / "control"
        control.mkdir()
        nest(control, 3000)
        with pytest.raises((RecursionError, OSError)):
            shutil.rmtree(control)
    finally:
        subprocess.run(["rm", "-rf", str(stale), str(tmp_path / "control")], check=False)


def test_a_stale_run_folder_that_cannot_be_removed_is_skipped_with_a_note(monkeypatch, capsys):
    """Housekeeping never stops a session: a folder that stays (here: removal does nothing) is named on
    stderr with the command that removes it, and the call returns."""
    import tempfile

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = Path(tempfile.gettempdir()) / f"{sandbox_mod.RUN_DIR_PREFIX}{dead.pid}-stuck"
    stale.mkdir()
    try:
        monkeypatch.setattr(sandbox_mod, "remove_tree", lambda path: None)
        sandbox_mod.remove_stale_run_dirs()
        assert stale.exists() and f"could not remove the stale run folder {stale}" in capsys.readouterr().err

        def boom(path):
            raise RecursionError("maximum recursion depth exceeded")
        monkeypatch.setattr(sandbox_mod, "remove_tree", boom)
        sandbox_mod.remove_stale_run_dirs()
        assert "maximum recursion depth" in capsys.readouterr().err
    finally:
        stale.rmdir()


def test_hidden_paths_expand_variables_home_globs_and_installed_packages(tmp_path, monkeypatch):
    import json as json_pkg  # a package every Python has: its files stand in for a corpus in site-packages

    (tmp_path / "data").mkdir()
    for name in ("a.bin", "b.bin", "c.txt"):
        (tmp_path / "data" / name).write_text(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    env = {"CACHE": str(tmp_path / "data")}
    got = sandbox_mod.resolve_paths(["$CACHE/*.bin", "~/data/c.txt", "$UNSET/x.bin", "python:json/decoder.py",
                                     "python:json/*.nothing", "python:no_such_package_xyz/x", "python:../etc/passwd",
                                     "data/a.bin"], tmp_path, env)
    decoder = Path(json_pkg.__file__).with_name("decoder.py").resolve()
    assert got == [tmp_path / "data" / "a.bin", tmp_path / "data" / "b.bin", tmp_path / "data" / "c.txt", decoder]
    # A namespace package spread over two folders (each searched), one of them with glob characters in its name.
    for folder, name in ((tmp_path / "site[1]", "one.txt"), (tmp_path / "site2", "two.txt")):
        (folder / "nspkg_xyz").mkdir(parents=True)
        (folder / "nspkg_xyz" / name).write_text(name)
        monkeypatch.syspath_prepend(str(folder))
    got = sandbox_mod.resolve_paths(["python:nspkg_xyz/*.txt"], tmp_path, env)
    assert sorted(p.name for p in got) == ["one.txt", "two.txt"], got
    # Forms that can never name a file inside a package are refused by the config, saying how to write one.
    for bad in ("python:os.path/x", "python: json/decoder.py", "python:json", "python:json//decoder.py"):
        assert sandbox_mod.check_package_pattern(bad), bad
        assert sandbox_mod.resolve_paths([bad], tmp_path, env) == []
    assert sandbox_mod.check_package_pattern("python:json/decoder.py") is None


def test_slots_keep_python_hidden_paths_and_the_review_names_their_files(tmp_path):
    """A concurrent run's slot config anchors relative hidden paths to the project; `python:` ones
    must pass through unchanged, or a training run in a slot could read them unseen."""
    from autoresearch.engines.runner import slot_config

    root = make_project(tmp_path / "p")
    cfg = load(root, {"experiment": {"hidden": ["python:json/decoder.py", "secret/*.bin"]}})
    slot = slot_config(cfg, root, root / ".autoresearch" / "slots" / "t" / "slot0", "")
    assert slot.experiment.hidden == ["python:json/decoder.py", str(root / "secret/*.bin")]
    import json as json_pkg

    assert sandbox_mod.resolve_paths(slot.experiment.hidden, slot.root, {}) == [
        Path(json_pkg.__file__).with_name("decoder.py").resolve()]
    from autoresearch.integrity import _project_rules

    whys = [why for _, why in _project_rules(cfg)]
    assert "names hidden data (decoder.py)" in whys, whys  # a patch naming the file is refused unrun
    with pytest.raises(ConfigError, match=r"experiment\.hidden.*python:os\.path/x.*top-level package"):
        load(root, {"experiment": {"hidden": ["python:os.path/x"]}})
