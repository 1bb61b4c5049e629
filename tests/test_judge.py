"""The judge: every status, metric parsing, the scrubbed environment, protected files.

Real git worktrees and real processes; the judge never raises for an experiment's failure.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from conftest import PREPARE, ScriptedAgent, make_project, rows_of, set_x

from autoresearch.config import load
from autoresearch.judge import artifact_digest, evaluation_env, judge, parse_metric
from autoresearch.driver import Driver, Limits
from autoresearch.procs import marked_pids
from autoresearch.workspace import Workspace

MARGIN = 4.0


class Bench:
    """A project, its workspace and run worktree, ready to judge commands."""

    def __init__(self, root: Path, tmp: Path):
        self.root, self.tmp = root, tmp
        self.cfg = load(root)
        self.ws = Workspace(root, "j")
        self.ws.prepare()
        self.wt = self.ws.worktree("run0")
        self.digests = self.ws.digests(self.wt, self.cfg.experiment.protected)
        self.marker = ""

    def judge(self, run: str = "", seed: int = 7, **kw):
        if run:
            self.cfg.experiment.run = run
        self.marker = f"test-judge:{uuid.uuid4().hex}"
        self.log = self.tmp / "logs" / f"{self.marker[-8:]}.log"
        m = judge(self.cfg, self.ws, self.wt, seed=seed, log_path=self.log, marker=self.marker,
                  protected_digests=self.digests, restore_from=self.ws.tip(), **kw)
        assert not marked_pids(self.marker)
        return m


@pytest.fixture
def bench(project, tmp_path):
    return Bench(project, tmp_path)


def test_ok_reads_metric_and_secondary_metrics(bench):
    m = bench.judge()
    assert m.status == "ok" and m.reason == ""
    assert m.metric == pytest.approx(4.5) and m.metrics == {"aux": 7.0}
    assert m.exit_code == 0 and 0 < m.wall_s < 10
    assert "score: 4.500000" in m.log_tail and m.pid


def test_crash_by_nonzero_exit_even_with_a_metric(bench):
    m = bench.judge("python train.py; exit 3")
    assert m.status == "crash" and m.exit_code == 3 and "exit code 3" in m.reason
    assert m.metric is None  # a crashed run has no trustworthy metric
    assert "score: 4.5" in m.log_tail


def test_crash_by_no_metric(bench):
    m = bench.judge("echo 'Traceback: something broke'")
    assert m.status == "crash" and m.exit_code == 0 and "no `score:` line" in m.reason
    assert "something broke" in m.log_tail


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf"])
def test_crash_by_nan_or_inf(bench, value):
    m = bench.judge(f"echo 'score: {value}'")
    assert m.status == "crash" and m.metric is None and "score is" in m.reason


def test_timeout_kills_within_timeout_plus_grace(bench):
    bench.cfg.experiment.timeout_s = 1.5
    t0 = time.monotonic()
    m = bench.judge("echo started; sleep 100; echo 'score: 1'")
    assert m.status == "timeout" and "1.5s" in m.reason and "experiment.timeout_s" in m.reason
    assert 1.4 <= time.monotonic() - t0 <= 1.5 + 1 + MARGIN
    assert m.metric is None and "started" in m.log_tail


def test_timeout_wins_over_a_metric_printed_before_the_kill(bench):
    bench.cfg.experiment.timeout_s = 1.2
    m = bench.judge("echo 'score: 0.1'; sleep 100")
    assert m.status == "timeout" and m.metric is None


def test_interrupted_by_stop_flag(bench):
    t0 = time.monotonic()
    m = bench.judge("sleep 100", should_stop=lambda: time.monotonic() - t0 > 0.4)
    assert m.status == "interrupted" and m.metric is None
    assert time.monotonic() - t0 < 0.4 + 1 + MARGIN


def test_change_to_protected_file_during_run_is_a_violation_and_restored(bench):
    m = bench.judge("echo 'OFFSET = -100.0' >> prepare.py; python train.py")
    assert m.status == "violation" and "prepare.py" in m.reason and "restored" in m.reason
    assert m.metric is None  # the run printed a (faked) great score: never trusted
    assert (bench.wt / "prepare.py").read_text() == PREPARE
    assert (bench.root / "prepare.py").read_text() == PREPARE  # the user's checkout never touched


def test_deleting_or_adding_a_protected_file_is_a_violation(bench, tmp_path):
    m = bench.judge("rm prepare.py; echo 'score: 1'")
    assert m.status == "violation" and (bench.wt / "prepare.py").read_text() == PREPARE


def test_protected_file_tampered_before_the_run_refuses_to_run(bench, tmp_path):
    side = tmp_path / "ran"
    (bench.wt / "prepare.py").write_text("OFFSET = -100.0\n")
    m = bench.judge(f"touch {side}; python train.py")
    assert m.status == "violation" and "before the run" in m.reason
    assert not side.exists(), "the run command executed despite the tampered protected file"
    assert (bench.wt / "prepare.py").read_text() == PREPARE


def test_environment_is_scrubbed_but_gets_budget_and_seed(bench, monkeypatch):
    secrets = {"OPENAI_API_KEY": "sk-fake-openai-0123", "ANTHROPIC_API_KEY": "sk-ant-fake-4567",
               "AWS_SECRET_ACCESS_KEY": "fake-aws-89ab", "GITHUB_TOKEN": "ghp_fakecdef", "HF_TOKEN": "hf_fake"}
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MY_ALLOWED", "visible-1")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    bench.cfg.experiment.env_allow = ["MY_ALLOWED"]
    bench.cfg.experiment.env = {"EXTRA_SETTING": "from-config"}
    m = bench.judge("env; python train.py", seed=1234)
    assert m.status == "ok"
    log = bench.log.read_text()
    for k, v in secrets.items():
        assert v not in log and f"{k}=" not in log, k
    env = dict(line.split("=", 1) for line in log.splitlines() if "=" in line and not line.startswith(" "))
    assert env["AUTORESEARCH_BUDGET_S"] == "1"
    assert env["AUTORESEARCH_SEED"] == "1234"
    assert env["MY_ALLOWED"] == "visible-1" and env["OMP_NUM_THREADS"] == "3"
    assert env["EXTRA_SETTING"] == "from-config"
    assert "PATH" in env and "HOME" in env


def test_custom_pattern_and_memory_metric(tmp_path):
    toml = ('[experiment]\nrun = "python train.py"\nbudget_s = 1\ntimeout_s = 20\neditable = ["train.py"]\n'
            'protected = ["prepare.py"]\n[metric]\nname = "loss"\ndirection = "min"\n'
            'pattern = "^final loss=([0-9.]+) ok$"\nrecord = ["mfu_percent"]\nmemory = "peak_vram_mb"\n')
    root = make_project(tmp_path / "p2", toml=toml)
    b = Bench(root, tmp_path)
    m = b.judge("echo 'final loss=9.0 ok'; echo 'loss: 5'; echo 'final loss=0.25 ok'; "
                "echo 'peak_vram_mb: 2048.5'; echo 'mfu_percent: 39.8'")
    assert m.status == "ok" and m.metric == 0.25
    assert m.metrics == {"mfu_percent": 39.8, "peak_vram_mb": 2048.5} and m.peak_mem_mb == 2048.5


def test_peak_rss_when_no_memory_metric(bench):
    m = bench.judge("python -c \"b = b'x' * (80 * 2**20); import time; time.sleep(0.8)\"; python train.py")
    assert m.status == "ok" and m.peak_mem_mb is not None and m.peak_mem_mb >= 60


# -- metric parsing ---------------------------------------------------------------------------
ORIGINAL_SUMMARY = """\
step 00953 (100.0%) | loss: 3.212 | lrm: 0.02 | dt: 314ms | tok/sec: 1,671,302 | mfu: 39.8% | epoch: 1
---
val_bpb:          0.997900
training_seconds: 300.1
total_seconds:    325.9
peak_vram_mb:     45060.2
mfu_percent:      39.80
total_tokens_M:   499.6
num_steps:        953
num_params_M:     50.3
depth:            8
"""


def test_parse_the_original_summary_block():
    assert parse_metric(ORIGINAL_SUMMARY, "val_bpb") == 0.9979
    assert parse_metric(ORIGINAL_SUMMARY, "peak_vram_mb") == 45060.2
    assert parse_metric(ORIGINAL_SUMMARY, "num_steps") == 953
    assert parse_metric(ORIGINAL_SUMMARY, "loss") is None  # `loss:` mid-line is not a metric line


@pytest.mark.parametrize("text,expected", [
    ("METRIC val_bpb=0.5\n", 0.5),
    ("METRIC val_bpb = 0.75\n", 0.75),
    ("val_bpb=1.25\n", 1.25),
    ("val_bpb: 1.5e-3\n", 1.5e-3),
    ("val_bpb: -2.5\n", -2.5),
    ("val_bpb: .5\n", 0.5),
    ("val_bpb: 0.9\r\n", 0.9),
    ("step 10 loss 3.1\rstep 20 loss 2.9\rval_bpb: 0.8\n", 0.8),  # progress bars drawn with \r
    ("  val_bpb:   7\n", 7.0),
    ("val_bpb: 1\nval_bpb: 2\nMETRIC val_bpb=3\nval_bpb: 4\n", 4.0),  # the last value wins
    ("val_bpb: 1\nMETRIC val_bpb=3\n", 3.0),
    ("train_val_bpb: 1\nval_bpb_ema: 2\n", None),  # other names are not this metric
    ("val_bpb: 0.9 (best)\n", None),
    ("val_bpb: fast\n", None),
    ("", None),
])
def test_parse_metric_forms(text, expected):
    assert parse_metric(text, "val_bpb") == expected


def test_parse_metric_custom_regex_last_wins():
    text = "epoch 1 acc=0.5\nepoch 2 acc=0.7\nsummary acc=0.9!\n"
    assert parse_metric(text, "acc", r"acc=([0-9.]+)") == 0.9
    assert parse_metric(text, "acc", r"^epoch \d+ acc=([0-9.]+)$") == 0.7
    assert parse_metric(text, "acc", r"loss=([0-9.]+)") is None


# -- keep and discard go through the loop ----------------------------------------------------
def test_keep_and_discard_through_the_loop(project):
    cfg = load(project)
    agent = ScriptedAgent([set_x(2.0), set_x(2.5), set_x(1.5)])
    out = Driver(cfg, "kd", agent, limits=Limits(max_experiments=3)).run()
    rows = rows_of(project, "kd")
    assert [(e.kind, e.status) for e in rows] == [("baseline", "keep"), ("candidate", "keep"),
                                                  ("candidate", "discard"), ("candidate", "keep")]
    assert [e.metric for e in rows] == pytest.approx([4.5, 1.5, 2.75, 0.75])
    assert "better than" in rows[1].reason and "not better" in rows[2].reason
    assert rows[2].evidence["candidate"] == pytest.approx(2.75)
    assert out.incumbent.id == rows[3].id


def test_the_artifact_digest_sees_every_change(tmp_path):
    """Content, mode, a new or renamed file, a symlink's target, an empty folder: each changes the digest."""
    import os

    art = tmp_path / "art"
    (art / "sub").mkdir(parents=True)
    (art / "checkpoint").write_bytes(b"weights")
    (art / "sub" / "extra.bin").write_bytes(b"\0" * 10)
    os.symlink("checkpoint", art / "link")
    seen = {artifact_digest(art)}
    assert artifact_digest(art) in seen and len(next(iter(seen))) == 64  # stable

    def changed(step) -> None:
        step()
        d = artifact_digest(art)
        assert d not in seen, step
        seen.add(d)

    changed(lambda: (art / "checkpoint").write_bytes(b"weightz"))
    changed(lambda: (art / "checkpoint").chmod(0o600))
    changed(lambda: (art / "new").write_bytes(b""))
    changed(lambda: (art / "new").rename(art / "sub" / "new"))
    changed(lambda: ((art / "link").unlink(), os.symlink("sub/extra.bin", art / "link")))
    changed(lambda: (art / "empty").mkdir())


def test_the_evaluation_env_isolates_the_interpreter():
    run_env = {"PATH": "/bin", "PYTHONPATH": "/x", "PYTHONSTARTUP": "/s.py", "PYTHONHOME": "/h",
               "PYTHONUSERBASE": "/u", "PYTHONINSPECT": "1", "PYTHONUNBUFFERED": "1", "AUTORESEARCH_EXTERNAL_EVAL": "1",
               "AUTORESEARCH_CHECKPOINT": "/c"}
    env = evaluation_env(run_env, "s3cret")
    assert env == {"PATH": "/bin", "PYTHONUNBUFFERED": "1", "AUTORESEARCH_CHECKPOINT": "/c", "PYTHONSAFEPATH": "1",
                   "PYTHONNOUSERSITE": "1", "AUTORESEARCH_EVAL_SECRET": "s3cret"}
