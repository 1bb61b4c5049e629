"""Engines: where experiments run — `local` (N slots on this machine) and `ray` (a cluster).

Protocol: see base.py. Backends are plugins: every built-in is registered under the
entry-point group `autoresearch.engines` exactly as a third-party package would register
its own; `create(name, cfg)` finds one by name.

`proposals_ahead(cfg)` says how many proposals the driver (driver.py) keeps ready beyond
the free slots: none for one local worker (the original's algorithm: propose, run,
decide), some for several.
"""

from __future__ import annotations

from .. import plugins
from ..errors import ConfigError
from .base import Engine, Job, Result, RunInfo, Slot, WorkerLost

GROUP = "autoresearch.engines"

# Used only when the package runs from a source tree without installed metadata.
_BUILTIN = {
    "local": "autoresearch.engines.local:LocalEngine",
    "ray": "autoresearch.engines.ray:RayEngine",
}


def available() -> dict[str, str]:
    return plugins.available(GROUP, _BUILTIN)


def create(name: str, cfg) -> Engine:
    return plugins.load(GROUP, _BUILTIN, name, ConfigError, "engine.name")(cfg)


def proposals_ahead(cfg) -> int:
    """Proposals kept ready beyond the free slots: `engine.proposals_ahead`, else 0 for one local worker
    (the original's sequential algorithm) and a quarter of the workers (at least 1) otherwise — enough to absorb a burst
    of experiments ending together while the agent works through them one at a time."""
    ahead = cfg.engine.proposals_ahead
    if ahead is not None:
        return ahead
    return 0 if cfg.engine.workers == 1 and cfg.engine.name == "local" else max(1, cfg.engine.workers // 4)


__all__ = ["Engine", "Job", "Result", "RunInfo", "Slot", "WorkerLost", "available", "create", "proposals_ahead"]
