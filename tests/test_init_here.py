"""`autoresearch init --here` on real git repositories, through the real command line: from flags, from
questions on a real pseudo-terminal, its validation run (in a worktree, with the budget and a scrubbed
environment), and its refusals (overwrite, missing metric, uncommitted files, failing checks).
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoresearch import agents
from autoresearch.config import load
from autoresearch.ledger import Ledger
from autoresearch.driver import Driver, Limits

TRAIN = """import os
LR = 0.1
open("ran-here.txt", "w").write("the validation run writes in its own worktree")
print("steps: 10")
print(f"val_loss: {1.0 - LR:.4f}")
print("budget:", os.environ.get("AUTORESEARCH_BUDGET_S"), "secret:", os.environ.get("HERE_SECRET", "<unset>"))
"""


def git(root: Path, *args: str) -> str:
    r = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, capture_output=True,
                       text=True, check=True)
    return r.stdout.strip()


def make_repo(root: Path, files: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True)
    for name, text in (files or {"train.py": TRAIN, "prepare.py": "DATA = [1, 2, 3]\n"}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "start")
    return root


def cli(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoresearch.cli", "init", "--here", *args], cwd=root,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
                          env=env or dict(os.environ))


FLAGS = ["--run", "python train.py", "--editable", "train.py", "--protected", "prepare.py", "--metric", "val_loss",
         "--direction", "min", "--budget", "7"]


def test_from_flags_writes_checks_and_commits_only_the_new_files(tmp_path: Path):
    root = make_repo(tmp_path / "r")
    (root / "prepare.py").write_text("DATA = [1, 2, 3, 4]\n")
    git(root, "add", "prepare.py")  # staged by the user: must stay staged, not be committed by us
    (root / "notes.txt").write_text("untracked\n")
    head = git(root, "rev-parse", "HEAD")

    r = cli(root, *FLAGS, env=dict(os.environ, HERE_SECRET="sk-do-not-leak"))
    assert r.returncode == 0, r.stderr
    assert "it printed val_loss: 0.9" in r.stdout and "uncommitted changes to prepare.py" in r.stdout

    assert git(root, "rev-parse", "HEAD~1") == head
    assert sorted(git(root, "show", "--name-only", "--format=", "HEAD").split()) == ["autoresearch.toml",
                                                                                      "program.md"]
    assert git(root, "diff", "--cached", "--name-only") == "prepare.py"
    assert "notes.txt" in git(root, "status", "--porcelain")

    cfg = load(root)
    assert (cfg.experiment.run, cfg.experiment.editable, cfg.experiment.protected) == \
        ("python train.py", ["train.py"], ["prepare.py"])
    assert (cfg.metric.name, cfg.metric.direction, cfg.experiment.budget_s) == ("val_loss", "min", 7.0)
    assert "lower `val_loss`" in (root / "program.md").read_text()

    # The check ran the way the loop runs: in a worktree (not here), with the budget, without secrets.
    assert not (root / "ran-here.txt").exists()
    log = (root / ".autoresearch" / "logs" / "init-here" / "run.log").read_text()
    assert "budget: 7 secret: <unset>" in log
    assert git(root, "worktree", "list").count("\n") == 0  # its worktree is gone
    assert ".autoresearch" not in git(root, "status", "--porcelain")


def test_the_written_project_runs_in_the_loop(tmp_path: Path):
    root = make_repo(tmp_path / "r")
    assert cli(root, *FLAGS).returncode == 0
    cfg = load(root, {"agent": {"name": "mutate"}})
    out = Driver(cfg, "h", agents.create("mutate", cfg), limits=Limits(max_experiments=2)).run()
    rows = Ledger(root / ".autoresearch" / "ledger.db").experiments("h")
    assert out.experiments == 2 and rows[0].status == "keep" and rows[0].metric == pytest.approx(0.9)
    assert all(e.status in ("keep", "discard") for e in rows)


def test_a_metric_the_run_does_not_print_is_refused_and_nothing_is_written(tmp_path: Path):
    root = make_repo(tmp_path / "r")
    head = git(root, "rev-parse", "HEAD")
    flags = list(FLAGS)
    flags[flags.index("val_loss")] = "loss"
    r = cli(root, *flags)
    assert r.returncode == 1
    assert "no `loss:` line" in r.stderr and "it printed steps, val_loss" in r.stderr
    assert "    val_loss: 0.9000" in r.stderr  # the end of its output is quoted
    assert not (root / "autoresearch.toml").exists() and not (root / "program.md").exists()
    assert git(root, "rev-parse", "HEAD") == head


def test_a_crashing_command_is_refused(tmp_path: Path):
    root = make_repo(tmp_path / "r", {"train.py": "raise SystemExit('no data here')\n"})
    r = cli(root, "--run", "python train.py", "--editable", "train.py", "--metric", "val_loss", "--direction", "min")
    assert r.returncode == 1 and "ended `crash`: exit code 1" in r.stderr and "no data here" in r.stderr
    assert not (root / "autoresearch.toml").exists()


def test_refuses_to_overwrite(tmp_path: Path):
    root = make_repo(tmp_path / "r")
    (root / "autoresearch.toml").write_text("# mine\n")
    r = cli(root, *FLAGS)
    assert r.returncode == 1 and "already exists: refusing to overwrite" in r.stderr
    assert (root / "autoresearch.toml").read_text() == "# mine\n"


def test_keeps_an_existing_program_md(tmp_path: Path):
    root = make_repo(tmp_path / "r", {"train.py": TRAIN, "prepare.py": "X = 1\n", "program.md": "# my goals\n"})
    assert cli(root, *FLAGS).returncode == 0
    assert (root / "program.md").read_text() == "# my goals\n"
    assert git(root, "show", "--name-only", "--format=", "HEAD").split() == ["autoresearch.toml"]


@pytest.mark.parametrize("flags,message", [
    (["--run", "python train.py"], "needs --editable, --metric, --direction (stdin is not a terminal"),
    (FLAGS[:2] + ["--editable", "model.py"] + FLAGS[4:], "'model.py' matches no file committed at HEAD"),
    (FLAGS[:5] + ["train.py"] + FLAGS[6:], "train.py would be both editable and protected"),
    (FLAGS[:-3] + ["upward", "--budget", "7"], "'upward' is not a direction: min"),
    (FLAGS[:-1] + ["0"], "the budget must be a positive number"),
])
def test_bad_answers_are_refused_before_anything_runs(tmp_path: Path, flags, message):
    root = make_repo(tmp_path / "r")
    (root / "model.py").write_text("uncommitted\n")
    r = cli(root, *flags)
    assert r.returncode == 1 and message in r.stderr, r.stderr
    assert "running" not in r.stdout and not (root / "autoresearch.toml").exists()


def test_checks_that_fail_at_head_are_refused(tmp_path: Path):
    root = make_repo(tmp_path / "r")
    r = cli(root, *FLAGS, "--checks", "python -c 'import sys; print(\"2 failed\"); sys.exit(1)'")
    assert r.returncode == 1 and "do not pass at HEAD" in r.stderr and "2 failed" in r.stderr
    assert not (root / "autoresearch.toml").exists()
    assert cli(root, *FLAGS, "--checks", "python -c 'import train'").returncode == 0
    assert load(root).experiment.checks == "python -c 'import train'"


def test_not_a_git_repository(tmp_path: Path):
    (tmp_path / "plain").mkdir()
    r = cli(tmp_path / "plain", *FLAGS)
    assert r.returncode == 1 and "not in a git repository" in r.stderr


def test_a_project_in_a_subfolder_of_the_repository(tmp_path: Path):
    root = make_repo(tmp_path / "r", {"exp/train.py": TRAIN, "exp/prepare.py": "X = 1\n", "README": "top\n"})
    r = subprocess.run([sys.executable, "-m", "autoresearch.cli", "init", "--here", "-C", "exp", *FLAGS], cwd=root,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert sorted(git(root, "show", "--name-only", "--format=", "HEAD").split()) == ["exp/autoresearch.toml",
                                                                                      "exp/program.md"]
    assert load(root / "exp").experiment.editable == ["train.py"]


def test_asks_on_a_terminal_and_asks_again_when_the_check_run_fails(tmp_path: Path):
    root = make_repo(tmp_path / "r")
    answers = [
        ("Command that runs one experiment", "python train.py"),
        ("Files the agent may change", "model.py"),  # not committed: asked again
        ("Files the agent may change", "train.py"),
        ("must never change", "prepare.py"),
        ("Name of the metric", "loss"),  # not printed: the run fails, run and metric are asked again
        ("Is lower or higher better", "down"),  # not a direction: asked again
        ("Is lower or higher better", "min"),
        ("Time budget", "5"),
        ("guard command", ""),
        ("Command that runs one experiment", ""),  # Enter keeps the previous answer
        ("Name of the metric", "val_loss"),
    ]
    out = _converse(root, ["init", "--here"], answers)
    assert "matches no file committed at HEAD" in out and "not a direction" in out
    assert "no `loss:` line" in out and "it printed val_loss: 0.9" in out and "wrote and committed" in out
    cfg = load(root)
    assert (cfg.experiment.run, cfg.experiment.editable, cfg.metric.name, cfg.experiment.budget_s) == \
        ("python train.py", ["train.py"], "val_loss", 5.0)
    assert cfg.experiment.checks == ""


def test_on_a_terminal_failing_checks_are_asked_again(tmp_path: Path):
    root = make_repo(tmp_path / "r")
    out = _converse(root, ["init", "--here", *FLAGS], [
        ("guard command", "python -c 'raise SystemExit(1)'"),
        ("guard command", "python -c 'import train'"),
    ])
    assert "do not pass at HEAD" in out and load(root).experiment.checks == "python -c 'import train'"


def _converse(root: Path, argv: list[str], answers: list[tuple[str, str]], timeout: float = 60) -> str:
    """Run the CLI on a real pseudo-terminal; answer each expected question in turn."""
    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "autoresearch.cli", *argv], cwd=root, stdin=slave, stdout=slave,
                            stderr=slave, close_fds=True)
    os.close(slave)
    seen, pending = "", list(answers)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096).decode(errors="replace")
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            if pending and pending[0][0] in seen.rsplit("\n", 1)[-1]:
                os.write(master, (pending.pop(0)[1] + "\n").encode())
                seen += "\n"
            elif proc.poll() is not None and not ready:
                break
        assert proc.wait(timeout=10) == 0, seen
        assert not pending, f"never asked {pending[0][0]!r}:\n{seen}"
        return seen
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()


MISTUNE = {**{f"src/mistune/{m}.py": "X = 1\n" for m in ("__init__", "core", "block_parser", "inline_parser",
                                                         "markdown", "util")},
           "src/mistune/plugins/table.py": "Y = 2\n", "bench.py": 'print("time_ms: 12.5")\n'}
BENCH = ["--run", "python bench.py", "--metric", "time_ms", "--direction", "min", "--budget", "5"]


def test_shows_the_files_each_pattern_matches(tmp_path: Path):
    root = make_repo(tmp_path / "r", {k: v for k, v in MISTUNE.items() if "plugins" not in k})
    r = cli(root, *BENCH, "--editable", "src/mistune/*.py", "--protected", "bench.py")
    assert r.returncode == 0, r.stderr
    assert ("autoresearch: editable  'src/mistune/*.py' matches 6 files: src/mistune/__init__.py, "
            "src/mistune/block_parser.py, src/mistune/core.py, src/mistune/inline_parser.py (+2 more)") in r.stdout
    assert "autoresearch: protected 'bench.py' matches bench.py\n" in r.stdout
    assert "autoresearch: protected autoresearch.toml (always)" in r.stdout
    assert r.stdout.index("matches 6 files") < r.stdout.index("running `python bench.py`")  # before the check run


def test_a_pattern_with_a_typo_is_refused_naming_the_one_meant(tmp_path: Path):
    root = make_repo(tmp_path / "r", MISTUNE)
    r = cli(root, *BENCH, "--editable", "src/mistun/*.py")
    assert r.returncode == 1 and not (root / "autoresearch.toml").exists()
    assert ("--editable: 'src/mistun/*.py' matches no file committed at HEAD: did you mean 'src/mistune/*.py'?"
            in r.stderr), r.stderr
    r = cli(root, *BENCH, "--editable", "src/mistune/*.py", "--protected", "bench.pyy")
    assert r.returncode == 1 and "--protected: 'bench.pyy' matches no file committed at HEAD: did you mean " \
                                 "'bench.py'?" in r.stderr, r.stderr


def test_a_pattern_not_from_the_project_folder_is_refused_naming_the_anchored_one(tmp_path: Path):
    """The report: `--editable "mistune/*.py"` (no such path at the project folder) was accepted."""
    root = make_repo(tmp_path / "r", MISTUNE)
    r = cli(root, *BENCH, "--editable", "mistune/*.py")
    assert r.returncode == 1 and not (root / "autoresearch.toml").exists()
    assert ("'mistune/*.py' matches no file committed at HEAD: did you mean 'src/mistune/*.py'? (patterns start "
            "at the project folder)") in r.stderr, r.stderr


def test_run_shows_the_files_each_pattern_matches_and_refuses_one_that_matches_nothing(tmp_path: Path):
    from conftest import cli as autoresearch, make_project

    root = make_project(tmp_path / "p")
    r = autoresearch("run", "--agent", "mutate", "--max-experiments", "1", "--no-live", "--tag", "t", cwd=root)
    assert r.returncode == 0, r.stderr
    assert "autoresearch: editable  'train.py' matches train.py\n" in r.stdout
    assert "autoresearch: protected 'prepare.py' matches prepare.py\n" in r.stdout
    toml = root / "autoresearch.toml"
    toml.write_text(toml.read_text().replace('editable = ["train.py"]', 'editable = ["trian.py"]'))
    r = autoresearch("run", "--agent", "mutate", "--max-experiments", "1", "--no-live", "--tag", "u", cwd=root)
    assert r.returncode == 1
    assert ("`experiment.editable` pattern 'trian.py' matches no file in" in r.stderr
            and "did you mean 'train.py'?; fix the pattern in autoresearch.toml" in r.stderr), r.stderr


def test_flaky_checks_are_run_again_as_the_loop_does(tmp_path: Path):
    """The check run retries a failing check once (experiment.checks_retries' default), like the loop.
    Each attempt starts from a checkout cleaned of everything (ignored files too) in its own sandbox, so the
    check cannot remember; its flakiness comes from outside: a file it only reads, which the test flips once
    the first attempt has failed."""
    import threading
    import time

    import tempfile

    # outside /tmp, which is private to each sandboxed attempt (the machine is read-only to it, not hidden)
    verdict = Path(tempfile.mkdtemp(prefix="autoresearch-test-", dir="/var/tmp")) / "verdict"
    verdict.write_text("fail")
    root = make_repo(tmp_path / "r", {"train.py": TRAIN, "prepare.py": "DATA = [1, 2, 3]\n",
                                      "flaky.py": "import sys, time\n"
                                                  f"ok = open({str(verdict)!r}).read() == 'pass'\n"
                                                  "print('attempt', 'passes' if ok else 'fails', flush=True)\n"
                                                  "time.sleep(0 if ok else 1)\nsys.exit(0 if ok else 1)\n"})

    def flip() -> None:  # after the first attempt said it fails, the world changes (a flaky test's luck)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if any("attempt fails" in f.read_text(errors="replace") for f in root.glob(".autoresearch/**/checks.log")):
                verdict.write_text("pass")
                return
            time.sleep(0.05)

    t = threading.Thread(target=flip, daemon=True)
    t.start()
    r = cli(root, *FLAGS, "--checks", "python flaky.py")
    t.join(1)
    verdict.unlink()
    verdict.parent.rmdir()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "the checks failed (exit 1); running them again" in r.stdout


def test_a_timing_metric_gets_relative_noise_so_its_keeps_are_paired(tmp_path: Path):
    """The mistune report: `init --here ... --metric time_ms` wrote metric.noise = "absolute" (the default), so the
    default policy judged the timing unpaired, against incumbent runs taken at another time: the load drift that
    kept a do-nothing change as an 18.8% speed-up. A timing now gets "relative", which pairs; a loss does not."""
    from autoresearch import pairing

    root = make_repo(tmp_path / "r", MISTUNE)
    r = cli(root, *BENCH, "--editable", "src/mistune/*.py")
    assert r.returncode == 0, r.stderr
    assert 'time_ms reads as a timing: metric.noise = "relative"' in r.stdout
    cfg = load(root)
    assert cfg.metric.noise == "relative"
    assert pairing.enabled(cfg.policy.paired, cfg.metric.noise == "relative")
    other = make_repo(tmp_path / "loss")
    r = cli(other, *FLAGS)
    assert r.returncode == 0, r.stderr
    assert load(other).metric.noise == "absolute" and "reads as a timing" not in r.stdout


def test_is_timing_reads_names_by_their_words():
    from autoresearch.setup_here import is_timing

    for name in ("time_ms", "latency_us", "wall_seconds", "render.time", "parse-ns", "elapsed", "runtime"):
        assert is_timing(name, "min"), name
    for name in ("val_loss", "steps", "timestamps", "mse", "accuracy"):
        assert not is_timing(name, "min"), name
    assert not is_timing("time_ms", "max")  # a metric to make larger is not a time to save
