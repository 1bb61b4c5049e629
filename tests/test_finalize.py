"""finalize: a clean branch with exactly the surviving improvements, in order, ending at the best commit's tree.

Runs are built with real git commits and real ledger rows (tests/runbuilder.py); the CLI runs as a real process.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import cli, git
from runbuilder import RunBuilder

from autoresearch.finalize import FinalizeError, finalize

EVIDENCE = {"runs": [0.99, 0.991, 0.989], "mean": 0.99, "p_value": 0.012}


def night(tmp_path: Path) -> tuple[RunBuilder, dict]:
    """Keeps, discards, a crash, and a keep later undone by another keep (which also adds its own change)."""
    b = RunBuilder(tmp_path / "proj")
    ex = {}
    ex["lr"] = b.experiment({"LEARNING_RATE": 0.04}, "raise the learning rate to 0.04", "keep", 0.990,
                            evidence=EVIDENCE)
    b.experiment({"DROPOUT": 0.2}, "more dropout", "discard", 0.995)
    ex["wd"] = b.experiment({"WEIGHT_DECAY": 0.01}, "weight decay 0.01", "keep", 0.985,
                            evidence={"runs": 3, "p_value": 0.03})
    b.experiment({"DEPTH": 12}, "depth 12", "crash", None, reason="exit code 1")
    # Undoes the learning-rate keep (back to 0.02) and widens the model: the LR keep no longer contributes.
    ex["width"] = b.experiment({"LEARNING_RATE": 0.02, "WIDTH": 320}, "lr back to 0.02, width 320", "keep", 0.980)
    b.experiment({"SOFTCAP": 12.0}, "lower the soft-cap", "discard", 0.983)
    ex["batch"] = b.experiment({"BATCH_SIZE": 128}, "batch size 128", "keep", 0.975, evidence={"runs": 2})
    b.experiment({"WARMUP_STEPS": 200}, "longer warmup", "discard", 0.976)
    return b, ex


def branch_commits(root: Path, base: str, branch: str) -> list[str]:
    return git(root, "rev-list", "--reverse", f"{base}..{branch}").split()


def test_finalize_keeps_exactly_the_surviving_improvements_in_order(tmp_path: Path):
    b, ex = night(tmp_path)
    root = b.root
    best = git(root, "rev-parse", "autoresearch/t")
    assert best == ex["batch"].commit
    head_before = git(root, "rev-parse", "HEAD")

    done = finalize(root, "t", b.ledger, branch="final")

    commits = branch_commits(root, b.baseline.commit, "final")
    subjects = [git(root, "log", "-1", "--format=%s", c) for c in commits]
    assert subjects == ["weight decay 0.01", "lr back to 0.02, width 320", "batch size 128"]
    assert [e.id for e, _ in done.commits] == [ex["wd"].id, ex["width"].id, ex["batch"].id]
    assert [e.id for e, _ in done.dropped] == [ex["lr"].id]
    assert "undone" in done.dropped[0][1]
    # The branch starts at the starting point, and its tip is the best commit's tree, byte for byte.
    assert git(root, "rev-parse", f"{commits[0]}^") == b.baseline.commit
    assert git(root, "rev-parse", "final^{tree}") == git(root, "rev-parse", f"{best}^{{tree}}")
    # The undone change is gone from history too: the width commit now only changes WIDTH.
    width_diff = git(root, "show", "--format=", commits[1])
    changed = [ln for ln in width_diff.splitlines() if ln.startswith(("+", "-")) and not ln.startswith(("+++", "---"))]
    assert changed == ["-WIDTH = 256", "+WIDTH = 320"]
    # Messages carry the delta (vs the incumbent it beat and vs the baseline) and the evidence.
    msg = git(root, "log", "-1", "--format=%B", commits[0])
    assert f"score 0.985 (-0.005 vs #{ex['lr'].id}, the incumbent it beat; -0.015, -1.50% vs the baseline)" in msg
    assert "evidence (greedy): runs=3, p=0.03" in msg
    assert f"experiment #{ex['wd'].id} on autoresearch/t, originally {ex['wd'].commit}" in msg
    # Nothing else moved: the run's branch, the checkout, the ledger; no temporary worktree left.
    assert git(root, "rev-parse", "autoresearch/t") == best
    assert git(root, "rev-parse", "HEAD") == head_before
    assert len(b.rows()) == 9
    assert "autoresearch-finalize" not in git(root, "worktree", "list")
    # The summary: one line per surviving commit, the dropped keep and why, the totals.
    text = done.summary_path.read_text()
    assert done.summary_path == root / ".autoresearch" / "finalize" / "t.md"
    assert text.startswith("## autoresearch/t: score 1 → 0.975 (-2.50%, lower is better)")
    # rows numbered by ledger id, as `results` and `diff N` number them
    assert f"\n| {ex['batch'].id} | batch size 128 |" in text and f"| {ex['wd'].id} | weight decay 0.01 |" in text
    assert f"\n| {ex['lr'].id} | raise" not in text
    assert f"- #{ex['lr'].id} raise the learning rate to 0.04 — undone" in text


def test_a_keep_the_branch_moved_back_past_is_left_out(tmp_path: Path):
    """A keep superseded later (the incumbent moved back to an earlier commit) is not on the best history."""
    b, ex = night(tmp_path)
    late = b.experiment({"SOFTCAP": 10.0}, "soft-cap 10 (lucky)", "keep", 0.970)
    # A re-measurement finds the lucky keep was noise: the incumbent goes back to the batch-size commit.
    b.experiment(None, f"re-measured: #{late.id} was noise", "keep", 0.975, kind="rerun", parent=late.commit,
                 commit=ex["batch"].commit)
    assert git(b.root, "rev-parse", "autoresearch/t") == ex["batch"].commit

    done = finalize(b.root, "t", b.ledger, branch="final2")

    assert [e.id for e, _ in done.commits] == [ex["wd"].id, ex["width"].id, ex["batch"].id]
    reasons = dict((e.id, why) for e, why in done.dropped)
    assert set(reasons) == {ex["lr"].id, late.id}
    assert reasons[late.id].startswith("not on the best commit's history")
    assert git(b.root, "rev-parse", "final2^{tree}") == git(b.root, "rev-parse", f"{ex['batch'].commit}^{{tree}}")


def test_an_undone_keep_a_later_survivor_builds_on_is_taken_back(tmp_path: Path):
    """x: 0.02 -> 0.04 -> 0.08 -> 0.02. The first and last cancel, but the middle one edits the first's line."""
    b = RunBuilder(tmp_path / "proj")
    a = b.experiment({"LEARNING_RATE": 0.04}, "lr 0.04", "keep", 0.99)
    m = b.experiment({"LEARNING_RATE": 0.08, "DEPTH": 6}, "lr 0.08, depth 6", "keep", 0.98)
    z = b.experiment({"LEARNING_RATE": 0.02}, "lr back to 0.02", "keep", 0.97)
    done = finalize(b.root, "t", b.ledger, branch="final")
    assert git(b.root, "rev-parse", "final^{tree}") == git(b.root, "rev-parse", f"{z.commit}^{{tree}}")
    # The revert test finds `a` undone (z put its value back), but `m` was written on top of a's line:
    # without `a`, m does not apply, so `a` is taken back in and nothing is dropped.
    assert [e.id for e, _ in done.commits] == [a.id, m.id, z.id]
    assert done.dropped == []


