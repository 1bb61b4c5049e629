"""report.py on real ledger rows: the chart is a real PNG, the numbers are the right numbers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from autoresearch.ledger import Experiment, Ledger
from autoresearch.report import progress_png, report_md, summary

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def record(ledger: Ledger, description: str, status: str, metric: float | None, *, kind: str = "candidate",
           tag: str = "t", wall_s: float = 310.0, **fields) -> Experiment:
    """begin() then finish() a row, as the loop does, and return it as read back."""
    n = len(ledger.experiments())
    exp = Experiment(tag=tag, parent="p" * 40, commit=f"{n:07x}" + "c" * 33, description=description, kind=kind)
    ledger.begin(exp)
    exp.status, exp.metric, exp.wall_s = status, metric, wall_s
    for k, v in fields.items():
        setattr(exp, k, v)
    ledger.finish(exp)
    return ledger.get(exp.id)


# A night like the original's: keeps, noisy discards, one absurd discard, crashes, a timeout, a hack.
HISTORY = [
    ("baseline", "keep", 0.997900, "baseline"),
    ("increase matrix LR to 0.04", "keep", 0.993800, "candidate"),
    ("change seed to 42", "discard", 0.997200, "candidate"),
    ("swap ReLU^2 for SwiGLU MLP", "crash", None, "candidate"),
    ("SwiGLU MLP, fix hidden dim to multiple of 64", "discard", 0.994900, "repair"),
    ("add warmup of 200 steps to Muon momentum", "keep", 0.991200, "candidate"),
    ("double batch size, halve steps", "discard", 1.004100, "candidate"),
    ("learning rate 10x (typo in exponent)", "discard", 1.420000, "candidate"),
    ("remove value embeddings", "discard", 0.996500, "candidate"),
    ("depth 10, d_model 448", "timeout", None, "candidate"),
    ("lower logit soft-cap to 12", "keep", 0.989400, "candidate"),
    ("weight decay 0.1 on embeddings", "discard", 0.990100, "candidate"),
    ("sliding window short=256 long=2048", "keep", 0.986300, "candidate"),
    ("patch evaluate_bpb to skip half the shard", "violation", None, "candidate"),
    ("QK-norm with learned scale", "discard", 0.987100, "candidate"),
    ("torch.compile mode=max-autotune", "crash", None, "candidate"),
    ("warmdown ratio 0.5 -> 0.65", "keep", 0.983900, "candidate"),
    ("Muon ns_steps 5 -> 4", "discard", 0.984600, "candidate"),
    ("rotary base 10000 -> 50000", "keep", 0.982000, "candidate"),
    ("tie embeddings", "discard", 0.991800, "candidate"),
    ("AdamW beta2 0.95 -> 0.99 for scalars", "discard", 0.982700, "candidate"),
    ("fp8 matmuls in MLP", "crash", None, "candidate"),
    ("init output projection to zero in every block", "keep", 0.979800, "candidate"),
    ("grad clip 1.0", "discard", 0.980400, "candidate"),
    ("value embeddings on every layer instead of alternating", "discard", 0.981200, "candidate"),
]


def write_history(ledger: Ledger, tag: str = "t") -> list[Experiment]:
    for i, (desc, status, metric, kind) in enumerate(HISTORY):
        extra = {}
        if status == "keep" and kind != "baseline":
            extra["evidence"] = {"runs": 3, "mean": metric, "p_value": 0.012, "effect_sigma": 2.4}
        if status == "crash":
            extra["log_tail"] = "Traceback (most recent call last):\n  ...\nRuntimeError: shape mismatch\n"
        if status == "violation":
            extra["reason"] = "protected file changed: prepare.py"
        record(ledger, desc, status, metric, kind=kind, tag=tag, wall_s=60.0 if status == "crash" else 330.0,
               tokens_in=1000 * (i + 1), tokens_out=100, cost_usd=0.05, **extra)
    return ledger.experiments(tag)


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    led = Ledger(tmp_path / "ledger.db")
    yield led
    led.close()


def assert_png(path: Path, min_w: int = 1200, min_h: int = 600) -> tuple[int, int]:
    import matplotlib.image as mpimg

    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 10_000  # a real drawing, not an empty canvas
    img = mpimg.imread(str(path))
    h, w = img.shape[:2]
    assert min_w <= w <= 4000 and min_h <= h <= 3000, (w, h)
    assert not list(path.parent.glob(f".{path.name}.*.tmp")), "temporary file left behind"
    return w, h


# -- summary ---------------------------------------------------------------------------------
def test_summary_of_a_night(ledger: Ledger) -> None:
    rows = write_history(ledger)
    s = summary(rows, lower_is_better=True)
    assert s["n"] == 25
    assert s["counts"] == {"keep": 8, "discard": 12, "crash": 3, "timeout": 1, "violation": 1}
    assert list(s["counts"]) == ["keep", "discard", "crash", "timeout", "violation"]
    assert s["kept"] == 7 and s["judged"] == 24
    assert s["keep_rate"] == pytest.approx(7 / 24)
    assert s["baseline_metric"] == pytest.approx(0.9979)
    assert s["best_metric"] == pytest.approx(0.9798)
    assert s["best_id"] == rows[22].id and s["best_commit"] == rows[22].commit
    assert s["improvement"] == pytest.approx(0.0181)
    assert s["improvement_pct"] == pytest.approx(0.0181 / 0.9979 * 100)
    assert s["wall_s_total"] == pytest.approx(3 * 60.0 + 22 * 330.0)
    assert s["cost_usd_total"] == pytest.approx(25 * 0.05)
    assert s["tokens_in_total"] == sum(1000 * (i + 1) for i in range(25))
    assert s["tokens_out_total"] == 2500


def test_best_is_the_incumbent_not_the_lowest_number(ledger: Ledger) -> None:
    record(ledger, "baseline", "keep", 1.00, kind="baseline")
    record(ledger, "lucky run", "discard", 0.90)  # e.g. rejected by the noise-aware policy
    record(ledger, "real gain", "keep", 0.98)
    record(ledger, "simplification, kept on equal metric", "keep", 0.985)
    record(ledger, "interrupted by ctrl-c", "interrupted", None)
    ledger.begin(Experiment(tag="t", parent=None, commit=None, description="still going"))
    s = summary(ledger.experiments("t"), lower_is_better=True)
    assert s["best_metric"] == pytest.approx(0.985)
    assert s["best_id"] == 4
    assert s["improvement"] == pytest.approx(0.015)
    # interrupted and running rows never reached a verdict
    assert (s["kept"], s["judged"]) == (2, 3)
    assert s["counts"]["running"] == 1 and s["counts"]["interrupted"] == 1


def test_summary_maximise(ledger: Ledger) -> None:
    record(ledger, "baseline", "keep", 41.0, kind="baseline")
    record(ledger, "better prompt", "keep", 60.0)
    record(ledger, "worse prompt", "discard", 55.0)
    record(ledger, "best prompt", "keep", 92.0)
    s = summary(ledger.experiments("t"), lower_is_better=False)
    assert s["improvement"] == pytest.approx(51.0)
    assert s["improvement_pct"] == pytest.approx(51.0 / 41.0 * 100)
    assert s["keep_rate"] == pytest.approx(2 / 3)


def test_summary_edge_cases(ledger: Ledger) -> None:
    s = summary([], lower_is_better=True)
    assert s["n"] == 0 and s["counts"] == {} and s["keep_rate"] is None
    assert s["best_metric"] is None and s["improvement"] is None and s["wall_s_total"] == 0

    record(ledger, "baseline", "crash", None, kind="baseline")
    record(ledger, "retry", "timeout", None)
    s = summary(ledger.experiments("t"), lower_is_better=True)
    assert s["baseline_metric"] is None and s["best_metric"] is None and s["best_commit"] is None
    assert s["keep_rate"] == 0.0 and s["improvement"] is None


def test_baseline_without_baseline_kind_is_first_kept(ledger: Ledger) -> None:
    record(ledger, "crash first", "crash", None)
    record(ledger, "first keep", "keep", 2.0)
    record(ledger, "second keep", "keep", 1.5)
    s = summary(ledger.experiments("t"), lower_is_better=True)
    assert s["baseline_metric"] == 2.0 and s["improvement"] == pytest.approx(0.5)
    assert s["improvement_pct"] == pytest.approx(25.0)


# -- progress.png ------------------------------------------------------------------------------
def test_progress_png_of_a_night(ledger: Ledger, tmp_path: Path) -> None:
    rows = write_history(ledger)
    out = progress_png(rows, tmp_path / "progress.png", "val_bpb", lower_is_better=True)
    assert out == tmp_path / "progress.png"
    w, h = assert_png(out)
    assert w > h  # the original's wide chart


def test_progress_png_is_deterministic(ledger: Ledger, tmp_path: Path) -> None:
    rows = write_history(ledger)
    a = progress_png(rows, tmp_path / "a.png", "val_bpb", True).read_bytes()
    b = progress_png(rows, tmp_path / "b.png", "val_bpb", True).read_bytes()
    assert a == b


@pytest.mark.parametrize("case", ["empty", "one", "one_crash", "all_crash", "none_metrics", "max", "nan"])
def test_progress_png_edge_cases(case: str, ledger: Ledger, tmp_path: Path) -> None:
    if case == "one":
        record(ledger, "baseline", "keep", 0.998, kind="baseline")
    elif case == "one_crash":
        record(ledger, "baseline", "crash", None, kind="baseline")
    elif case == "all_crash":
        for i, status in enumerate(["crash", "timeout", "violation", "checks_failed", "interrupted", "crash"]):
            record(ledger, f"attempt {i}", status, None)
    elif case == "none_metrics":
        record(ledger, "baseline", "keep", 0.998, kind="baseline")
        record(ledger, "discarded without a metric", "discard", None)
        record(ledger, "crash", "crash", None)
        record(ledger, "checks failed but measured", "checks_failed", 0.99)
        ledger.begin(Experiment(tag="t", parent=None, commit=None, description="running now"))
    elif case == "max":
        record(ledger, "baseline", "keep", 41.0, kind="baseline")
        for i, v in enumerate([45.0, 60.0, 30.0, 72.0, 5.0, 92.0, 90.0]):
            record(ledger, f"prompt edit {i}", "keep" if v in (60.0, 72.0, 92.0) else "discard", v)
    elif case == "nan":
        record(ledger, "baseline", "keep", 1.0, kind="baseline")
        # rows built in memory (not from the ledger) may carry non-finite metrics
    rows = ledger.experiments("t")
    if case == "nan":
        rows.append(Experiment(tag="t", parent=None, commit=None, description="diverged", status="discard",
                               metric=float("nan"), id=99))
    out = progress_png(rows, tmp_path / "progress.png", "score", lower_is_better=(case != "max"), title="T")
    assert_png(out, min_w=1000, min_h=500)


def test_progress_png_survives_a_wild_outlier_and_flat_history(ledger: Ledger, tmp_path: Path) -> None:
    record(ledger, "baseline", "keep", 1.0, kind="baseline")
    for i in range(5):
        record(ledger, f"no-op {i}", "discard", 1.0)
    record(ledger, "diverged", "discard", 1e9)
    record(ledger, "negative", "discard", -1e9)
    assert_png(progress_png(ledger.experiments("t"), tmp_path / "p.png", "loss", True), min_w=1000, min_h=500)


def test_import_is_cheap() -> None:
    code = "import sys, autoresearch.report; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- report.md ----------------------------------------------------------------------------------
def test_report_md_of_a_night(ledger: Ledger, tmp_path: Path) -> None:
    rows = write_history(ledger, tag="mar5")
    progress_png(rows, tmp_path / "progress.png", "val_bpb", True)
    md = report_md(rows, tmp_path / "report.md", "val_bpb", True, tag="mar5").read_text()

    assert md.startswith("# Autoresearch report: mar5")
    assert "![progress](progress.png)" in md
    assert "| Experiments | 25 |" in md
    assert "keep 8 · discard 12 · crash 3 · timeout 1 · violation 1" in md
    assert "| Keep rate | 7 / 24 (29.2%) |" in md
    assert f"| Baseline val_bpb | 0.9979 (1 run, #{rows[0].id}) |" in md
    assert f"| Best val_bpb | 0.9798 (1 run, `{rows[22].short}`, #{rows[22].id}) |" in md
    assert "| Improvement | val_bpb 0.9979 (1 run) → 0.9798 (1 run), -1.81%; improvement +0.0181" in md
    assert "(lower is better) |" in md
    assert "| Run time | 2h 04m (" in md  # 3*60 + 22*330 = 7440 s
    assert "| Agent cost | $1.25 (325,000 tokens in, 2,500 out) |" in md

    kept_section = md.split("## Kept changes")[1].split("## All experiments")[0]
    kept = [(d, m) for d, s, m, _ in HISTORY if s == "keep"]
    for desc, _ in kept:
        assert desc in kept_section
    for desc, s, _, _ in HISTORY:
        if s != "keep":
            assert desc not in kept_section
    # kept descriptions appear in order
    positions = [kept_section.index(d) for d, _ in kept]
    assert positions == sorted(positions)
    # deltas: vs the previous kept one and vs the baseline
    lr_line = next(ln for ln in kept_section.splitlines() if "increase matrix LR" in ln)
    assert "| -0.004100 | -0.004100 (-0.41%) |" in lr_line
    rope_line = next(ln for ln in kept_section.splitlines() if "rotary base" in ln)
    assert "| 0.982000 | -0.001900 | -0.015900 (-1.59%) |" in rope_line
    assert isinstance(rows[18].evidence, dict), "the ledger must give evidence back as the dict it was given"
    assert "runs=3, mean 0.982000, p=0.012, 2.4σ" in rope_line
    base_line = next(ln for ln in kept_section.splitlines() if ln.startswith(f"| {rows[0].id} |"))
    assert "| 0.997900 | — | — |" in base_line and "baseline" in base_line

    failures = md.split("## Failures")[1]
    assert "**crash** (3)" in failures and "**timeout** (1)" in failures and "**violation** (1)" in failures
    assert "RuntimeError: shape mismatch" in failures  # last line of the log when no reason
    assert "protected file changed: prepare.py" in failures
    assert f"#{rows[13].id} " in failures  # experiment numbers are the ledger ids, as on the chart's x axis


def test_report_md_without_chart_or_cost(ledger: Ledger, tmp_path: Path) -> None:
    record(ledger, "baseline | with a pipe", "keep", 1100.0, kind="baseline")
    record(ledger, "cache templates", "keep", 400.0)
    record(ledger, "drop gzip", "discard", 410.0)
    md = report_md(ledger.experiments("t"), tmp_path / "r.md", "load_ms", True).read_text()
    assert "progress.png" not in md and "Agent cost" not in md
    assert md.startswith("# Autoresearch report\n")
    assert "baseline \\| with a pipe" in md  # a pipe cannot break the table
    assert "| 400.0 | -700.0 | -700.0 (-63.64%) |" in md  # large metrics use fewer decimals
    assert "## Failures" not in md


def test_report_md_maximise(ledger: Ledger, tmp_path: Path) -> None:
    record(ledger, "baseline", "keep", 41.0, kind="baseline")
    record(ledger, "few-shot examples", "keep", 60.0)
    record(ledger, "rubric in system prompt", "keep", 92.0)
    md = report_md(ledger.experiments("t"), tmp_path / "r.md", "score", False).read_text()
    assert "| Improvement | score 41 (1 run) → 92 (1 run), +124.39%; improvement +51" in md
    assert "(higher is better) |" in md
    assert "| 92.000 | +32.000 | +51.000 (+124.39%) |" in md


@pytest.mark.parametrize("case", ["empty", "all_crash", "none_metric_keep"])
def test_report_md_edge_cases(case: str, ledger: Ledger, tmp_path: Path) -> None:
    if case == "all_crash":
        record(ledger, "baseline", "crash", None, kind="baseline", reason="exit code 1")
        record(ledger, "again", "timeout", None, reason="killed after 660 s")
    elif case == "none_metric_keep":
        record(ledger, "kept without a metric (hand-edited ledger)", "keep", None)
    md = report_md(ledger.experiments("t"), tmp_path / "r.md", "val_bpb", True).read_text()
    assert "## Summary" in md and "## Kept changes" in md
    if case == "empty":
        assert "| Experiments | 0 |" in md and "None yet." in md
    if case == "all_crash":
        assert "exit code 1" in md and "killed after 660 s" in md and "Keep rate | 0 / 1 (0.0%)" in md
    if case == "none_metric_keep":
        assert "kept without a metric" in md and "Best val_bpb" not in md


def test_report_md_number_format_ignores_a_wild_discard(ledger: Ledger, tmp_path: Path) -> None:
    record(ledger, "baseline", "keep", 0.9979, kind="baseline")
    record(ledger, "diverged", "discard", 1e9)
    record(ledger, "gain", "keep", 0.9950)
    md = report_md(ledger.experiments("t"), tmp_path / "r.md", "val_bpb", True).read_text()
    assert "| 0.995000 | -0.002900 | -0.002900 (-0.29%) |" in md


def test_evidence_line_marks_a_log_scale_std_and_keeps_a_metric_std_in_metric_format():
    from autoresearch.figures import evidence_text as _evidence

    one_decimal = lambda v: f"{v:.1f}"  # noqa: E731  (the format a metric in the thousands gets)
    relative = _evidence({"runs": 1, "mean": 1400.0, "std": 0.0312, "noise": "relative (std on the log scale)"},
                         one_decimal)
    assert "mean 1400.0" in relative and "std 0.0312 (log)" in relative  # not "std 0.0"
    assert "std 30.0" in _evidence({"runs": 1, "mean": 1400.0, "std": 30.0}, one_decimal)
