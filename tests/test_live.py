"""The live view of `autoresearch run` (live.py) and the progress-line format it reads (progress.py).

The view is the real rich Live renderer, writing to a terminal-like stream, on a real loop whose
run prints progress lines and whose `metric.command` evaluation takes a while; `watch` reads the
same progress from the logs of another process's run.
"""

from __future__ import annotations

import io
import re
import threading
import time
from pathlib import Path

import pytest
from conftest import ScriptedAgent, git, make_project, set_x

from autoresearch.config import load
from autoresearch.live import LiveReporter
from autoresearch.driver import Driver, Limits
from autoresearch.progress import last_progress, parse_line
from autoresearch.watch import snapshot, state_line

# Trains for ~1.5 s printing progress lines (the GPT template's format), then an evaluation that takes
# ~1.5 s prints the metric; the run's own output has no metric at all.
TRAIN = '''\
import time

X = 3.0
Y = 2
for step in range(1, 6):
    time.sleep(0.3)
    print(f"step {step:05d} | loss {4.0 / step:.4f} | {1000 * step:,} tok/s | {20 * step}% of budget", flush=True)
'''
EVALUATE = '''\
import os, sys, time
sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # the evaluation's Python leaves it out (README)
from train import X
time.sleep(1.5)
print(f"score: {(X - 1.0) ** 2 + 0.5:.6f}")
'''
CHECK = "import time\ntime.sleep(1.0)\n"


@pytest.mark.parametrize("line,step,loss,rate", [
    ("step 00120 | loss 3.2145 | 41,230 tok/s | 40% of budget", 120, 3.2145, 41230.0),  # the GPT template's
    ("step 1710 | loss 0.6837 | 25% of budget", 1710, 0.6837, None),  # the quickstart's
    ("step 7 | train_loss=0.5 | tokens/s 1_000", 7, 0.5, 1000.0),
    ("  step 3", 3, None, None),
])
def test_progress_lines_are_parsed(line, step, loss, rate):
    p = parse_line(line)
    assert p is not None and (p.step, p.loss, p.tokens_per_s) == (step, loss, rate)


@pytest.mark.parametrize("line", ["val_bpb: 1.02", "steps 4 | loss 1", "step: 4", "step four | loss 1",
                                  "num_steps: 120", "stepping 3"])
def test_other_lines_are_not_progress(line):
    assert parse_line(line) is None


def test_last_progress_reads_the_end_of_a_log(tmp_path):
    log = tmp_path / "run.log"
    assert last_progress(log) is None  # no log yet
    log.write_text("scale cpu | params 1.2M\n" + "x" * 50000 + "\nstep 00010 | loss 2.5000 | 9,000 tok/s\n"
                   "step 00020 | loss 2.2500 | 9,500 tok/s\nval_bpb: 1.5\n")
    p = last_progress(log)
    assert (p.step, p.loss, p.tokens_per_s) == (20, 2.25, 9500.0)
    assert p.text() == "step 20 · loss 2.25 · 9,500 tok/s"


def progress_project(root: Path, checks: str = "") -> Path:
    root = make_project(root, files={"train.py": TRAIN, "evaluate.py": EVALUATE, "slow_check.py": CHECK},
                        extra_toml='command = "python evaluate.py"\ntimeout_s = 30',
                        extra_experiment=f'checks = "{checks}"')
    toml = (root / "autoresearch.toml").read_text().replace("budget_s = 1\n", "budget_s = 3\n")
    (root / "autoresearch.toml").write_text(toml.replace('protected = ["prepare.py"]',
                                                         'protected = ["prepare.py", "evaluate.py"]'))
    git(root, "commit", "-qam", "budget 3 s, evaluate.py protected")
    return root


def test_live_view_shows_progress_while_training_and_evaluating_while_evaluating(tmp_path):
    """Before, the view showed only a time bar while training and froze during the evaluation."""
    from rich.console import Console

    root = progress_project(tmp_path / "p", checks="python slow_check.py")

    out = io.StringIO()
    reporter = LiveReporter("score", 3.0, "t", console=Console(file=out, force_terminal=True, width=140))
    frames: list[str] = []  # what the view showed, sampled like a person glancing at it

    def glance() -> None:
        snap = Console(file=io.StringIO(), width=140, record=True)
        while not done.is_set():
            snap.print(reporter.frame())
            frames.append(snap.export_text(clear=True))
            time.sleep(0.1)

    done = threading.Event()
    t = threading.Thread(target=glance, daemon=True)
    t.start()
    try:
        Driver(load(root), "t", ScriptedAgent([set_x(2.0)]), limits=Limits(max_experiments=1),
             reporter=reporter).run()
    finally:
        done.set()
        t.join()
        reporter.close()
    training = [f for f in frames if re.search(r"step \d+ · loss [\d.]+ · [\d,]+ tok/s", f) and "budget" in f]
    evaluating = [f for f in frames if "evaluating" in f and "metric.command has been evaluating it" in f]
    assert training, frames[-5:]
    assert evaluating, frames[-5:]
    assert any("step 5 · loss 0.8 · 5,000 tok/s" in f for f in evaluating)  # the run's last line, kept
    assert any(re.search(r"for [1-9]s", f) for f in evaluating)  # its clock moves while nothing reports
    assert any("running the checks (experiment.checks)" in f and "evaluating" not in f for f in frames)
    written = out.getvalue()  # the real Live output to the terminal stream
    assert "tok/s" in written and "metric.command has been evaluating it" in written


def test_watch_shows_the_progress_and_the_evaluation_of_a_running_loop(tmp_path):
    """`watch` (another process in real use; here the same one, reading only the ledger and the logs)."""
    root = progress_project(tmp_path / "p")
    lines: list[str] = []
    loop = threading.Thread(target=lambda: Driver(load(root), "t", ScriptedAgent([set_x(2.0)]),
                                                limits=Limits(max_experiments=1)).run(), daemon=True)
    loop.start()
    while loop.is_alive():
        try:
            lines.append(state_line(snapshot(root, "t")))
        except Exception:  # no ledger yet
            pass
        time.sleep(0.1)
    training = [ln for ln in lines if re.search(r"^running #\d+ .* \| step \d+ · loss [\d.]+ · [\d,]+ tok/s$", ln)]
    evaluating = [ln for ln in lines if re.search(r"^running #\d+ .* \| evaluating \(metric.command\)", ln)]
    assert training and evaluating, lines
    assert any(re.search(r"evaluating \(metric.command\) for 0m0[1-9]s", ln) for ln in evaluating), evaluating
