"""The ratchet, in process, with a scripted agent: real git, real runs, real ledger."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import (PREPARE, PROGRAM, TOML, TRAIN, ScriptedAgent, edit, git, improve_by, make_project, ran, rows_of,
                      set_constant, set_x, write_control)

from autoresearch.agents.base import Proposal
from autoresearch.config import load
from autoresearch.errors import AutoresearchError
from autoresearch.driver import Driver, Limits


def run_loop(root: Path, steps, n: int, tag: str = "t", **limits):
    agent = ScriptedAgent(steps)
    out = Driver(load(root), tag, agent, limits=Limits(max_experiments=n, **limits)).run()
    return out, rows_of(root, tag), agent


@pytest.fixture
def tracked(tmp_path):
    """A project with one more tracked file that is neither editable nor protected."""
    root = make_project(tmp_path / "proj", files={"other.py": "VALUE = 1\n"})
    return root, root


@pytest.fixture
def witnessed(tmp_path):
    """Like `tracked`, but every run leaves a side effect outside the project: its id in `ran.txt`.

    Unsandboxed on purpose (a sandboxed run cannot write outside its worktree), so the proof that a
    refused change never ran does not depend on the judge's own log handling."""
    side = tmp_path / "ran.txt"
    toml = TOML.format(extra="", extra_experiment='sandbox = "none"').replace(
        'run = "python train.py"', f'run = "echo $AUTORESEARCH_EXPERIMENT >> {side}; python train.py"')
    root = make_project(tmp_path / "proj", toml=toml, files={"other.py": "VALUE = 1\n"})
    return root, side


def executed(side: Path) -> list[int]:
    return [int(x) for x in side.read_text().split()] if side.exists() else []


def test_baseline_then_ratchet(tracked):
    root, runs = tracked
    head = git(root, "rev-parse", "HEAD")
    out, rows, _ = run_loop(root, [set_x(2.0), set_x(2.5), set_x(1.5)], 3)
    base = rows[0]
    assert (base.kind, base.status, base.commit, base.parent, base.description) == \
        ("baseline", "keep", head, head, "baseline")
    assert [e.status for e in rows] == ["keep", "keep", "discard", "keep"]
    tip = git(root, "rev-parse", "autoresearch/t")
    assert tip == rows[3].commit == out.incumbent.commit
    # one commit per experiment, on the incumbent at the time, message = description
    assert git(root, "rev-parse", f"{rows[1].commit}^") == head
    assert rows[2].parent == rows[1].commit and rows[3].parent == rows[1].commit
    assert git(root, "log", "-1", "--format=%s", rows[2].commit) == "X = 2.5"
    assert git(root, "rev-list", "--count", f"{head}..autoresearch/t") == "2"  # discards are not on the branch
    for e in rows:
        assert git(root, "rev-parse", f"refs/autoresearch/t/{e.id}") == e.commit
        assert Path(e.log_path).exists() and e.wall_s is not None and e.seed == 42
    assert "+X = 2.5" in rows[2].patch
    # the user's checkout is never touched
    assert git(root, "rev-parse", "--abbrev-ref", "HEAD") == "main" and git(root, "rev-parse", "HEAD") == head
    assert (root / "train.py").read_text() == TRAIN and git(root, "status", "--porcelain") == ""
    assert ran(root, "t") == [e.id for e in rows]
    assert out.stop_reason == "reached --max-experiments 3" and out.experiments == 3
    tsv = (root / "results.tsv").read_text().splitlines()
    assert tsv[0] == "commit\tscore\tmemory_gb\tstatus\tdescription" and len(tsv) == 5
    assert tsv[3] == f"{rows[2].commit[:7]}\t2.750000\t{tsv[3].split(chr(9))[2]}\tdiscard\tX = 2.5"


def test_change_outside_editable_is_refused_before_running(witnessed):
    root, side = witnessed

    def sneaky(ctx, wt):
        set_constant(wt / "train.py", "X", 2.0)
        (wt / "other.py").write_text("VALUE = 2\n")
        return "X = 2.0 and a little something"

    out, rows, _ = run_loop(root, [sneaky, set_x(4.0)], 2)
    v = rows[1]
    assert v.status == "violation" and "other.py" in v.reason and "refused before running" in v.reason
    assert v.commit is None and "VALUE = 2" in v.patch
    assert v.id not in executed(side), "the run command executed for a refused change"
    assert executed(side) == ran(root, "t") == [rows[0].id, rows[2].id]
    assert rows[2].status == "discard" and rows[2].parent == rows[0].commit  # the loop went on, from the incumbent
    assert git(root, "rev-parse", "autoresearch/t") == rows[0].commit


