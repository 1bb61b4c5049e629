"""The command line as a new user meets it: real subprocesses of the installed `autoresearch`.

The quickstart acceptance (init + 20 experiments with the mutate agent) runs once per module; the
reading verbs (status, results, diff, report) are then checked on the record it left.
"""

from __future__ import annotations

import json
import time

import pytest
from conftest import cli, git, make_project, rows_of

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
QUICKSTART_GOAL_S = 120  # the goal on this machine
QUICKSTART_LIMIT_S = 200  # what the test enforces: the goal plus room for a machine shared with other work


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """`autoresearch init DIR --template quickstart && cd DIR && autoresearch run --agent mutate
    --max-experiments 20`, timed."""
    base = tmp_path_factory.mktemp("qs")
    root = base / "q"
    t0 = time.monotonic()
    r = cli("init", str(root), "--template", "quickstart", cwd=base)
    assert r.returncode == 0, r.stdout + r.stderr
    r = cli("run", "--agent", "mutate", "--max-experiments", "20", "--tag", "qs", cwd=root, timeout=QUICKSTART_LIMIT_S)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    print(f"\nquickstart: init + 20 experiments in {took:.1f}s (goal < {QUICKSTART_GOAL_S}s)")
    return root, took, r


def test_quickstart_acceptance(quickstart):
    root, took, r = quickstart
    assert took < QUICKSTART_LIMIT_S
    tsv = (root / "results.tsv").read_text().splitlines()
    assert tsv[0] == "commit\tval_loss\tmemory_gb\tstatus\tdescription"
    assert len(tsv) == 22, f"21 rows + header expected, got {len(tsv)} lines"
    assert (root / "progress.png").read_bytes()[:8] == PNG_MAGIC
    rows = rows_of(root, "qs")
    assert len(rows) == 21 and rows[0].kind == "baseline"
    keeps = [e for e in rows if e.status == "keep"]
    best = min(keeps, key=lambda e: e.metric)
    assert git(root, "rev-parse", "autoresearch/qs") == best.commit == keeps[-1].commit
    assert all(e.status in ("keep", "discard", "crash", "timeout", "violation") for e in rows)
    assert len({e.description for e in rows}) == 21  # mutate never repeats itself
    assert git(root, "status", "--porcelain") == ""
    assert "stopped (reached --max-experiments 20)" in r.stdout


def test_status_json(quickstart):
    root, _, _ = quickstart
    r = cli("status", "--json", cwd=root)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    rows = rows_of(root, "qs")
    inc = [e for e in rows if e.status == "keep"][-1]
    assert s["tag"] == "qs" and s["best_commit"] == inc.commit and s["best_metric"] == pytest.approx(inc.metric)
    assert sum(s["counts"].values()) == 21 and s["counts"]["keep"] == len([e for e in rows if e.status == "keep"])
    assert s["experiments"] == 21 and 0 < s["keep_rate"] <= 1 and s["metric"] == "val_loss"
    r = cli("status", cwd=root)
    assert r.returncode == 0 and "best val_loss" in r.stdout and inc.commit[:7] in r.stdout


def test_results_json_tsv_and_table(quickstart):
    root, _, _ = quickstart
    items = json.loads(cli("results", "--json", cwd=root).stdout)
    assert len(items) == 21
    for item, e in zip(items, rows_of(root, "qs")):
        for key in ("id", "commit", "parent", "status", "metric", "description"):
            assert key in item
        assert (item["id"], item["commit"], item["status"]) == (e.id, e.commit, e.status)
    tsv = cli("results", "--tsv", cwd=root).stdout
    assert tsv == (root / "results.tsv").read_text()
    table = cli("results", cwd=root).stdout.splitlines()
    assert len(table) == 23 and "description" in table[0] and "reason" in table[0]
    assert table[-1].startswith("improvement: val_loss ")  # the one figure (figures.py), as status shows it
    r = cli("results", "--tag", "nope", cwd=root)
    assert r.returncode == 1 and "no run tagged `nope`" in r.stderr and "qs" in r.stderr


def test_diff_prints_the_patch(quickstart):
    root, _, _ = quickstart
    cand = [e for e in rows_of(root, "qs") if e.commit and e.kind != "baseline"][0]
    r = cli("diff", str(cand.id), cwd=root)
    assert r.returncode == 0
    assert r.stdout.startswith("diff --git a/train.py b/train.py") and "\n-" in r.stdout and "\n+" in r.stdout
    name = cand.description.split()[0]
    assert any(line.startswith(f"+{name} = ") for line in r.stdout.splitlines())
    r = cli("diff", "999", cwd=root)
    assert r.returncode == 1 and "no experiment #999" in r.stderr


def test_report_writes_png_and_markdown(quickstart, tmp_path):
    root, _, _ = quickstart
    out = tmp_path / "out"
    r = cli("report", "--out", str(out), cwd=root)
    assert r.returncode == 0, r.stderr
    assert (out / "progress.png").read_bytes()[:8] == PNG_MAGIC
    md = (out / "report.md").read_text()
    best = [e for e in rows_of(root, "qs") if e.status == "keep"][-1]
    # The best as every view shows it (figures.py): the mean of its runs at the precision the measured noise
    # allows (the quickstart calibrates it), and its own run in the kept changes, numbered by ledger id.
    from autoresearch import figures
    from autoresearch.ledger import Ledger

    ledger = Ledger(root / ".autoresearch" / "ledger.db")
    fig = figures.improvement(ledger, "qs", figures.Spec.of(ledger, "qs"))
    assert fig.fmt.decimals is not None and fig.best_id == best.id
    assert "val_loss" in md and f"| Best val_loss | {fig.fmt(fig.best_mean)} (" in md
    assert f"| {best.id} | `{best.short}` | {fig.fmt(best.metric)} |" in md
    assert (root / "report.md").exists()  # `run` wrote one in the project too


