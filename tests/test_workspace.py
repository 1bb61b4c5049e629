"""The git side: branch, worktrees, commits, compare-and-swap; on real repositories in tmp dirs."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TRAIN, git, make_project, set_constant

from autoresearch.errors import WorkspaceError
from autoresearch.workspace import NothingChanged, Workspace, valid_tag


@pytest.fixture
def ws(project):
    w = Workspace(project, "w")
    assert w.prepare() is True
    return w


def test_prepare_makes_the_branch_at_head_once(project, ws):
    assert ws.tip() == git(project, "rev-parse", "HEAD")
    assert git(project, "rev-parse", "--abbrev-ref", "HEAD") == "main"  # the user's checkout stays put
    assert Workspace(project, "w").prepare() is False


def test_prepare_refuses_uncommitted_tracked_changes(project):
    (project / "train.py").write_text(TRAIN + "# local edit\n")
    with pytest.raises(WorkspaceError, match=r"uncommitted changes to tracked files \(train.py\).*commit or stash"):
        Workspace(project, "w").prepare()


def test_prepare_allows_steering_files_and_untracked_junk(project):
    (project / "program.md").write_text("# new direction\n")
    (project / "notes.txt").write_text("junk\n")
    assert Workspace(project, "w").prepare() is True


def test_prepare_refuses_a_repo_without_commits_and_bad_tags(tmp_path):
    root = make_project(tmp_path / "p", commit=False)
    git(root, "init", "-q")
    with pytest.raises(WorkspaceError, match="no commit yet"):
        Workspace(root, "w").prepare()
    with pytest.raises(WorkspaceError, match="not in a git repository"):
        Workspace(tmp_path, "w")
    assert valid_tag("nov25") and valid_tag("run-2_b.1")
    assert not valid_tag("") and not valid_tag("a b") and not valid_tag("../x") and not valid_tag("-x")


def test_harness_outputs_are_ignored_by_git(project, ws):
    for name in ("results.tsv", "progress.png", "report.md", ".results.tsv.4242.tmp", ".progress.png.1.2.tmp"):
        (project / name).write_text("x")
    (project / ".autoresearch" / "x").parent.mkdir(exist_ok=True)
    (project / ".autoresearch" / "x").write_text("x")
    assert git(project, "status", "--porcelain") == ""
    assert git(project, "diff", "HEAD", "--stat") == ""  # nothing tracked was touched to do it
    ws.ignore_outputs()
    exclude = (project / ".git" / "info" / "exclude").read_text()
    assert exclude.count("/results.tsv") == 1  # idempotent


def test_worktree_is_detached_and_clean(project, ws):
    wt = ws.worktree("propose")
    assert wt == project / ".autoresearch" / "worktrees" / "w" / "propose"
    assert git(wt, "rev-parse", "HEAD") == ws.tip()
    assert git(wt, "rev-parse", "--abbrev-ref", "HEAD") == "HEAD"  # detached
    (wt / "train.py").write_text("dirty")
    (wt / "new.txt").write_text("untracked")
    wt2 = ws.worktree("propose")
    assert wt2 == wt and (wt / "train.py").read_text() == TRAIN and not (wt / "new.txt").exists()


def test_commit_makes_one_commit_on_the_parent_without_moving_the_branch(project, ws):
    parent = ws.tip()
    wt = ws.worktree("propose")
    set_constant(wt / "train.py", "X", 2.0)
    (wt / "prepare.py").write_text("OFFSET = 1.0\n")  # changed but not listed: not committed
    assert ws.changed_paths(wt) == ["prepare.py", "train.py"]
    sha = ws.commit(wt, ["train.py"], "X = 2.0\n\nbody", parent)
    assert git(project, "rev-parse", f"{sha}^") == parent
    assert git(project, "log", "-1", "--format=%s", sha) == "X = 2.0"
    assert git(project, "diff", "--name-only", parent, sha) == "train.py"
    assert ws.tip() == parent, "commit must not move the branch"
    assert ws.head_of(wt) == sha
    assert "-X = 3.0" in ws.diff(parent, sha) and "+X = 2.0" in ws.diff(parent, sha)
    assert ws.file_at(sha, "train.py").count("X = 2.0") == 1
    assert ws.file_at(sha, "missing.py") is None


def test_commit_of_nothing_raises(project, ws):
    wt = ws.worktree("propose")
    (wt / "train.py").write_text(TRAIN)  # rewritten identically
    with pytest.raises(NothingChanged):
        ws.commit(wt, ["train.py"], "nothing", ws.tip())


def test_advance_is_compare_and_swap(project, ws):
    parent = ws.tip()
    wt = ws.worktree("propose")
    set_constant(wt / "train.py", "X", 2.0)
    a = ws.commit(wt, ["train.py"], "a", parent)
    ws.reset(wt, parent)
    set_constant(wt / "train.py", "X", 1.5)
    b = ws.commit(wt, ["train.py"], "b", parent)
    ws.advance(a, parent)
    assert ws.tip() == a
    with pytest.raises(WorkspaceError, match="no longer at"):
        ws.advance(b, parent)  # a stale writer cannot overwrite the keep of another
    assert ws.tip() == a


def test_pin_keeps_every_experiment_reachable(project, ws):
    parent = ws.tip()
    wt = ws.worktree("propose")
    set_constant(wt / "train.py", "X", 2.0)
    sha = ws.commit(wt, ["train.py"], "a", parent)
    ws.pin(5, sha)
    ws.reset(wt, parent)
    git(project, "gc", "-q", "--prune=now")
    assert ws.exists(sha)
    assert git(project, "rev-parse", "refs/autoresearch/w/5") == sha


def test_restore_and_digests(project, ws):
    wt = ws.worktree("run0")
    d0 = ws.digests(wt, ["prepare.py"])
    (wt / "prepare.py").write_text("OFFSET = 9\n")
    (wt / "extra.py").write_text("x = 1\n")
    assert ws.digests(wt, ["prepare.py"]) != d0
    ws.restore(wt, ["prepare.py", "extra.py"], ws.tip())
    assert ws.digests(wt, ["prepare.py"]) == d0 and not (wt / "extra.py").exists()


def test_project_in_a_subfolder_of_a_bigger_repository(tmp_path):
    top = tmp_path / "mono"
    make_project(top / "research" / "tiny", commit=False)
    (top / "README.md").write_text("the monorepo\n")
    git(top, "init", "-q")
    git(top, "add", "-A")
    git(top, "commit", "-q", "-m", "mono")
    ws = Workspace(top / "research" / "tiny", "w")
    ws.prepare()
    wt = ws.worktree("propose")
    assert wt.name == "tiny" and (wt / "train.py").exists()
    set_constant(wt / "train.py", "X", 2.0)
    (wt.parents[1] / "README.md").write_text("changed from inside the project\n")
    assert ws.changed_paths(wt) == ["../README.md", "train.py"]
    sha = ws.commit(wt, ["train.py"], "x", ws.tip())
    assert git(top, "diff", "--name-only", ws.tip(), sha) == "research/tiny/train.py"
    assert (top / "README.md").read_text() == "the monorepo\n"


def test_recovers_a_worktree_left_half_made_by_a_killed_harness(project, ws):
    """SIGKILL during `git worktree add` leaves a folder without .git: the next start must cope."""
    wt = ws.trees / "propose"
    wt.mkdir(parents=True)
    (wt / "train.py").write_text("half-written checkout")
    fresh = ws.worktree("propose")
    assert (fresh / "train.py").read_text() == TRAIN and git(fresh, "rev-parse", "HEAD") == ws.tip()


def test_recovers_from_a_stale_index_lock_in_its_worktree(project, ws):
    """SIGKILL during `git reset`/`git add` leaves index.lock: the next start must not fail forever."""
    wt = ws.worktree("run0")
    gitdir = Path(git(wt, "rev-parse", "--absolute-git-dir"))
    (gitdir / "index.lock").write_text("")
    (wt / "train.py").write_text("dirty")
    again = ws.worktree("run0")
    assert (again / "train.py").read_text() == TRAIN


# -- git that runs nobody's code ------------------------------------------------------------------
def _plant(project: Path, log: Path) -> None:
    """What an unsandboxed agent can write into git's directory: hooks, an fsmonitor program, filter
    and merge drivers (in .git/config, switched on for train.py by .git/info/attributes). Each writes
    its name to `log`; the clean filter also rewrites X, so a commit would hold what nobody proposed."""
    gitdir = project / ".git"
    for hook in ("reference-transaction", "post-checkout", "pre-commit"):
        h = gitdir / "hooks" / hook
        h.write_text(f"#!/bin/sh\necho {hook} >> {log}\n")
        h.chmod(0o755)
    fsm = project.parent / "fsmonitor.sh"
    fsm.write_text(f"#!/bin/sh\necho fsmonitor >> {log}\nexit 1\n")
    fsm.chmod(0o755)
    git(project, "config", "core.fsmonitor", str(fsm))
    git(project, "config", "filter.evil.clean", f"sh -c 'echo filter >> {log}; sed \"s/^X = .*/X = 0.5/\"'")
    git(project, "config", "filter.evil.smudge", f"sh -c 'echo smudge >> {log}; cat'")
    git(project, "config", "filter.evil.required", "true")
    git(project, "config", "merge.evil.driver", f"sh -c 'echo merge >> {log}'")
    (gitdir / "info").mkdir(exist_ok=True)
    (gitdir / "info" / "attributes").write_text("train.py filter=evil merge=evil diff=evil\n")
    git(project, "config", "diff.evil.textconv", f"sh -c 'echo textconv >> {log}; cat \"$0\"'")


@pytest.mark.parametrize("hardened", [True, False], ids=["harness", "control-plain-git"])
def test_hooks_fsmonitor_filters_and_drivers_planted_in_git_run_nothing_in_the_harness(
        project, tmp_path, monkeypatch, hardened):
    from autoresearch import workspace
    from autoresearch.workspace import Git

    monkeypatch.setattr(workspace, "HARDENED", hardened)
    log = tmp_path / "ran.log"
    ws = Workspace(project, "w")
    ws.prepare()
    _plant(project, log)
    parent = ws.tip()
    wt = ws.worktree("propose")  # worktree add: post-checkout, smudge
    set_constant(wt / "train.py", "X", 2.0)
    assert ws.changed_paths(wt) == ["train.py"]  # status: fsmonitor
    a = ws.commit(wt, ["train.py"], "a", parent)  # add: clean filter; update-ref: reference-transaction
    ws.pin(1, a)
    patch = ws.diff(parent, a)  # textconv
    ws.reset(wt, parent)
    (wt / "train.py").write_text((wt / "train.py").read_text().replace("aux: 7", "aux: 8"))  # far from X
    b = ws.commit(wt, ["train.py"], "b", parent)
    ws.advance(b, parent)
    Git(project)("commit", "-q", "--allow-empty", "-m", "what init --here does")  # pre-commit
    ran = set(log.read_text().split()) if log.exists() else set()
    if not hardened:  # the control: each planted program runs, and the clean filter forges the commit
        assert {"reference-transaction", "post-checkout", "pre-commit", "fsmonitor", "filter", "smudge",
                "textconv"} <= ran, ran
        assert "X = 0.5" in ws.file_at(a, "train.py")
        return
    assert ran == set(), f"the harness's git ran planted programs: {ran}"
    assert "X = 2.0" in ws.file_at(a, "train.py") and "+X = 2.0" in patch
    merged = ws.rebase(a, b, "a on b")  # a 3-way merge of train.py: the built-in merge, not the planted driver
    text = ws.file_at(merged, "train.py")
    assert "X = 2.0" in text and "aux: 8" in text
    assert not log.exists()


def test_rebase_with_a_planted_merge_driver_runs_it_only_in_plain_git(project, tmp_path, monkeypatch):
    """The control for the merge driver (the test above rebases only under the harness's git)."""
    from autoresearch import workspace

    monkeypatch.setattr(workspace, "HARDENED", False)
    log = tmp_path / "ran.log"
    ws = Workspace(project, "w")
    ws.prepare()
    _plant(project, log)
    parent = ws.tip()
    wt = ws.worktree("propose")
    set_constant(wt / "train.py", "X", 2.0)
    a = ws.commit(wt, ["train.py"], "a", parent)
    ws.reset(wt, parent)
    (wt / "train.py").write_text((wt / "train.py").read_text().replace("aux: 7", "aux: 8"))  # far from X
    b = ws.commit(wt, ["train.py"], "b", parent)
    with pytest.raises(NothingChanged):  # the planted driver kept `onto`'s side: the change silently lost
        ws.rebase(a, b, "a on b")
    assert "merge" in log.read_text().split()


def test_git_command_is_the_one_place_harness_git_is_built():
    """No module of the package runs `git` but through workspace.git_command."""
    import re

    src = Path(__file__).resolve().parents[1] / "src" / "autoresearch"
    raw = []
    for path in src.rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"""\[\s*["']git["']""", line) and path.name != "workspace.py":
                raw.append(f"{path.name}:{n}: {line.strip()}")
    assert raw == [], raw


