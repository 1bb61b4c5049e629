"""What the agent sees: one Context per proposal, shared by every backend.

Guarantees:
- Built from the ledger and the worktree alone, so it is the same after a resume.
- `render()` is bounded: the history is summarised (counts, the best K, the last N,
  near-misses, the trend) rather than dropped or pasted whole; a crash shows only the
  last lines of its log; file contents are cut with a marker when over the budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..config import Config, tracked_or_present
from ..ledger import Experiment

CHARS_PER_TOKEN = 4  # a rough, conservative estimate; good enough for a budget


@dataclass
class Context:
    cfg: Config
    tag: str
    program: str
    files: dict[str, str]  # editable files, path -> text
    readonly: dict[str, str]  # protected files the agent may read
    history: list[Experiment]
    incumbent: Optional[Experiment]
    repair: Optional[Experiment] = None  # the crashed experiment to fix, if this is a repair
    running: list[str] = field(default_factory=list)  # descriptions of experiments in flight
    ideas: str = ""
    experiment_id: Optional[int] = None

    @property
    def lower_is_better(self) -> bool:
        return self.cfg.lower_is_better()

    def tried_descriptions(self) -> set[str]:
        return {_norm(e.description) for e in self.history} | {_norm(d) for d in self.running}

    def render(self, max_tokens: Optional[int] = None) -> str:
        budget = (max_tokens or self.cfg.agent.context_tokens) * CHARS_PER_TOKEN
        m = self.cfg.metric
        parts = [
            "# Your task\n",
            f"You are the researcher in an automated loop. Propose ONE change to the editable files that you expect "
            f"to make `{m.name}` {'lower' if self.lower_is_better else 'higher'}. The harness commits it, runs "
            f"`{self.cfg.experiment.run}` with a budget of {self.cfg.experiment.budget_s:g}s, and keeps the change "
            f"only if the metric improves. Change only: {', '.join(self.cfg.experiment.editable)}. "
            f"Never change: {', '.join(self.cfg.experiment.protected) or '(nothing listed)'}.\n",
            "# Research program (program.md)\n", self.program.strip() + "\n",
        ]
        if self.repair is not None:
            parts += [
                f"# The last experiment crashed: fix it\n",
                f"#{self.repair.id} \"{self.repair.description}\" ended `{self.repair.status}` ({self.repair.reason}). "
                "Fix the bug if the idea is sound, keeping its intent. Last lines of its log:\n",
                "```\n" + self.repair.log_tail[-4000:] + "\n```\n",
            ]
        parts.append(self.history_summary())
        if self.running:
            parts.append("# Running now (do not propose these again)\n" + "\n".join(f"- {d}" for d in self.running) + "\n")
        if self.ideas.strip():
            parts.append("# Your notebook (ideas.md)\n" + self.ideas.strip()[-3000:] + "\n")
        fixed = "".join(parts)
        room = max(2000, budget - len(fixed))
        parts.append(_files_section("Editable files", self.files, int(room * 0.75)))
        if self.readonly:
            parts.append(_files_section("Read-only files (never change these)", self.readonly, int(room * 0.25)))
        return "\n".join(parts)

    def history_summary(self, best_k: int = 8, last_n: int = 10) -> str:
        done = [e for e in self.history if e.status != "running"]
        if not done:
            return "# History\nNo experiments yet.\n"
        counts: dict[str, int] = {}
        for e in done:
            counts[e.status] = counts.get(e.status, 0) + 1
        lines = ["# History", f"{len(done)} experiments: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))]
        if self.incumbent and self.incumbent.metric is not None:
            lines.append(f"Current best: {self.incumbent.metric:.6f} (#{self.incumbent.id}, {self.incumbent.description})")
        kept = [e for e in done if e.status == "keep"]
        if kept:
            lines.append("\nKept changes, in order:")
            lines += [f"- #{e.id} {e.metric:.6f} {e.description}" for e in kept[-best_k:] if e.metric is not None]
        scored = [e for e in done if e.metric is not None and e.status == "discard"]
        if scored:
            sign = 1 if self.lower_is_better else -1
            near = sorted(scored, key=lambda e: sign * e.metric)[:5]
            lines.append("\nNear-misses (measured, not kept):")
            lines += [f"- #{e.id} {e.metric:.6f} {e.description}" for e in near]
        lines.append(f"\nLast {min(last_n, len(done))} experiments:")
        for e in done[-last_n:]:
            val = f"{e.metric:.6f}" if e.metric is not None else "-"
            lines.append(f"- #{e.id} {e.status:<12} {val:>10}  {e.description}" + (f"  ({e.reason})" if e.reason and
                                                                                   e.status != "keep" else ""))
        tried = sorted({e.description for e in done})
        if len(tried) > last_n:
            lines.append("\nAlready tried (do not repeat): " + "; ".join(tried[-60:]))
        return "\n".join(lines) + "\n"


def _files_section(title: str, files: dict[str, str], room: int) -> str:
    out = [f"# {title}"]
    each = max(500, room // max(1, len(files)))
    for path, text in files.items():
        body = text if len(text) <= each else text[:each] + f"\n... [cut: {len(text) - each} more characters]"
        out.append(f"## {path}\n```\n{body}\n```")
    return "\n".join(out) + "\n"


def _norm(s: str) -> str:
    return " ".join(s.lower().split())


def read_files(root: Path, globs: list[str], exclude: list[str] = ()) -> dict[str, str]:
    from ..config import _matches

    out = {}
    for rel in sorted(tracked_or_present(root)):
        if _matches(rel, globs) and not _matches(rel, list(exclude)):
            try:
                out[rel] = (root / rel).read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue  # binary or unreadable: not shown to a text agent
    return out
