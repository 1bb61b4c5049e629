"""The team of researchers a run draws its proposals from: `[[agents]]`, or `[agent]` alone.

Owns `members(cfg, parallel)`: the researchers, each a `Member` with its label (the name every row,
`status` and the reports give it), the config it is built from, its weight and why that backend.

Guarantees:
- Labels are `<backend>[:<model>]#<n>`: the backend as resolved (`auto` is chosen per entry by
  select.choose(), so an entry left at `auto` gets a real backend), the model when the entry names
  one, and n counting from 1 across the whole team in file order (`claude-code:sonnet#1`,
  `claude-code:sonnet#2`, `codex#3`, `mutate#4`). A label is unique within a team.
- `m.cfg` is a deep copy of `cfg` whose `agent` is the member's own table (its entry, the keys it
  leaves out being [agent]'s) with `name` resolved: `agents.create(m.cfg.agent.name, m.cfg)` builds
  the researcher, and nothing one member's copy is changed to reaches another or `cfg`.
- Without `[[agents]]` the team is `[agent]` itself, replicated `parallel` times (#1..#parallel),
  each with weight 1. The k-th copy of an entry (from 0) gets `agent.seed + k`, so copies of a
  seeded backend (mutate, a sampling model) do not propose the same changes. With `[[agents]]` the team is exactly what it declares (`count` researchers
  per entry, each with the entry's weight); `parallel` does not add researchers to it (config.py
  refuses a `parallel` larger than the team), it only says how many propose at once.
- `weight` is a researcher's share of the proposals relative to the others' (an entry with
  weight 2 and count 1 has one researcher that should make twice as many proposals as one of
  weight 1). Drawing by weight is the driver's: this module only states the shares.

Not covered: whether a backend can start (a CLI missing, a key absent): `agents.create()` and the
agent's first proposal find out, per member. The caps of an entry (`max_usd`, `max_tokens`,
`timeout_s`) are carried in `m.cfg.agent`; enforcing them per researcher is the driver's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Optional

from ..config import Config
from .select import choose


@dataclass
class Member:
    """One researcher of the team."""

    label: str  # `<backend>[:<model>]#<n>`: what its rows record as `researcher`
    cfg: Config  # a copy of the run's config whose `agent` is this researcher's (name resolved)
    weight: float = 1.0
    reason: str = ""  # why this backend (select.choose()'s reason when the entry said `auto`)

    @property
    def backend(self) -> str:
        return self.cfg.agent.name


def members(cfg: Config, parallel: Optional[int] = None) -> list[Member]:
    """The team of `cfg` (see the module docstring). `parallel`: how many copies of `[agent]` make the
    team when there is no `[[agents]]` (default 1; the driver passes the M it resolved `parallel` to)."""
    if parallel is not None and (isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1):
        raise ValueError(f"parallel must be a whole number >= 1, got {parallel!r}")  # a caller's bug
    entries = [(e.agent, e.weight, e.count) for e in cfg.team] or [(cfg.agent, 1.0, parallel or 1)]
    out: list[Member] = []
    for agent, weight, count in entries:
        own = copy.deepcopy(cfg)
        own.agent = copy.deepcopy(agent)
        choice = choose(own)
        own.agent.name = choice.name
        for k in range(count):
            mine = copy.deepcopy(own)  # each researcher its own copy: one's changes never reach another
            mine.agent.seed = own.agent.seed + k  # copies of one entry must not propose alike (mutate, sampling)
            out.append(Member(label(mine.agent.name, mine.agent.model, len(out) + 1), mine, weight, choice.reason))
    return out


def label(backend: str, model: str, n: int) -> str:
    """`claude-code:sonnet#1`, `mutate#3`: the name of researcher n (counted from 1 across the team)."""
    return f"{backend}{':' + model if model else ''}#{n}"


def describe(team: list[Member]) -> list[dict[str, Any]]:
    """The team as plain data (label, backend, model, weight, reason), for a start-up line or a session's note."""
    return [{"label": m.label, "backend": m.backend, "model": m.cfg.agent.model, "weight": m.weight,
             "reason": m.reason} for m in team]
