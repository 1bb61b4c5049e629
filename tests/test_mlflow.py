"""MLflow tracking against a real MLflow store (SQLite backend), written by a real `autoresearch run`.

Decision under test: the baseline is an experiment like the others, so a run of 5 experiments
(the baseline and `--max-experiments 4`) holds exactly 5 MLflow runs, the baseline tagged
`autoresearch.kind = baseline`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import cli, make_project, rows_of
from runbuilder import agent_command

from autoresearch.config import load
from autoresearch.errors import ConfigError

mlflow = pytest.importorskip("mlflow", reason="pip install 'autoresearch[mlflow]' (CI installs it)")
from mlflow.tracking import MlflowClient  # noqa: E402

# X = 2.5 keeps, 2.8 is worse, "oops" crashes (TypeError), its repair 2.0 keeps, 2.2 is worse.
STEPS = [2.5, 2.8, '"oops"', 2.0, 2.2]


def run_loop(root: Path, tmp: Path, *args: str):
    cmd, _ = agent_command(tmp / "agent", STEPS)
    return cli("run", "--tag", "ml", "--no-live", "--agent", "command", "--agent-command", cmd, *args, cwd=root,
               timeout=180)


def tracked_project(root: Path, uri: str) -> Path:
    return make_project(root, extra_toml=f'\n[tracking]\nmlflow_uri = "{uri}"\n')


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables made once (MLflow's migrations take seconds): tests copy it."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


def test_a_five_experiment_run_holds_five_runs_with_the_right_metrics_and_tags(tmp_path: Path, empty_store: Path):
    root = tracked_project(tmp_path / "proj", "sqlite:///.autoresearch/mlflow.db")  # relative to the project
    (root / ".autoresearch").mkdir()
    shutil.copy(empty_store, root / ".autoresearch" / "mlflow.db")
    r = run_loop(root, tmp_path, "--max-experiments", "4")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "INFO mlflow" not in r.stdout + r.stderr  # MLflow's table-creation chatter stays out of the view
    rows = rows_of(root, "ml")
    assert [e.status for e in rows] == ["keep", "keep", "discard", "crash", "keep"]

    client = MlflowClient(tracking_uri=f"sqlite:///{root / '.autoresearch' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("proj/ml")
    assert exp is not None, [e.name for e in client.search_experiments()]
    runs = {int(r.data.tags["autoresearch.id"]): r for r in client.search_runs([exp.experiment_id])}
    assert sorted(runs) == [e.id for e in rows] and len(runs) == 5  # exactly one run per experiment

    for e in rows:
        run = runs[e.id]
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        assert tags["autoresearch.status"] == e.status
        assert tags["autoresearch.commit"] == e.commit and tags["autoresearch.parent"] == e.parent
        assert tags["autoresearch.tag"] == "ml" and tags["autoresearch.kind"] == e.kind
        assert params["description"] == e.description and params["seed"] == "42"
        assert float(params["budget_s"]) == 1.0 and params["policy"] == "greedy"
        assert params["agent"] == ("-" if e.kind == "baseline" else "command")
        assert run.info.status == ("FAILED" if e.status == "crash" else "FINISHED")
        assert run.info.start_time == int(e.started_at * 1000) and run.info.end_time == int(e.ended_at * 1000)
        if e.metric is None:
            assert "score" not in metrics
        else:
            assert metrics["score"] == pytest.approx(e.metric) and metrics["aux"] == 7.0
            assert metrics["wall_s"] == pytest.approx(e.wall_s)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert ("patch.diff" in artifacts) == bool(e.patch)
    assert runs[rows[0].id].data.tags["autoresearch.kind"] == "baseline"
    assert [e.metric for e in rows if e.status == "keep"] == [4.5, 2.75, 1.5]

    kept = rows[1]
    patch = Path(client.download_artifacts(runs[kept.id].info.run_id, "patch.diff", str(tmp_path))).read_text()
    assert "+X = 2.5" in patch and "-X = 3.0" in patch
    crash = rows[3]
    tail = Path(client.download_artifacts(runs[crash.id].info.run_id, "log_tail.txt", str(tmp_path))).read_text()
    assert "TypeError" in tail
    # Artifacts live beside the project, not in ./mlruns of whatever folder the run was started from.
    assert (root / ".autoresearch" / "mlflow-artifacts").is_dir() and not (root / "mlruns").exists()


def test_mlflow_failing_never_stops_the_loop_and_the_next_run_fills_in(tmp_path: Path, empty_store: Path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the store's folder should be")
    uri = f"sqlite:///{blocker}/mlflow.db"
    root = tracked_project(tmp_path / "proj", uri)

    r = run_loop(root, tmp_path, "--max-experiments", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    rows = rows_of(root, "ml")
    assert [e.status for e in rows] == ["keep", "keep", "discard"]
    from conftest import ledger_of

    led = ledger_of(root)
    events = [ev for ev in led.events("ml") if ev["kind"] == "tracking"]
    led.close()
    assert len(events) == 1 and events[0]["message"].startswith("MLflow logging failed (")  # once, not per row

    blocker.unlink()  # MLflow is reachable again: the next session logs what was missed
    blocker.mkdir()
    shutil.copy(empty_store, blocker / "mlflow.db")
    r = run_loop(root, tmp_path, "--max-experiments", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    rows = rows_of(root, "ml")
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("proj/ml")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(int(r.data.tags["autoresearch.id"]) for r in runs) == [e.id for e in rows]
    assert len(rows) == 4


def test_tracking_config_is_validated(tmp_path: Path):
    root = tracked_project(tmp_path / "a", "mlflow.db")
    with pytest.raises(ConfigError, match="must be an MLflow tracking URI"):
        load(root)
    root = make_project(tmp_path / "b", extra_toml='\n[tracking]\nmlflow_url = "sqlite:///x.db"\n')
    with pytest.raises(ConfigError, match="did you mean `mlflow_uri`"):
        load(root)
    root = make_project(tmp_path / "c", extra_toml='\n[tracking]\nmlflow_uri = "sqlite:///x.db"\nexperiment = "all"\n')
    with pytest.raises(ConfigError, match=r"must contain \{tag\}"):
        load(root)
