"""Zero config: a clone of the original three-file layout runs as the original intends.

No autoresearch.toml: train.py is editable, prepare.py protected, the metric val_bpb (lower is better),
memory from peak_vram_mb, results.tsv in the original format. The stand-in train.py keeps the
original's shape (hyper-parameter constants at the top, `from prepare import ...`, the summary block)
but computes val_bpb from its constants in milliseconds on CPU.
"""

from __future__ import annotations

import textwrap

import pytest
from conftest import cli, git, rows_of

PREPARE = textwrap.dedent('''\
    """Frozen: data, tokenizer, the time budget and the evaluation (stand-in)."""
    import os
    MAX_SEQ_LEN = 2048
    TIME_BUDGET = float(os.environ.get("AUTORESEARCH_BUDGET_S", 300))  # training time budget in seconds

    def evaluate_bpb(params):
        """Bits per byte of the 'model' described by params (lower is better)."""
        lr, wd, warmdown, depth = params
        return (0.9979 + 0.5 * (lr - 0.05) ** 2 + 0.1 * (wd - 0.1) ** 2 + 0.01 * (warmdown - 0.6) ** 2
                + 0.001 * abs(depth - 9))
''')

TRAIN = textwrap.dedent('''\
    """Stand-in for the original train.py: same constants block, same summary block, CPU-fast."""
    import time
    from prepare import MAX_SEQ_LEN, TIME_BUDGET, evaluate_bpb

    # Model architecture
    ASPECT_RATIO = 64
    HEAD_DIM = 128
    WINDOW_PATTERN = "SSSL"

    # Optimization
    TOTAL_BATCH_SIZE = 2**19
    EMBEDDING_LR = 0.6
    MATRIX_LR = 0.04
    WEIGHT_DECAY = 0.2
    ADAM_BETAS = (0.8, 0.95)
    WARMUP_RATIO = 0.0
    WARMDOWN_RATIO = 0.5
    FINAL_LR_FRAC = 0.0

    # Model size
    DEPTH = 8
    DEVICE_BATCH_SIZE = 128

    t_start = time.time()
    time.sleep(min(0.2, TIME_BUDGET))  # "training"
    val_bpb = evaluate_bpb((MATRIX_LR, WEIGHT_DECAY, WARMDOWN_RATIO, DEPTH))
    num_params = 50.3 + DEPTH - 8
    print()
    print("---")
    print(f"val_bpb:          {val_bpb:.6f}")
    print(f"training_seconds: {TIME_BUDGET:.1f}")
    print(f"total_seconds:    {time.time() - t_start:.1f}")
    print(f"peak_vram_mb:     {45060.2 + 1000 * (DEPTH - 8):.1f}")
    print(f"mfu_percent:      39.80")
    print(f"total_tokens_M:   499.6")
    print(f"num_steps:        953")
    print(f"num_params_M:     {num_params:.1f}")
    print(f"depth:            {DEPTH}")
''')

PROGRAM = "# autoresearch\n\nThis is an experiment to have the LLM do its own research.\n"


@pytest.fixture
def original(tmp_path):
    root = tmp_path / "autoresearch-clone"
    root.mkdir()
    files = {"prepare.py": PREPARE, "train.py": TRAIN, "program.md": PROGRAM, "README.md": "# autoresearch\n",
             "pyproject.toml": '[project]\nname = "autoresearch"\nversion = "0.1.0"\n', ".gitignore": "__pycache__/\n"}
    for name, text in files.items():
        (root / name).write_text(text)
    git(root, "init", "-q", "-b", "master")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial commit")
    return root


def test_the_original_layout_runs_with_zero_config(original):
    r = cli("run", "--tag", "mar5", "--budget", "1", "--max-experiments", "4", "--agent", "mutate", "--no-live",
            cwd=original, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "zero-config" in r.stdout
    rows = rows_of(original, "mar5")
    assert len(rows) == 5 and rows[0].kind == "baseline" and rows[0].metric == pytest.approx(0.9979 + 0.5 * 0.01 ** 2
                                                                                             + 0.1 * 0.1 ** 2
                                                                                             + 0.01 * 0.1 ** 2 + 0.001)
    assert rows[0].budget_s == 1 and rows[0].timeout_s == 600  # the original's 10-minute kill
    assert rows[0].metrics["peak_vram_mb"] == pytest.approx(45060.2) and rows[0].peak_mem_mb == pytest.approx(45060.2)
    for e in rows[1:]:
        changed = git(original, "diff", "--name-only", e.parent, e.commit).splitlines() if e.commit else []
        assert changed in ([], ["train.py"]), changed  # mutate changes train.py only
        assert "seed" not in e.description.lower()
    tsv = (original / "results.tsv").read_text().splitlines()
    assert tsv[0] == "commit\tval_bpb\tmemory_gb\tstatus\tdescription"
    assert len(tsv) == 6
    first = tsv[1].split("\t")
    assert first == [rows[0].commit[:7], f"{rows[0].metric:.6f}", "44.0", "keep", "baseline"]
    for line, e in zip(tsv[1:], rows):
        cells = line.split("\t")
        assert len(cells) == 5 and cells[3] == e.status
        if e.status in ("keep", "discard"):
            assert float(cells[2]) == pytest.approx(e.peak_mem_mb / 1024, abs=0.05)
        else:
            assert cells[1:3] == ["0.000000", "0.0"]
    assert git(original, "status", "--porcelain") == ""  # results.tsv untracked-and-ignored, as in the original
    assert git(original, "rev-parse", "--abbrev-ref", "HEAD") == "master"
    best = min((e for e in rows if e.status == "keep"), key=lambda e: e.metric)
    assert git(original, "rev-parse", "autoresearch/mar5") == best.commit


def test_a_change_to_prepare_py_is_protected_in_zero_config(original):
    from autoresearch.config import load

    cfg = load(original)
    assert cfg.source == "zero-config"
    assert cfg.is_protected("prepare.py") and not cfg.is_editable("prepare.py") and cfg.is_editable("train.py")
    assert not cfg.is_editable("program.md") and not cfg.is_editable("README.md")