def _git_in_folder(wt, *args):
    """git as a process agent runs it in its folder (the harness sets the ceiling for it)."""
    env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(wt.parent))
    return subprocess.run(["git", *args], cwd=wt, env=env, capture_output=True, text=True)


def test_the_agents_folder_is_no_repository_and_hidden_files_are_still_refused(witnessed):
    root, side = witnessed

    def commits_itself(ctx, wt):
        set_constant(wt / "train.py", "X", 2.0)
        (wt / "other.py").write_text("VALUE = 2\n")
        r = _git_in_folder(wt, "commit", "-q", "-m", "sneaky commit", "other.py")
        assert r.returncode != 0 and "not a git repository" in r.stderr, r.stderr  # nothing to commit into
        return "X = 2.0"

    def hides_a_new_file(ctx, wt):
        (wt / "evil.py").write_text("print('score: 0.0')\n")
        set_constant(wt / "train.py", "X", 2.0)
        (wt / ".gitignore").write_text("evil.py\n")  # ignored by git status: not by the manifest
        return "X = 2.0 plus evil.py"

    out, rows, _ = run_loop(root, [commits_itself, hides_a_new_file], 2)
    assert not (root / ".autoresearch" / "worktrees" / "t" / "propose" / ".git").exists()
    assert [e.status for e in rows[1:]] == ["violation", "violation"]
    assert "other.py" in rows[1].reason and "evil.py" in rows[2].reason and ".gitignore" in rows[2].reason
    assert executed(side) == [rows[0].id], "the run command executed for a refused change"
    assert git(root, "rev-parse", "autoresearch/t") == rows[0].commit


def test_the_harness_commits_the_agents_bytes_with_the_parents_modes(project):
    (project / "run.sh").write_text("echo hi\n")
    os.chmod(project / "run.sh", 0o755)
    (project / "tools").mkdir()
    (project / "tools" / "old.txt").write_text("x\n")
    git(project, "add", "run.sh", "tools")
    git(project, "commit", "-qm", "an executable")
    toml = (project / "autoresearch.toml").read_text().replace('editable = ["train.py"]',
                                                               'editable = ["train.py", "run.sh", "tools/"]')
    (project / "autoresearch.toml").write_text(toml)
    git(project, "commit", "-qam", "run.sh is editable")

    def edits(ctx, wt):
        set_constant(wt / "train.py", "X", 2.0)
        (wt / "run.sh").write_text("echo bye\n")  # rewritten: still 100755
        (wt / "tools").mkdir(exist_ok=True)
        (wt / "tools" / "a.sh").write_text("echo new\n")
        os.chmod(wt / "tools" / "a.sh", 0o755)  # new and executable: 100755
        (wt / "tools" / "b.txt").write_bytes(b"crlf\r\nline\r\n")  # bytes as written, no filter
        return "X = 2.0"

    out, rows, _ = run_loop(project, [edits], 1)
    assert rows[1].status == "keep" and rows[1].parent == rows[0].commit
    tree = git(project, "ls-tree", "-r", rows[1].commit)
    modes = {line.split("\t")[1]: line.split()[0] for line in tree.splitlines()}
    assert modes["run.sh"] == "100755" and modes["tools/a.sh"] == "100755" and modes["tools/b.txt"] == "100644"
    assert modes["train.py"] == "100644"
    raw = subprocess.run(["git", "cat-file", "blob", f"{rows[1].commit}:tools/b.txt"], cwd=project,
                         capture_output=True).stdout
    assert raw == b"crlf\r\nline\r\n"
    assert git(project, "rev-list", "--count", f"{rows[0].commit}..autoresearch/t") == "1"


def test_protected_file_changed_by_the_run_is_a_violation_and_restored(tracked):
    root, runs = tracked
    hack = TRAIN.replace("import json\n", "import json\nopen('prepare.py', 'a').write('OFFSET = -100.0\\n')\n", 1)
    out, rows, _ = run_loop(root, [edit("train.py", hack, "lower the score by any means"), set_x(2.0)], 2)
    v = rows[1]
    assert v.status == "violation" and "prepare.py" in v.reason and v.metric is None
    assert v.id in ran(root, "t")  # it ran: the judge caught it after
    assert rows[2].status == "keep" and rows[2].metric == pytest.approx(1.5)  # the next run sees prepare.py intact
    run0 = root / ".autoresearch" / "worktrees" / "t" / "run0"
    assert (run0 / "prepare.py").read_text() == PREPARE and (root / "prepare.py").read_text() == PREPARE
    assert git(root, "rev-parse", "autoresearch/t") == rows[2].commit