def test_cli_finalize_prints_the_summary_and_refuses_to_overwrite(tmp_path: Path):
    b, ex = night(tmp_path)
    b.close()
    r = cli("finalize", "--branch", "pr/night", "--summary", str(tmp_path / "PR.md"), cwd=b.root)
    assert r.returncode == 0, r.stderr
    assert "## autoresearch/t: score 1 → 0.975" in r.stdout
    assert "branch pr/night at" in r.stdout and "1 undone keep(s) left out" in r.stdout
    assert (tmp_path / "PR.md").read_text() in r.stdout
    assert len(branch_commits(b.root, b.baseline.commit, "pr/night")) == 3

    again = cli("finalize", "--branch", "pr/night", cwd=b.root)
    assert again.returncode == 1
    assert "branch pr/night already exists: pass --branch NAME, or --force" in again.stderr
    forced = cli("finalize", "--branch", "pr/night", "--force", "--json", cwd=b.root)
    assert forced.returncode == 0, forced.stderr
    assert '"dropped": [{"id": %d' % ex["lr"].id in forced.stdout


def test_nothing_kept_is_a_clear_error(tmp_path: Path):
    b = RunBuilder(tmp_path / "proj")
    b.experiment({"DROPOUT": 0.3}, "more dropout", "discard", 1.01)
    with pytest.raises(FinalizeError, match="no change was kept yet"):
        finalize(b.root, "t", b.ledger)
    assert not git(b.root, "branch", "--list", "autoresearch/t-final")
