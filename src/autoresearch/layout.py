"""The harness's own folder in a project, `.autoresearch/`: the one place its paths are spelled.

    .autoresearch/
        ledger.db                     the ledger (ledger.py): the source of truth
        eval_secret                   the evaluation's secret (integrity.py), 0600
        swarm.toml                    this participant's swarm settings (swarm.py)
        logs/<tag>/<id:05d>.log       one experiment's log (and its .checks.log, ...)
        locks/<tag>.lock              the tag's session lock (session.py)
        control/<tag>.pause           a pause request (control.py)
        notes/<tag>.md                the agent's notebook (agents/notebook.py)
        worktrees/<tag>/              the tag's worktrees and proposal folders (workspace.py)
        slots/<tag>/                  per-slot roots of the local engine (engines/)
        finalize/<tag>.md             the default summary of `finalize`
        launch/  remote/<cluster>/    SkyPilot task files and fetched results (launch.py)
        mlflow-artifacts/             the default artifact store of a local MLflow (tracking.py)

Guarantees: every module builds these paths through `Layout` (or `HOME` for a pattern or a
name to skip), so moving a file is a one-line change here; nothing here touches the disk.
Not covered: who creates a folder (its owner does) and what a file contains.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HOME = ".autoresearch"  # the folder's name: what runs never see (sandbox) and walks skip (workspace)


@dataclass(frozen=True)
class Layout:
    """The paths of `.autoresearch/` under a project root."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def home(self) -> Path:
        return self.root / HOME

    @property
    def ledger(self) -> Path:
        return self.home / "ledger.db"

    @property
    def eval_secret(self) -> Path:
        return self.home / "eval_secret"

    @property
    def swarm_settings(self) -> Path:
        return self.home / "swarm.toml"

    @property
    def launch(self) -> Path:
        return self.home / "launch"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.home / "mlflow-artifacts"

    def logs(self, tag: str) -> Path:
        return self.home / "logs" / tag

    def log(self, tag: str, exp_id: int, suffix: str = "") -> Path:
        """One experiment's log; `suffix` names a companion run of it (e.g. ".checks")."""
        return self.logs(tag) / f"{exp_id:05d}{suffix}.log"

    def lock(self, tag: str) -> Path:
        return self.home / "locks" / f"{tag}.lock"

    def pause(self, tag: str) -> Path:
        return self.home / "control" / f"{tag}.pause"

    def notes(self, tag: str) -> Path:
        return self.home / "notes" / f"{tag}.md"

    def worktrees(self, tag: str) -> Path:
        return self.home / "worktrees" / tag

    def slots(self, name: str) -> Path:
        """Per-slot roots of one engine run (`name`: the tag locally, a node's slot name on Ray)."""
        return self.home / "slots" / name

    def summary(self, tag: str) -> Path:
        return self.home / "finalize" / f"{tag}.md"

    def remote(self, cluster: str) -> Path:
        return self.home / "remote" / cluster