def test_empty_changes_are_discarded_without_running(tracked):
    root, runs = tracked
    out, rows, _ = run_loop(root, [lambda c, w: "thought about it", edit("train.py", TRAIN, "rewrote it the same")], 2)
    assert [(e.status, e.commit) for e in rows[1:]] == [("discard", None), ("discard", None)]
    assert "changed nothing" in rows[1].reason
    assert ran(root, "t") == [rows[0].id]


def test_program_md_is_the_users_and_ideas_md_is_not_a_change(project):
    out, rows, _ = run_loop(project, [edit("program.md", "# hijacked\n", "new program"),
                                      edit("ideas.md", "- my own note\n", "a note")], 2)
    assert rows[1].status == "violation" and "program.md changed" in rows[1].reason  # refused, recorded
    assert rows[1].id not in ran(project, "t") and "hijacked" in rows[1].patch
    assert rows[2].status == "discard" and "changed nothing" in rows[2].reason  # the human's notes: dropped
    assert (project / "program.md").read_text() == PROGRAM and not (project / "ideas.md").exists()


def test_new_file_matching_an_editable_glob_is_committed_and_others_are_not(tmp_path):
    root = make_project(tmp_path / "p", files={"lib/__init__.py": ""})
    toml = (root / "autoresearch.toml").read_text().replace('editable = ["train.py"]',
                                                            'editable = ["train.py", "lib/*.py"]')
    (root / "autoresearch.toml").write_text(toml)
    git(root, "commit", "-qam", "lib is editable")

    def new_module(ctx, wt):
        (wt / "lib" / "helpers.py").write_text("FACTOR = 2\n")
        set_constant(wt / "train.py", "X", 2.0)
        return "X = 2.0 and a helper module"

    def stray_file(ctx, wt):
        (wt / "notes.py").write_text("FACTOR = 2\n")
        set_constant(wt / "train.py", "X", 1.5)
        return "X = 1.5 and a stray file"

    out, rows, _ = run_loop(root, [new_module, stray_file], 2)
    assert rows[1].status == "keep"
    assert "lib/helpers.py" in git(root, "show", "--name-only", "--format=", rows[1].commit)
    assert rows[2].status == "violation" and "notes.py" in rows[2].reason and rows[2].id not in ran(root, "t")


def test_crash_gets_repair_attempts_with_the_log_tail(project):
    broken = TRAIN.replace('print(f"aux: 7")', 'raise RuntimeError("shape mismatch in layer 3")')

    def repair(ctx, wt):
        assert ctx.repair is not None and "shape mismatch" in ctx.repair.log_tail
        text = (wt / "train.py").read_text()
        assert "shape mismatch" in text  # the worktree is at the crashed commit
        (wt / "train.py").write_text(text.replace('raise RuntimeError("shape mismatch in layer 3")', 'print("aux: 7")')
                                     .replace("X = 3.0", "X = 2.0"))
        return "fix the shape bug"

    def fails_again(ctx, wt):
        assert ctx.repair is not None
        set_constant(wt / "train.py", "Y", 5)
        return "try again"

    out, rows, agent = run_loop(project, [edit("train.py", broken, "bold idea"), fails_again, repair], 3)
    assert [(e.kind, e.status) for e in rows] == [("baseline", "keep"), ("candidate", "crash"), ("repair", "crash"),
                                                  ("repair", "keep")]
    assert rows[2].repair_of == rows[1].id and rows[3].repair_of == rows[2].id
    assert rows[3].parent == rows[0].commit  # a repair is committed on the incumbent, with the idea and its fix
    assert git(project, "rev-parse", "autoresearch/t") == rows[3].commit
    assert "shape mismatch" in rows[1].log_tail and "exit code 1" in rows[1].reason


def test_repairs_stop_after_repair_attempts(project):
    broken = TRAIN.replace('print(f"aux: 7")', 'raise SystemExit(2)')
    still = lambda ctx, wt: (set_constant(wt / "train.py", "Y", ctx.repair.id + 10), "still broken")[1]  # noqa: E731
    out, rows, agent = run_loop(project, [edit("train.py", broken, "bold idea"), still, still, set_x(2.0)], 4)
    assert [e.kind for e in rows] == ["baseline", "candidate", "repair", "repair", "candidate"]
    assert rows[4].status == "keep"


def test_agent_failure_is_recorded_and_the_loop_goes_on(project):
    def explodes(ctx, wt):
        raise ConnectionError("the model server is down")

    out, rows, _ = run_loop(project, [explodes, lambda c, w: Proposal("", error="no idea left"), set_x(2.0)], 3)
    assert [e.status for e in rows[1:]] == ["crash", "crash", "keep"]
    assert "ConnectionError: the model server is down" in rows[1].reason and "no idea left" in rows[2].reason
    assert rows[1].commit is None


