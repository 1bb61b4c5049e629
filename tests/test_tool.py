"""Tool mode: a coding agent edits the checkout and calls `autoresearch experiment -m ... --json`.

Every call is the real CLI in a subprocess, on a real repository; the rules of the loop still hold.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import PREPARE, TRAIN, cli, git, make_project, ran, rows_of, set_constant


def experiment(root: Path, message: str, *extra: str) -> dict:
    r = cli("experiment", "-m", message, "--json", "--tag", "tool", *extra, cwd=root, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, f"--json must print one line, got: {r.stdout}"
    return json.loads(lines[0])


def tip(root: Path) -> str:
    return git(root, "rev-parse", "autoresearch/tool")


@pytest.fixture
def proj(tmp_path):
    return make_project(tmp_path / "p", files={"other.py": "VALUE = 1\n"})


def test_keep_discard_crash_violation_in_sequence(proj):
    head = git(proj, "rev-parse", "HEAD")

    # keep: the first call measures the baseline, then the change; the branch advances to it.
    set_constant(proj / "train.py", "X", 2.0)
    v = experiment(proj, "X = 2.0")
    assert v["status"] == "keep" and v["metric"] == pytest.approx(1.5) and v["description"] == "X = 2.0"
    assert v["parent"] == head and v["best_commit"] == v["commit"] == tip(proj)
    assert git(proj, "rev-parse", "--abbrev-ref", "HEAD") == "autoresearch/tool"
    assert git(proj, "rev-parse", "HEAD") == v["commit"]
    assert git(proj, "status", "--porcelain") == ""  # the checkout holds the kept change, clean
    assert "X = 2.0\n" in (proj / "train.py").read_text()
    rows = rows_of(proj, "tool")
    assert [(e.kind, e.status) for e in rows] == [("baseline", "keep"), ("candidate", "keep")]
    assert rows[1].agent == "tool"
    kept = v["commit"]

    # discard: the checkout goes back to the kept state.
    set_constant(proj / "train.py", "X", 2.5)
    v = experiment(proj, "X = 2.5")
    assert v["status"] == "discard" and v["metric"] == pytest.approx(2.75) and v["best_commit"] == kept
    assert tip(proj) == kept and git(proj, "rev-parse", "HEAD") == kept
    assert git(proj, "status", "--porcelain") == "" and "X = 2.0\n" in (proj / "train.py").read_text()

    # crash: the verdict carries the log's tail; the checkout is restored.
    (proj / "train.py").write_text((proj / "train.py").read_text().replace(
        'print(f"aux: 7")', 'raise ValueError("bad hyper-parameter combo")'))
    v = experiment(proj, "a broken idea")
    assert v["status"] == "crash" and v["metric"] is None
    assert "ValueError: bad hyper-parameter combo" in v["log_tail"] and Path(v["log"]).exists()
    assert tip(proj) == kept and git(proj, "status", "--porcelain") == ""

    # violation: a non-editable file changed; refused before running, and put back.
    set_constant(proj / "train.py", "X", 1.5)
    (proj / "prepare.py").write_text("OFFSET = -10.0\n")
    (proj / "other.py").write_text("VALUE = 2\n")
    v = experiment(proj, "X = 1.5 and a better evaluator")
    assert v["status"] == "violation" and "prepare.py" in v["reason"] and "other.py" in v["reason"]
    assert v["metric"] is None and v["id"] not in ran(proj, "tool")
    assert (proj / "prepare.py").read_text() == PREPARE and (proj / "other.py").read_text() == "VALUE = 1\n"
    assert tip(proj) == kept

    # the change to train.py is still there to retry, now legal
    v = experiment(proj, "X = 1.5")
    assert v["status"] == "keep" and v["metric"] == pytest.approx(0.75) and tip(proj) == v["commit"]
    assert git(proj, "status", "--porcelain") == ""
    statuses = [e.status for e in rows_of(proj, "tool")]
    assert statuses == ["keep", "keep", "discard", "crash", "violation", "keep"]
    assert len((proj / "results.tsv").read_text().splitlines()) == 7


def test_no_change_is_a_discard_and_junk_is_ignored(proj):
    (proj / "scratch.txt").write_text("my notes\n")  # untracked, not editable: not the experiment's business
    v = experiment(proj, "nothing")
    assert v["status"] == "discard" and "no change" in v["reason"]
    assert (proj / "scratch.txt").exists()


def test_protected_change_during_the_run_is_a_violation(proj):
    hack = "import json\nopen('prepare.py', 'a').write('# x\\n')\n"
    (proj / "train.py").write_text(TRAIN.replace("import json\n", hack, 1))
    v = experiment(proj, "touch the evaluator at run time")
    assert v["status"] == "violation" and "prepare.py" in v["reason"]
    assert (proj / "prepare.py").read_text() == PREPARE and (proj / "train.py").read_text() == TRAIN
    assert git(proj, "status", "--porcelain") == ""


def test_plain_output_and_a_bad_config(proj):
    set_constant(proj / "train.py", "X", 2.0)
    r = cli("experiment", "-m", "X = 2.0", "--tag", "tool", cwd=proj)
    assert r.returncode == 0 and r.stdout.startswith("#2 keep: score=1.5")
    (proj / "autoresearch.toml").write_text((proj / "autoresearch.toml").read_text() + "bogus = 1\n")
    r = cli("experiment", "-m", "x", "--json", cwd=proj)
    assert r.returncode == 1 and "unknown key `policy.bogus`" in r.stderr and "Traceback" not in r.stderr


def test_a_commit_the_coding_agent_made_itself_is_checked_too(proj):
    set_constant(proj / "train.py", "X", 2.0)
    v = experiment(proj, "X = 2.0")
    assert v["status"] == "keep"
    kept = v["commit"]
    set_constant(proj / "train.py", "X", 1.5)
    (proj / "other.py").write_text("VALUE = 2\n")
    git(proj, "commit", "-qam", "the agent commits by itself")  # moves autoresearch/tool behind the harness's back
    v = experiment(proj, "X = 1.5, committed by me")
    assert v["status"] == "violation" and "other.py" in v["reason"] and v["id"] not in ran(proj, "tool")
    assert tip(proj) == kept and git(proj, "rev-parse", "HEAD") == kept
    assert (proj / "other.py").read_text() == "VALUE = 1\n"


def test_links_special_files_and_look_alikes_are_refused_in_the_checkout(proj, tmp_path):
    """The same change checks as a proposal's: a symlink or a fifo where train.py was is a violation (put
    back); `sub/train.py` is not `train.py` (anchored patterns) and is never committed."""
    set_constant(proj / "train.py", "X", 2.0)
    v = experiment(proj, "X = 2.0")
    assert v["status"] == "keep"
    outside = tmp_path / "elsewhere.py"
    outside.write_text((proj / "train.py").read_text().replace("X = 2.0", "X = 1.0"))
    (proj / "train.py").unlink()
    (proj / "train.py").symlink_to(outside)
    v = experiment(proj, "train.py is a link")
    assert v["status"] == "violation" and "train.py is a symlink" in v["reason"]
    assert not (proj / "train.py").is_symlink() and "X = 2.0\n" in (proj / "train.py").read_text()
    (proj / "train.py").unlink()
    os.mkfifo(proj / "train.py")
    v = experiment(proj, "train.py is a fifo")
    assert v["status"] == "violation" and "not a regular file" in v["reason"]
    assert "X = 2.0\n" in (proj / "train.py").read_text()
    (proj / "sub").mkdir()
    (proj / "sub" / "train.py").write_text("X = 0\n")
    set_constant(proj / "train.py", "X", 1.5)
    v = experiment(proj, "X = 1.5")
    assert v["status"] == "keep"
    assert git(proj, "show", "--name-only", "--format=", v["commit"]).split() == ["train.py"]
