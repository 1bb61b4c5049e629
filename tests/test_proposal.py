"""The agent's proposal folder (proposal.py), the commit from bytes (Workspace.commit_files) and the
in-process agents' writes (agents/edits.py): plain files, exact change sets, nothing through a link."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import git, make_project, set_constant

from autoresearch.agents.edits import Edit, EditError, apply_edits, write_text
from autoresearch.config import load
from autoresearch.proposal import ProposalFolder
from autoresearch.workspace import NothingChanged, Workspace


@pytest.fixture
def ws(tmp_path) -> Workspace:
    root = make_project(tmp_path / "p", files={"lib/a.py": "A = 1\n", "lib/b.py": "B = 1\n",
                                               ".gitignore": "*.log\ncache/\n"})
    w = Workspace(root, "t")
    w.prepare()
    return w


def test_the_folder_is_plain_and_holds_the_commit(ws):
    folder = ProposalFolder(ws)
    wt = folder.prepare(ws.tip())
    assert not (wt / ".git").exists()
    assert (wt / "train.py").read_bytes() == (ws.root / "train.py").read_bytes()
    assert sorted(folder.manifest) == sorted(git(ws.root, "ls-files").split())
    assert folder.changes().paths == []
    r = subprocess.run(["git", "status"], cwd=wt, capture_output=True, text=True,
                       env=dict(os.environ, GIT_CEILING_DIRECTORIES=str(wt.parent)))
    assert r.returncode != 0 and "not a git repository" in r.stderr


def test_changes_are_exact_and_refusals_named(ws):
    folder = ProposalFolder(ws)
    wt = folder.prepare(ws.tip())
    set_constant(wt / "train.py", "X", 2.0)
    (wt / "lib" / "b.py").unlink()
    (wt / "new.py").write_text("N = 1\n")
    (wt / "run.log").write_text("ignored by the commit's .gitignore\n")
    (wt / "lib" / "__pycache__").mkdir()
    (wt / "lib" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    (wt / "sub").mkdir()
    (wt / "sub" / "train.py").write_text("X = 0\n")
    (wt / "link.py").symlink_to(wt / "train.py")
    os.mkfifo(wt / "pipe")
    (wt / "nested" / ".git").mkdir(parents=True)
    os.utime(wt / "lib" / "a.py", ns=(0, 0))  # only the times changed: the same bytes, no change
    c = folder.changes()
    assert c.modified == ["train.py"] and c.deleted == ["lib/b.py"] and c.added == ["new.py", "sub/train.py"]
    assert dict(c.refused) == {"link.py": "a symlink", "pipe": "not a regular file (a fifo, socket or device)",
                               "nested/.git": "a nested .git (a repository inside the proposal)"}
    assert "run.log" in c.dropped and "lib/__pycache__/a.cpython-311.pyc" in c.dropped
    problems = " ".join(c.problems(load(ws.root)))
    for word in ("link.py is a symlink", "pipe is not a regular file", "nested/.git", "lib/b.py", "new.py",
                 "sub/train.py"):
        assert word in problems
    assert "train.py," not in problems.split("outside")[1][:12]  # train.py itself is editable
    assert "X = 2.0" in c.patch()


def test_prepare_restores_incrementally_and_never_through_a_link(ws, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "a.py").write_text("outside\n")
    folder = ProposalFolder(ws)
    wt = folder.prepare(ws.tip())
    import shutil

    shutil.rmtree(wt / "lib")
    (wt / "lib").symlink_to(victim)  # a tracked folder replaced by a link to somewhere else
    (wt / "prepare.py").write_text("OFFSET = -1\n")
    (wt / "junk.txt").write_text("x")
    os.chmod(wt / "train.py", 0o755)
    assert folder.prepare(ws.tip()) == wt
    assert (victim / "a.py").read_text() == "outside\n"  # the harness never wrote or deleted through the link
    assert not (wt / "lib").is_symlink() and (wt / "lib" / "a.py").read_text() == "A = 1\n"
    assert not (wt / "junk.txt").exists() and not os.access(wt / "train.py", os.X_OK)
    assert folder.changes().paths == [] and folder.changes().refused == []
    # a newer commit: only what differs is rewritten
    set_constant(ws.root / "train.py", "X", 2.5)
    git(ws.root, "commit", "-qam", "X = 2.5")
    git(ws.root, "update-ref", ws.ref, git(ws.root, "rev-parse", "HEAD"))
    ino = os.stat(wt / "prepare.py").st_ino
    folder.prepare(ws.tip())
    assert "X = 2.5" in (wt / "train.py").read_text() and os.stat(wt / "prepare.py").st_ino == ino


def test_commit_files_builds_the_tree_from_bytes(ws):
    parent = ws.tip()
    sha = ws.commit_files(parent, {"train.py": (b"X = 9\n", False), "lib/b.py": None,
                                   "tool.sh": (b"echo\n", True)}, "a change")
    assert git(ws.root, "show", f"{sha}:train.py") == "X = 9"
    assert git(ws.root, "rev-parse", f"{sha}^") == parent
    modes = {ln.split("\t")[1]: ln.split()[0] for ln in git(ws.root, "ls-tree", "-r", sha).splitlines()}
    assert modes["tool.sh"] == "100755" and "lib/b.py" not in modes and modes["lib/a.py"] == "100644"
    assert ws.tip() == parent and git(ws.root, "status", "--porcelain") == ""  # no ref, no index moved
    with pytest.raises(NothingChanged):
        ws.commit_files(parent, {"train.py": ((ws.root / "train.py").read_bytes(), False)}, "same")


@pytest.mark.parametrize("path", ["../escape.py", "/etc/passwd", "lib/../../escape.py", ".git/hooks/pre-commit",
                                  "via/x.py", "via/../../escape.py"])
def test_in_process_edits_stay_in_the_folder(tmp_path, path):
    root = tmp_path / "folder"
    root.mkdir()
    (root / "lib").mkdir()
    outside = tmp_path / "out"
    outside.mkdir()
    (root / "via").symlink_to(outside)  # a link to outside the folder
    with pytest.raises(EditError):
        apply_edits(root, [Edit(path, None, "pwned\n")])
    with pytest.raises(EditError):
        write_text(root, path, "pwned\n")
    assert list(outside.iterdir()) == [] and not (tmp_path / "escape.py").exists()
    assert Path("/etc/passwd").read_text() != "pwned\n"


def test_in_process_edits_refuse_a_linked_file(tmp_path):
    root = tmp_path / "folder"
    root.mkdir()
    target = root / "prepare.py"  # inside the folder: resolving the path alone would allow it
    target.write_text("T = 1\n")
    (root / "train.py").symlink_to(target)
    (root / "alias").symlink_to(root)
    with pytest.raises(EditError, match="symlink"):
        apply_edits(root, [Edit("train.py", "T = 1\n", "T = 2\n")])
    with pytest.raises(EditError, match="symlink"):
        write_text(root, "alias/prepare.py", "T = 3\n")
    assert target.read_text() == "T = 1\n" and (root / "train.py").is_symlink()
    write_text(root, "lib/ok.py", "OK = 1\n")  # a real path inside is fine
    assert (root / "lib" / "ok.py").read_text() == "OK = 1\n"