def test_a_filter_added_to_a_worktrees_own_config_after_use_is_switched_off_too(project, tmp_path):
    """The drivers are re-read when any config file changes, a worktree's config.worktree included."""
    log = tmp_path / "ran.log"
    ws = Workspace(project, "w")
    ws.prepare()
    parent = ws.tip()
    wt = ws.worktree("propose")
    git(project, "config", "extensions.worktreeConfig", "true")
    assert ws.changed_paths(wt) == []  # the overrides of this worktree are now cached
    git(wt, "config", "--worktree", "filter.evil.clean", f"sh -c 'echo filter >> {log}; sed \"s/^X = .*/X = 0.5/\"'")
    git(wt, "config", "--worktree", "filter.evil.required", "true")
    (project / ".git" / "info").mkdir(exist_ok=True)
    (project / ".git" / "info" / "attributes").write_text("train.py filter=evil\n")
    set_constant(wt / "train.py", "X", 2.0)
    git(wt, "add", "train.py")  # the control: plain git runs it
    git(wt, "reset", "-q")
    ran = log.read_text()
    assert "filter" in ran.split()
    sha = ws.commit(wt, ["train.py"], "a", parent)
    assert "\nX = 2.0\n" in ws.file_at(sha, "train.py") and log.read_text() == ran


