"""Optional MLflow tracking: one MLflow run per finished experiment, one MLflow experiment per tag.

Turned on by `[tracking] mlflow_uri = "..."` in autoresearch.toml (any MLflow tracking URI:
`sqlite:///.autoresearch/mlflow.db`, `http://host:5000`, ...; a relative `sqlite:///` path is
relative to the project folder). Needs `pip install 'autoresearch[mlflow]'`; mlflow is imported
on first use only.

What is logged, for every experiment that reached a terminal state (the baseline included,
tagged `autoresearch.kind = baseline`: a run of 5 experiments holds 6 MLflow runs):
- params: description, kind, agent, seed, budget_s, timeout_s, policy;
- metrics: the metric under its own name, each secondary metric, peak_mem_mb, wall_s,
  cost_usd, tokens_in, tokens_out, agent_latency_s (those that exist);
- tags: autoresearch.status / .commit / .parent / .tag / .id / .kind / .reason;
- artifacts: patch.diff, log_tail.txt, evidence.json;
- the run's status: FINISHED (keep, discard), FAILED (crash, timeout, violation,
  checks_failed) or KILLED (interrupted); start and end times are the experiment's.

Guarantees:
- Exactly one active run per experiment, keyed by the tag `autoresearch.id`. Each call also
  logs every finished experiment of the tag that the store lacks, so what was missed while
  MLflow was unreachable (or before tracking was turned on) is filled in later, a
  bounded number per call. A run left RUNNING by a kill mid-logging is deleted and logged again.
- MLflow failing never stops the loop: the error becomes a `tracking` event in the ledger,
  and tracking is not tried again for RETRY_AFTER_S (so a dead server costs one timeout, not
  one per experiment). For HTTP servers the request timeout and retries are lowered through
  MLflow's own environment variables unless you set them.
- Costs ~0.2-0.4 s per experiment with a local SQLite store, plus a few seconds once (import,
  creating the store's tables).

Not covered: runs deleted or edited by hand in MLflow are not repaired; records never change
once finished, so neither do their runs.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Optional

from .config import Config
from .errors import ConfigError
from .layout import Layout
from .ledger import Experiment, Ledger
from .policy import resolve
from .states import Status

RETRY_AFTER_S = 60.0
BACKLOG_PER_CALL = 25
_RUN_STATUS = {Status.KEEP: "FINISHED", Status.DISCARD: "FINISHED", Status.INTERRUPTED: "KILLED"}  # the rest: FAILED


class NoTracker:
    """Tracking turned off: costs nothing."""

    def record(self, exp: Experiment) -> None:
        pass


def make(cfg: Config, tag: str, ledger: Ledger) -> "NoTracker | MlflowTracker":
    uri = cfg.tracking.mlflow_uri.strip()
    if not uri:
        return NoTracker()
    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError("`tracking.mlflow_uri` is set but mlflow is not installed: "
                          "pip install 'autoresearch[mlflow]', or remove mlflow_uri from [tracking]")
    return MlflowTracker(cfg, tag, ledger)


def resolve_uri(uri: str, root: Path) -> str:
    """A relative `sqlite:///path` is made relative to the project folder, not to the cwd."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str((root / uri[len("sqlite:///"):]).resolve())
    return uri


def experiment_name(cfg: Config, tag: str) -> str:
    return cfg.tracking.experiment.format(tag=tag, project=cfg.root.name)