def test_init_makes_a_committed_project_and_refuses_to_overwrite(tmp_path):
    root = tmp_path / "b"
    r = cli("init", str(root), "--template", "quickstart", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert git(root, "status", "--porcelain") == "" and git(root, "log", "--format=%s") != ""
    assert {"train.py", "prepare.py", "program.md", "autoresearch.toml"} <= set(git(root, "ls-files").split())
    before = (root / "train.py").read_text()
    (root / "train.py").write_text(before + "# mine\n")
    r = cli("init", str(root), "--template", "quickstart", cwd=tmp_path)
    assert r.returncode == 1 and "refusing to overwrite" in r.stderr and "Traceback" not in r.stderr
    assert (root / "train.py").read_text() == before + "# mine\n"
    r = cli("init", str(tmp_path / "c"), "--template", "nosuch", cwd=tmp_path)
    assert r.returncode == 1 and "unknown template `nosuch`" in r.stderr and "quickstart" in r.stderr


def test_init_inside_an_existing_repository_adds_to_it(tmp_path):
    outer = make_project(tmp_path / "mono")
    r = cli("init", str(outer / "research"), "--template", "quickstart", cwd=outer)
    assert r.returncode == 0, r.stderr
    assert not (outer / "research" / ".git").exists()
    assert "research/train.py" in git(outer, "ls-files").split()
    assert git(outer, "status", "--porcelain") == ""


@pytest.mark.parametrize("toml,needle", [
    ('[experiment]\nrun = "python train.py"\nbudget_s = 1\neditable = ["train.py"]\nbudjet = 3\n',
     "experiment.budjet"),
    ('[experiment]\nrun = "python train.py"\nbudget_s = 1\ntimeout_s = 0.5\neditable = ["train.py"]\n',
     "experiment.timeout_s"),
    ('[experiment\nrun = "x"\n', "not valid TOML"),
])
def test_bad_config_is_one_line_and_exit_1(tmp_path, toml, needle):
    root = make_project(tmp_path / "p", toml=toml)
    r = cli("run", "--max-experiments", "1", cwd=root)
    assert r.returncode == 1 and needle in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("autoresearch: error: ")


def test_user_errors_are_one_line(tmp_path):
    root = make_project(tmp_path / "p")
    r = cli("status", cwd=root)
    assert r.returncode == 1 and "no runs yet" in r.stderr and "autoresearch run" in r.stderr
    r = cli("run", "--agent", "mutat", "--max-experiments", "1", cwd=root)
    assert r.returncode == 1 and "did you mean `mutate`" in r.stderr and "Traceback" not in r.stderr
    (root / "train.py").write_text("# dirty\n")
    r = cli("run", "--max-experiments", "1", cwd=root)
    assert r.returncode == 1 and "uncommitted changes" in r.stderr and "Traceback" not in r.stderr
    r = cli("run", "-C", str(tmp_path / "missing"), cwd=root)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    r = cli(cwd=root)
    assert r.returncode == 2
    r = cli("--version", cwd=root)
    assert r.returncode == 0 and r.stdout.startswith("autoresearch ")


def test_budget_flag_past_the_configured_timeout_moves_the_timeout(tmp_path):
    root = make_project(tmp_path / "p")  # timeout_s = 20
    r = cli("run", "--tag", "b", "--budget", "30", "--agent", "mutate", "--max-experiments", "1", "--no-live", cwd=root)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = rows_of(root, "b")
    assert rows[0].budget_s == 30 and rows[0].timeout_s == 2 * 30 + 60
    r = cli("run", "--tag", "b", "--budget", "-1", "--max-experiments", "1", cwd=root)
    assert r.returncode == 1 and "experiment.budget_s" in r.stderr


def test_diff_takes_tag(tmp_path, capsys):
    """`diff N --tag T` (refused as an unknown argument before): the patch of experiment N of run T;
    an id of another run is refused naming the run it is in, an unknown tag names the known ones."""
    from conftest import ScriptedAgent, set_x

    from autoresearch.cli import main
    from autoresearch.config import load
    from autoresearch.driver import Driver, Limits

    root = make_project(tmp_path / "p")
    for tag, x in (("a", 2.0), ("mut", 1.5)):
        Driver(load(root), tag, ScriptedAgent([set_x(x)]), limits=Limits(max_experiments=1)).run()
    a, mut = rows_of(root, "a")[1], rows_of(root, "mut")[1]
    capsys.readouterr()
    assert main(["diff", str(mut.id), "--tag", "mut", "-C", str(root)]) == 0
    out = capsys.readouterr()
    assert "+X = 1.5" in out.out and "-X = 3.0" in out.out and f"#{mut.id}" in out.err
    assert main(["diff", str(a.id), "--tag", "mut", "-C", str(root)]) == 1
    err = capsys.readouterr().err
    assert f"no experiment #{a.id} in tag `mut`" in err and "is in tag `a`" in err
    assert main(["diff", str(a.id), "--tag", "a", "-C", str(root)]) == 0
    assert "+X = 2.0" in capsys.readouterr().out
    assert main(["diff", str(a.id), "--tag", "nope", "-C", str(root)]) == 1
    assert "no run tagged `nope`" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["results"], ["diff", "3"], ["status"], ["report"], ["watch"], ["finalize"],
                                  ["confirm"], ["pause"], ["resume"]])
def test_every_reading_verb_takes_a_tag(argv):
    from autoresearch.cli import _parser

    assert _parser().parse_args(argv + ["--tag", "mut"]).tag == "mut"
