"""`autoresearch report --html` on a 30-experiment run, opened in a real headless Chromium.

The run is built with real git commits and real ledger rows (tests/runbuilder.py). The page is
written by the CLI as a real process, then Chromium loads it from a file with no network: the
DOM after its scripts ran must hold the decoded chart and the table, the status filter must
hide rows, and a screenshot is kept at tests/artifacts/report_html.png.
Skips only where no Chromium can be found (CI installs Debian's `chromium`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import cli
from runbuilder import RunBuilder

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
KEEP_EVIDENCE = {"runs": 3, "p_value": 0.011, "effect_sigma": 2.6}

# (edit, description, status, metric, extra fields)
NIGHT = [
    ({"LEARNING_RATE": 0.03}, "raise the learning rate to 0.03", "keep", 0.9921),
    ({"DROPOUT": 0.2}, "dropout 0.1 -> 0.2", "discard", 0.9950),
    ({"DEPTH": 16}, "depth 16", "crash", None, {"reason": "exit code 1",
                                                "log_tail": "RuntimeError: CUDA out of memory"}),
    ({"WARMUP_STEPS": 200}, "warmup 200 steps", "keep", 0.9890),
    ({"BATCH_SIZE": 128}, "batch size 128", "discard", 0.9932),
    ({"WEIGHT_DECAY": 0.05}, "weight decay 0.05", "discard", 0.9911),
    ({"WIDTH": 1024}, "width 1024", "timeout", None, {"reason": "killed after 660s (experiment.timeout_s)"}),
    ({"SOFTCAP": 12.0}, "logit soft-cap 15 -> 12", "keep", 0.9862),
    ({"LEARNING_RATE": 0.05}, "learning rate 0.05", "discard", 0.9901),
    (None, "patch evaluate_bpb to skip half the shard", "violation", None,
     {"reason": "changed files outside `experiment.editable`: prepare.py (refused before running)"}),
    ({"DROPOUT": 0.0}, "no dropout", "discard", 0.9871),
    ({"WEIGHT_DECAY": 0.01}, "weight decay 0.01 <on matrices only>", "keep", 0.9840),
    ({"DEPTH": 10}, "depth 10", "checks_failed", 0.9811, {"reason": "checks failed: 2 tests failed"}),
    ({"WIDTH": 288}, "width 288", "discard", 0.9852),
    ({"BATCH_SIZE": 96}, "batch size 96", "crash", None, {"reason": "exit code 1"}),
    ({"WIDTH": 320}, "width 320", "keep", 0.9815),
    ({"WARMUP_STEPS": 300}, "warmup 300 steps", "discard", 0.9822),
    ({"SOFTCAP": 10.0}, "soft-cap 10", "discard", 0.9830),
    ({"DEPTH": 9}, "depth 9", "keep", 0.9797),
    ({"LEARNING_RATE": 0.035}, "learning rate 0.035", "discard", 0.9803),
    ({"DROPOUT": 0.05}, "dropout 0.05", "interrupted", None, {"reason": "stopped by SIGINT"}),
    ({"WEIGHT_DECAY": 0.02}, "weight decay 0.02", "discard", 0.9801),
    ({"BATCH_SIZE": 80}, "batch size 80", "discard", 0.9812),
    ({"WARMUP_STEPS": 150}, "warmup 150 steps", "keep", 0.9779),
    ({"WIDTH": 352}, "width 352", "discard", 0.9788),
    ({"DEPTH": 12}, "depth 12", "crash", None, {"reason": "exit code 137"}),
    ({"SOFTCAP": 13.5}, "soft-cap 13.5", "discard", 0.9783),
    ({"LEARNING_RATE": 0.028}, "learning rate 0.028", "keep", 0.9764),
    ({"DROPOUT": 0.15}, "dropout 0.15", "discard", 0.9790),
    ({"BATCH_SIZE": 72}, "batch size 72", "discard", 0.9770),
]


def build_night(root: Path) -> RunBuilder:
    b = RunBuilder(root, baseline=0.9979)
    for i, (edit, desc, status, metric, *extra) in enumerate(NIGHT):
        fields = dict(extra[0]) if extra else {}
        fields.update(cost_usd=0.04, tokens_in=9000 + 100 * i, tokens_out=700)
        if status == "keep":
            fields["evidence"] = KEEP_EVIDENCE
        b.experiment(edit, desc, status, metric, **fields)
        if i == 11:
            b.ledger.event("t", "steering", 'program.md changed (sha256:1a2b3c4d5e6f, was sha256:0f0e0d0c0b0a), '
                           '+1 -0 lines: line 5 now "Try the schedule before the architecture."')
    b.ledger.event("t", "pause", "paused after #20: waiting for `autoresearch resume`", 20)
    b.ledger.event("t", "resume", "resumed after 95s paused", 20)
    return b


def _chromium() -> str:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome") or ""


def _browser(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    exe = _chromium()
    if not exe:
        pytest.skip("no chromium here (CI installs Debian's `chromium`)")
    base = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
            "--no-first-run", "--mute-audio", "--virtual-time-budget=5000",
            "--run-all-compositor-stages-before-draw"]
    return subprocess.run(base + list(args), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("html") / "proj"
    b = build_night(root)
    assert len(b.rows()) == 31  # the baseline and 30 experiments
    b.close()
    r = cli("report", "--html", cwd=root)
    assert r.returncode == 0, r.stderr
    path = Path(r.stdout.strip())
    assert path == root / "report.html"
    return path


def test_the_file_is_self_contained_and_escaped(page: Path):
    text = page.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), "something would be fetched"
    assert "@import" not in text and "url(http" not in text
    assert "data:image/png;base64," in text
    assert "weight decay 0.01 &lt;on matrices only&gt;" in text and "<on matrices only>" not in text
    assert text.count("<tr class=") == 31


def test_chromium_runs_the_page_chart_table_and_filters(page: Path):
    dom = _browser("--dump-dom", page.as_uri()).stdout
    assert 'data-ready="1"' in dom, "the page's script did not run"
    width = re.search(r'id="chart"[^>]*data-loaded="(\d+)"|data-loaded="(\d+)"[^>]*id="chart"', dom)
    assert width and int(width.group(1) or width.group(2)) > 1000, "the chart did not decode"
    assert re.search(r'id="experiments" data-visible="31"', dom)
    assert "showing 31 of 31" in dom
    for status, n in (("keep", 9), ("discard", 15), ("crash", 3)):  # the baseline is a keep too
        assert re.search(rf'data-status="{status}"[^>]*>{status}<span class="c">{n}</span>', dom), status
    for expected in ("Kept changes", "+SOFTCAP = 12.0", "p=0.011", "Notes from the run",
                     "line 5 now", "Agent cost", "$1.20"):
        assert expected in dom, expected

    kept_only = _browser("--dump-dom", page.as_uri() + "#status=keep").stdout
    assert re.search(r'id="experiments" data-visible="9"', kept_only), "the status filter did not apply"
    assert kept_only.count('hidden=""') == 31 - 9
    assert "showing 9 of 31" in kept_only


def test_screenshot_is_kept_as_an_artifact(page: Path):
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report_html.png"
    shot.unlink(missing_ok=True)
    r = _browser(f"--screenshot={shot}", "--window-size=1280,2600", page.as_uri())
    assert shot.exists(), r.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 2600)
    assert len(data) > 100_000, "a blank page compresses to almost nothing"