class MlflowTracker:
    def __init__(self, cfg: Config, tag: str, ledger: Ledger):
        self.cfg, self.tag, self.ledger = cfg, tag, ledger
        self.uri = resolve_uri(cfg.tracking.mlflow_uri.strip(), cfg.root)
        self.name = experiment_name(cfg, tag)
        self._client: Any = None
        self._experiment_id: Optional[str] = None
        self._logged: Optional[set[int]] = None
        self._retry_at = 0.0
        self._failing = False

    # -- the one entry point ----------------------------------------------------------------
    def record(self, exp: Experiment) -> None:
        """Log `exp` (and any backlog); never raises."""
        if time.monotonic() < self._retry_at:
            return
        try:
            logged = self._sync(exp)
        except Exception as e:  # MLflow failing is data, not a harness failure
            self._retry_at = time.monotonic() + RETRY_AFTER_S
            self._client = None  # reconnect next time
            if not self._failing:
                self._failing = True
                self._event(f"MLflow logging failed ({type(e).__name__}: {_one_line(e)}); the loop goes on, "
                            f"tracking retries in {RETRY_AFTER_S:g}s and fills in what it missed", exp.id)
            return
        if self._failing:
            self._failing = False
            self._event(f"MLflow logging works again: {logged} run(s) logged, missed ones filled in", exp.id)

    def _sync(self, exp: Experiment) -> int:
        client, experiment_id = self._connect()
        done = [e for e in self.ledger.experiments(self.tag) if e.status != Status.RUNNING and e.id not in self._logged]
        current = [e for e in done if e.id == exp.id]
        backlog = [e for e in done if e.id != exp.id][:BACKLOG_PER_CALL]
        for e in current + backlog:
            self._log(client, experiment_id, e)
            self._logged.add(e.id)
        return len(current) + len(backlog)

    # -- MLflow --------------------------------------------------------------------------
    def _connect(self) -> tuple[Any, str]:
        if self._client is not None:
            return self._client, self._experiment_id
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "alembic"):  # after the import, which sets them: table creation logs at INFO
            logging.getLogger(name).setLevel(logging.WARNING)
        client = MlflowClient(tracking_uri=self.uri)
        found = client.get_experiment_by_name(self.name)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            experiment_id = client.create_experiment(self.name, artifact_location=self._artifact_location(),
                                                     tags={"autoresearch.tag": self.tag,
                                                           "autoresearch.project": str(self.cfg.root)})
        self._logged = self._already_logged(client, experiment_id)
        self._client, self._experiment_id = client, experiment_id
        return client, experiment_id

    def _artifact_location(self) -> Optional[str]:
        """Local stores keep artifacts beside the project, not in `./mlruns` of whatever the cwd is."""
        if self.cfg.tracking.artifact_location:
            return self.cfg.tracking.artifact_location
        if self.uri.split(":", 1)[0] in ("http", "https", "databricks"):
            return None  # the server decides
        return Layout(self.cfg.root).mlflow_artifacts.resolve().as_uri()

    def _already_logged(self, client: Any, experiment_id: str) -> set[int]:
        ids: set[int] = set()
        token = None
        while True:
            page = client.search_runs([experiment_id], max_results=1000, page_token=token)
            for run in page:
                raw = run.data.tags.get("autoresearch.id", "")
                if not raw.isdigit():
                    continue
                if run.info.status == "RUNNING":  # killed mid-logging: log it again, whole
                    client.delete_run(run.info.run_id)
                else:
                    ids.add(int(raw))
            token = page.token
            if not token:
                return ids

    def _log(self, client: Any, experiment_id: str, e: Experiment) -> None:
        from mlflow.entities import Metric, Param, RunTag

        start_ms = int((e.started_at or time.time()) * 1000)
        end_ms = int((e.ended_at or e.started_at or time.time()) * 1000)
        run = client.create_run(experiment_id, start_time=start_ms, run_name=f"#{e.id} {e.description[:60]}",
                                tags={"autoresearch.id": str(e.id)})
        run_id = run.info.run_id
        metrics = [Metric(_key(k), float(v), end_ms, 0) for k, v in self._metrics(e).items()]
        params = [Param(k, str(v)[:500]) for k, v in self._params(e).items()]
        tags = [RunTag(k, str(v)[:5000]) for k, v in self._tags(e).items()]
        client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
        if e.patch:
            client.log_text(run_id, e.patch, "patch.diff")
        if e.log_tail:
            client.log_text(run_id, e.log_tail, "log_tail.txt")
        if e.evidence:
            client.log_text(run_id, json.dumps(e.evidence, indent=2, default=str), "evidence.json")
        client.set_terminated(run_id, _RUN_STATUS.get(e.status, "FAILED"), end_time=end_ms)

    # -- what a run holds ------------------------------------------------------------------
    def _params(self, e: Experiment) -> dict[str, Any]:
        return {"description": e.description, "kind": e.kind, "agent": e.agent or "-", "seed": e.seed,
                "budget_s": e.budget_s, "timeout_s": e.timeout_s, "policy": resolve(self.cfg)}

    def _metrics(self, e: Experiment) -> dict[str, float]:
        out: dict[str, float] = {}
        if e.metric is not None:
            out[self.cfg.metric.name] = e.metric
        out.update({k: v for k, v in (e.metrics or {}).items() if isinstance(v, (int, float))})
        for name in ("peak_mem_mb", "wall_s", "agent_latency_s"):
            if getattr(e, name) is not None:
                out[name] = getattr(e, name)
        if e.cost_usd or e.tokens_in or e.tokens_out:
            out.update(cost_usd=e.cost_usd, tokens_in=e.tokens_in, tokens_out=e.tokens_out)
        return {k: v for k, v in out.items() if v == v and abs(v) != float("inf")}

    def _tags(self, e: Experiment) -> dict[str, Any]:
        return {"autoresearch.status": e.status, "autoresearch.commit": e.commit or "",
                "autoresearch.parent": e.parent or "", "autoresearch.tag": self.tag,
                "autoresearch.kind": e.kind, "autoresearch.reason": e.reason or "",
                "mlflow.source.git.commit": e.commit or ""}

    def _event(self, message: str, exp_id: Optional[int]) -> None:
        try:
            self.ledger.event(self.tag, "tracking", message, exp_id)
        except Exception:  # the ledger failing is the loop's problem to report, not ours
            pass


def _key(name: str) -> str:
    """MLflow accepts letters, digits, `_ - . / ` and spaces in metric names."""
    return re.sub(r"[^\w\-./ ]", "_", name)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 200 else text[:197] + "..."
