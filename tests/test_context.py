"""What the agent sees: bounded, summarised, and still naming what matters.

Real config loading, a real SQLite ledger with hundreds of rows, real git diffs.
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

from autoresearch.agents import notebook
from autoresearch.agents.context import CHARS_PER_TOKEN, Context, change_key, estimate_tokens, read_files
from autoresearch.config import load
from autoresearch.ledger import Experiment, Ledger

TRAIN = "".join(f"PARAM_{i} = {i + 1}.0  # a hyper-parameter\n" for i in range(40)) + \
    "def train():\n    return sum([PARAM_0, PARAM_1])\n\nprint(f'val_loss: {train():.4f}')\n"
PREPARE = "# frozen evaluation\n" + "".join(f"DATA_{i} = {i}\n" for i in range(200))


def project(tmp_path: Path, train: str = TRAIN, prepare: str = PREPARE) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "train.py").write_text(train)
    (root / "prepare.py").write_text(prepare)
    (root / "program.md").write_text("# Program\nMake val_loss lower. Keep the code simple.\n")
    (root / "autoresearch.toml").write_text(
        '[experiment]\nrun = "python train.py"\nbudget_s = 1\neditable = ["train.py"]\nprotected = ["prepare.py"]\n'
        '[metric]\nname = "val_loss"\ndirection = "min"\n')
    return root


def long_history(ledger: Ledger, n: int = 500, seed: int = 0) -> list[Experiment]:
    """A long night: a baseline, slow progress, noise, crashes with logs, violations."""
    rng = random.Random(seed)
    best = 2.0
    rows = []
    for i in range(n):
        kind = "baseline" if i == 0 else "candidate"
        desc = "baseline" if i == 0 else f"experiment {i}: tweak PARAM_{i % 40} by {rng.uniform(0.5, 2):.3f}"
        status, metric, tail, reason = "discard", best + abs(rng.gauss(0.02, 0.02)), "", "not better"
        r = rng.random()
        if i == 0:
            status, metric, reason = "keep", best, ""
        elif i in (77, 230, 401):  # the three big wins, named so the test can look for them
            best -= 0.1 + i / 10000
            status, metric, reason = "keep", best, "better"
            desc = {77: "switch the optimizer to AdamW with warmup", 230: "double the model width",
                    401: "cosine schedule with a long warmdown"}[i]
        elif r < 0.05:
            best -= 0.001
            status, metric, reason = "keep", best, "better"
        elif r < 0.25:
            status, metric, reason = "crash", None, "exit code 1"
            tail = "\n".join(f"log line {k} of experiment {i}" for k in range(120)) + f"\nTraceback: boom {i}"
        elif r < 0.28:
            status, metric, reason = "violation", None, "changed prepare.py"
        exp = Experiment(tag="t", parent="p" * 40, commit=f"{i:07x}" + "c" * 33, description=desc, kind=kind,
                         patch=f"diff --git a/train.py b/train.py\n--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n"
                               f"-PARAM_{i % 40} = 1.0\n+PARAM_{i % 40} = {i}.5\n")
        ledger.begin(exp)
        exp.status, exp.metric, exp.log_tail, exp.reason = status, metric, tail, reason
        ledger.finish(exp)
        rows.append(exp)
    # The very last one is a crash, with a distinctive last line.
    exp = Experiment(tag="t", parent="p" * 40, commit="f" * 40, description="fused attention kernel", kind="candidate")
    ledger.begin(exp)
    exp.status, exp.reason = "crash", "exit code 1"
    exp.log_tail = "\n".join(f"step {k}" for k in range(200)) + "\nRuntimeError: CUDA kernel failed LAST-CRASH-MARK"
    ledger.finish(exp)
    return ledger.experiments("t")


def make_context(root: Path, ledger: Ledger, **kw) -> Context:
    cfg = load(root)
    return Context(cfg=cfg, tag="t", program=(root / "program.md").read_text(),
                   files=read_files(root, cfg.experiment.editable, cfg.experiment.protected),
                   readonly=read_files(root, cfg.experiment.protected), history=ledger.experiments("t"),
                   incumbent=ledger.incumbent("t"), **kw)


def test_500_experiments_stay_under_the_bound_and_name_the_best_and_the_last_crash(tmp_path):
    root = project(tmp_path)
    ledger = Ledger(root / ".autoresearch" / "ledger.db")
    rows = long_history(ledger)
    assert len(rows) == 501
    ctx = make_context(root, ledger)
    for bound in (60000, 12000, 6000):
        text = ctx.render(max_tokens=bound)
        assert estimate_tokens(text) <= bound, bound
        assert len(text) <= bound * CHARS_PER_TOKEN
        # The best changes, by gain, are named.
        for desc in ("switch the optimizer to AdamW with warmup", "double the model width",
                     "cosine schedule with a long warmdown"):
            assert desc in text, (bound, desc)
        # The last crash: its description and the end of its log, never the whole log.
        assert "fused attention kernel" in text
        assert "LAST-CRASH-MARK" in text
        assert "step 100\n" not in text  # only the last lines of the log
        assert "501 experiments" in text  # counts per status cover everything
        assert "crash" in text and "violation" in text
        # Editable file in full at these bounds.
        assert "PARAM_39 = 40.0" in text
    # Summarised, not pasted: a small fraction of the 500 descriptions appear.
    text = ctx.render(max_tokens=12000)
    shown = sum(f"experiment {i}:" in text for i in range(1, 500))
    assert shown < 120
    assert "Trend of the best" in text and "Near-misses" in text


def test_tiny_bound_cuts_files_last_and_still_fits(tmp_path):
    root = project(tmp_path, train=TRAIN * 30, prepare=PREPARE * 30)
    ledger = Ledger(root / ".autoresearch" / "ledger.db")
    long_history(ledger, n=120)
    ctx = make_context(root, ledger)
    text = ctx.render(max_tokens=4000)
    assert len(text) <= 4000 * CHARS_PER_TOKEN
    assert "cut to fit" in text  # the files were cut, with a marker
    assert "cosine schedule with a long warmdown" not in text  # n=120: that win never happened
    assert "switch the optimizer to AdamW with warmup" in text
    # With room, the read-only file is cut before the editable one is.
    mid = ctx.render(max_tokens=30000)
    assert len(mid) <= 30000 * CHARS_PER_TOKEN
    assert (TRAIN * 30).rstrip() in mid  # the editable file in full
    assert "Read-only files (never change these; shown for reference, cut to fit)" in mid
    assert (PREPARE * 30).rstrip() not in mid


def test_readonly_files_are_marked_and_protected_never_listed_as_editable(tmp_path):
    root = project(tmp_path)
    ctx = make_context(root, Ledger(root / ".autoresearch" / "ledger.db"))
    text = ctx.render()
    ed, ro = text.index("# Editable files"), text.index("# Read-only files")
    assert text.index("## train.py") > ed and text.index("## prepare.py") > ro
    assert "Never change: prepare.py" in text
    assert "No experiments yet" in text


def test_repair_shows_the_crash_log_tail_of_50_lines(tmp_path):
    root = project(tmp_path)
    ledger = Ledger(root / ".autoresearch" / "ledger.db")
    rows = long_history(ledger, n=30)
    crashed = rows[-1]
    ctx = make_context(root, ledger, repair=crashed)
    text = ctx.render()
    assert "crashed: fix it" in text and "LAST-CRASH-MARK" in text
    assert "step 151\n" in text and "step 150\n" not in text  # exactly the last 50 lines (150 is the 51st)


def test_find_repeat_ignores_context_lines_and_parents(tmp_path):
    root = project(tmp_path)
    ledger = Ledger(root / ".autoresearch" / "ledger.db")
    long_history(ledger, n=50)
    ctx = make_context(root, ledger)
    same = ("diff --git a/train.py b/train.py\nindex 123..456 100644\n--- a/train.py\n+++ b/train.py\n"
            "@@ -10,3 +10,3 @@ other context\n unrelated\n-PARAM_7 = 1.0\n+PARAM_7 =   7.5\n more\n")
    hit = ctx.find_repeat(same)
    assert hit is not None and hit.id == 8  # row ids start at 1; experiment 7 is id 8
    assert ctx.find_repeat(same.replace("7.5", "7.6")) is None
    assert change_key("") == "" and ctx.find_repeat("") is None


def test_notebook_is_bounded_and_shown(tmp_path):
    root = project(tmp_path)
    ledger = Ledger(root / ".autoresearch" / "ledger.db")
    for i in range(200):
        notebook.append(root, "t", f"idea number {i}: " + "x" * 500, experiment=i, description=f"try {i}")
    text = notebook.read(root, "t")
    assert len(text) <= notebook.MAX_CHARS + notebook.MAX_ENTRY
    assert "idea number 199" in text and "idea number 0:" not in text
    assert text.lstrip().startswith("## before experiment")  # whole entries only
    ctx = make_context(root, ledger, ideas="Human idea: try label smoothing")
    rendered = ctx.render()
    assert "idea number 199" in rendered and "Human idea: try label smoothing" in rendered
    notebook.append(root, "t", "   ", experiment=1)  # empty notes add nothing
    assert notebook.read(root, "t") == text


def test_change_key_from_real_git_diffs(tmp_path):
    """Two commits making the same change on different parents give the same key."""
    repo = tmp_path / "r"
    repo.mkdir()
    git = lambda *a: subprocess.run(["git", *a], cwd=repo, check=True, capture_output=True, text=True).stdout  # noqa
    git("init", "-q")
    git("config", "user.email", "t@t")
    git("config", "user.name", "t")
    (repo / "f.py").write_text("A = 1\nB = 2\nC = 3\n")
    git("add", ".")
    git("commit", "-qm", "base")
    (repo / "f.py").write_text("A = 1\nB = 5\nC = 3\n")
    d1 = git("diff")
    git("commit", "-qam", "b5")
    (repo / "f.py").write_text("A = 9\nB = 2\nC = 3\n")  # a different parent, the same B change after
    git("commit", "-qam", "other parent")
    (repo / "f.py").write_text("A = 9\nB = 5\nC = 3\n")
    d2 = git("diff")
    assert d1 != d2 and change_key(d1) == change_key(d2)