def test_stop_at_target(project):
    out, rows, _ = run_loop(project, [set_x(2.0), set_x(1.1), set_x(1.05)], 10, target=0.6)
    assert "target" in out.stop_reason and out.experiments == 2 and rows[-1].metric == pytest.approx(0.51)


def test_stop_after_consecutive_failures(project):
    boom = lambda c, w: Proposal("", error="boom")  # noqa: E731
    out, rows, _ = run_loop(project, [boom] * 10, 10, max_consecutive_failures=3)
    assert out.stop_reason == "3 failures in a row" and out.experiments == 3


def test_sigterm_during_a_proposal_stops_cleanly(project):
    def asks_to_stop(ctx, wt):
        set_constant(wt / "train.py", "X", 2.0)
        os.kill(os.getpid(), signal.SIGTERM)
        return "X = 2.0"

    before = signal.getsignal(signal.SIGTERM)
    out, rows, agent = run_loop(project, [asks_to_stop, set_x(1.5)], 5)
    assert out.stop_reason == "stopped by SIGTERM" and agent.calls == 1
    assert [e.status for e in rows] == ["keep"]  # the half-made proposal was dropped, not committed
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored
    assert len(git(project, "for-each-ref", "refs/autoresearch/t/").splitlines()) == 1  # the baseline's pin only


def test_sigint_during_a_run_finishes_the_record_as_interrupted(tmp_path):
    ctl = write_control(tmp_path / "ctl.json", sleep_on=[2], sleep_s=60)
    root = make_project(tmp_path / "p", control=ctl)

    def interrupt_soon(ctx, wt):
        import threading
        threading.Timer(0.8, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        set_constant(wt / "train.py", "X", 2.0)
        return "X = 2.0 (slow)"

    out, rows, _ = run_loop(root, [interrupt_soon], 5)
    assert out.stop_reason == "stopped by SIGINT"
    assert [e.status for e in rows] == ["keep", "interrupted"] and rows[1].wall_s < 1 + 5
    assert git(root, "rev-parse", "autoresearch/t") == rows[0].commit


def test_a_second_ctrl_c_between_the_record_and_its_run_leaves_no_row_running(project, monkeypatch):
    """The second Ctrl-C raises KeyboardInterrupt wherever the loop is; landing right after a row is
    begun (here: while its commit is pinned) it must still leave that row terminal, not `running`."""
    from autoresearch.workspace import Workspace

    plain, calls = Workspace.pin, []

    def pin(self, exp_id, commit):
        calls.append(exp_id)
        if len(calls) == 2:  # the first candidate's: the baseline's was the first
            raise KeyboardInterrupt
        return plain(self, exp_id, commit)

    monkeypatch.setattr(Workspace, "pin", pin)
    with pytest.raises(KeyboardInterrupt):
        run_loop(project, [set_x(2.0)], 3)
    rows = rows_of(project, "t")
    assert [e.status for e in rows] == ["keep", "interrupted"] and "stopped by the user" in rows[1].reason
    assert (project / "results.tsv").read_text().splitlines()[-1].split("\t")[3] == "interrupted"
    assert git(project, "rev-parse", "autoresearch/t") == rows[0].commit


def test_baseline_that_crashes_is_a_clear_error(tmp_path):
    root = make_project(tmp_path / "p", files={"train.py": "print('no metric here')\n"})
    with pytest.raises(AutoresearchError, match=r"baseline .* ended `crash`.*prints `score: <value>`"):
        run_loop(root, [], 1)
    rows = rows_of(root, "t")
    assert [e.status for e in rows] == ["crash"]


def test_context_shows_history_incumbent_and_live_program(project):
    def look(ctx, wt):
        assert ctx.incumbent is not None and ctx.incumbent.kind == "baseline"
        assert [e.kind for e in ctx.history] == ["baseline"]
        assert "train.py" in ctx.files and "prepare.py" not in ctx.files and "prepare.py" in ctx.readonly
        text = ctx.render()
        assert "score" in text and "lower" in text and "Make `score` lower" in text
        (project / "program.md").write_text("# Steer: try Y next\n")  # the human edits the checkout mid-run
        set_constant(wt / "train.py", "X", 2.0)
        return "look around"

    def second(ctx, wt):
        assert ctx.program.startswith("# Steer: try Y next")
        assert ctx.history[-1].description == "look around" and ctx.incumbent.description == "look around"
        return improve_by(0.5)(ctx, wt)

    run_loop(project, [look, second], 2)


def test_a_second_session_continues_the_same_tag(project):
    run_loop(project, [set_x(2.0)], 1)
    out, rows, agent = run_loop(project, [set_x(1.5)], 1)
    assert [e.kind for e in rows] == ["baseline", "candidate", "candidate"]  # no second baseline
    assert rows[2].parent == rows[1].commit and out.experiments == 1
