"""The agent protocol and the Proposal record every backend returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol

from .context import Context


@dataclass
class Proposal:
    """What an agent did to the worktree, in its own words, and what it cost."""

    description: str
    rationale: str = ""
    error: str = ""  # non-empty: the agent failed to propose (recorded, the loop goes on)
    stop: str = ""  # non-empty: the agent has nothing left to propose; the loop stops with this reason (no row)
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    latency_s: Optional[float] = None
    # meta["llm_calls"]: a list of dicts with the keyword arguments of Ledger.log_llm_call
    # (backend, model, prompt, reply, tokens_in, tokens_out, cost_usd, latency_s, error);
    # the loop logs them linked to the experiment's row once it exists.
    meta: dict[str, Any] = field(default_factory=dict)


class Agent(Protocol):
    name: str

    def propose(self, ctx: Context, workdir: Path) -> Proposal:
        """Edit files under `workdir` and describe the change in one line."""
        ...