def test_an_alternate_refs_command_runs_only_in_plain_git(tmp_path):
    """`launch --pull` fetches a bundle: a repository with alternates would run core.alternateRefsCommand."""
    from autoresearch.workspace import Git

    src = make_project(tmp_path / "src")
    git(src, "bundle", "create", str(tmp_path / "b.bundle"), "HEAD")
    dst = tmp_path / "dst"
    git(tmp_path, "clone", "-q", str(src), str(dst))
    (dst / ".git" / "objects" / "info" / "alternates").write_text(f"{src}/.git/objects\n")
    marker = tmp_path / "ran"
    git(dst, "config", "core.alternateRefsCommand", f"touch {marker}; true")
    assert Git(dst).ok("fetch", "-q", str(tmp_path / "b.bundle"), "HEAD:refs/x")
    assert not marker.exists()
    git(dst, "fetch", "-q", str(tmp_path / "b.bundle"), "HEAD:refs/y")  # the control
    assert marker.exists()


def test_a_worktree_handed_out_again_holds_only_what_git_holds(project, ws):
    """Ignored files (a saved model), untracked ones and nested repositories a run left are gone
    the next time the worktree is handed out; the evaluation's checkout is a separate worktree."""
    (project / ".gitignore").write_text("model.npz\n")
    git(project, "add", ".gitignore")
    git(project, "commit", "-qm", "ignore the model")
    ws.prepare()
    wt = ws.worktree("run0", at=git(project, "rev-parse", "HEAD"))
    (wt / "model.npz").write_bytes(b"weights")
    (wt / "argparse.py").write_text("planted = True\n")
    (wt / "nested").mkdir()
    git(wt / "nested", "init", "-q")
    (wt / "nested" / "f").write_text("x")
    assert ws.worktree("run0", at=git(project, "rev-parse", "HEAD")) == wt
    assert sorted(p.name for p in wt.iterdir() if p.name != ".git") == sorted(
        git(project, "ls-files").splitlines())
    ev = ws.evaluation_worktree(wt, git(project, "rev-parse", "HEAD"))
    assert ev == ws.trees / "run0-eval" and (ev / "train.py").read_text() == (wt / "train.py").read_text()
