"""What the agent sees: one Context per proposal, shared by every backend.

Sections, in order: the task and its rules; program.md; (a repair: the crashed
experiment and the last 50 lines of its log); the history, summarised; the last crash
and its log's last lines; experiments running now; the human's ideas.md and the
agent's own notebook; the don't-repeat list; the editable files in full; the
protected files it may read, marked read-only.

Guarantees:
- Built from the ledger, the project folder and the worktree alone, so it is the same
  after a resume.
- `render()` stays under `agent.context_tokens` (estimated at CHARS_PER_TOKEN). When the
  full rendering is too big it summarises harder, step by step: fewer history rows,
  shorter log tails and notes, read-only files cut, and only then the editable files
  cut with a marker. History is summarised (counts per status, the metric's trend, the
  best changes, near-misses, the last N), never pasted whole; logs never appear beyond
  their last lines.
- `find_repeat(patch)` names an earlier experiment that made the same change (the same
  added and removed lines in the same files), whatever its parent.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..config import Config
from ..states import Kind, Status
from ..workspace import tracked_or_present
from ..ledger import Experiment
from . import notebook

CHARS_PER_TOKEN = 3.5  # code and logs run ~3-4 characters per token; err on the side of fewer
FAILED_RUN = (Status.CRASH, Status.TIMEOUT)
# Per summarising level: best K, last N, near-misses, don't-repeat entries, log lines, notes chars.
LEVELS = [
    dict(best=10, last=12, near=6, tried=80, log=50, notes=6000, ideas=4000, desc=160),
    dict(best=6, last=8, near=4, tried=40, log=30, notes=3000, ideas=2500, desc=120),
    dict(best=4, last=5, near=3, tried=15, log=20, notes=1500, ideas=1500, desc=90),
    dict(best=3, last=3, near=2, tried=5, log=10, notes=600, ideas=600, desc=70),
]


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


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
    ideas: str = ""  # the human's ideas.md (read live from the project)
    experiment_id: Optional[int] = None
    notes: Optional[str] = None  # the agent's notebook; None: read from .autoresearch/notes/<tag>.md
    tracked: frozenset = frozenset()  # the proposal folder's files at the start (project paths)
    sandbox: Any = None  # the session's sandbox.Sandbox: process agents run through its wrap_agent()
    figure: Any = None  # figures.Figure: the improvement of the best over the start, as every view shows it
    swarm: str = ""  # what other participants kept and failed (swarm.Swarm.hints: bounded there)
    call: str = ""  # this agent call's name, unique among calls in flight (researchers propose at once); see call_id

    def call_id(self) -> str:
        """The name of this agent call: its log is `agent-<call>.log` and its processes carry it in their
        marker. Researchers proposing at once see the same history, so the history's length alone is not
        enough: two calls would share a log (each deleting the other's) and a marker (the first to finish
        killing the others' processes)."""
        return self.call or f"{len(self.history):05d}"

    @property
    def lower_is_better(self) -> bool:
        return self.cfg.lower_is_better()

    @property
    def done(self) -> list[Experiment]:
        return [e for e in self.history if e.status != Status.RUNNING]

    def tried_descriptions(self) -> set[str]:
        return {_norm(e.description) for e in self.history} | {_norm(d) for d in self.running}

    def find_repeat(self, patch: str) -> Optional[Experiment]:
        key = change_key(patch)
        if not key:
            return None
        for e in reversed(self.history):
            if e.patch and e.kind != Kind.BASELINE and change_key(e.patch) == key:
                return e
        return None

    def notebook(self) -> str:
        return self.notes if self.notes is not None else notebook.read(self.cfg.root, self.tag)

    # -- rendering ------------------------------------------------------------------------
    def render(self, max_tokens: Optional[int] = None) -> str:
        budget = int((max_tokens or self.cfg.agent.context_tokens) * CHARS_PER_TOKEN)
        editable = _files_section("Editable files (you may change these)", self.files)
        head = ""
        for level in range(len(LEVELS)):
            head = self._head(level, budget)
            readonly = _files_section("Read-only files (never change these; shown for reference)", self.readonly)
            text = _join(head, editable, readonly)
            if len(text) <= budget:
                return text
            room = budget - len(head) - len(editable) - 200
            if self.readonly and room >= 400 * len(self.readonly):
                text = _join(head, editable, _files_section(
                    "Read-only files (never change these; shown for reference, cut to fit)", self.readonly, room))
                if len(text) <= budget:
                    return text
        # Still too big at the tersest summary: the files themselves must be cut.
        names = ", ".join(self.readonly) or "-"
        ro_note = f"# Read-only files (never change these)\n{names} (not shown: the context budget is spent)\n"
        room = budget - len(head) - len(ro_note) - 200
        text = _join(head, _files_section("Editable files (you may change these; cut to fit agent.context_tokens)",
                                          self.files, max(0, room)), ro_note)
        if len(text) > budget:  # a huge program.md or notebook: the last resort is a hard cut
            text = text[:max(0, budget - 80)] + "\n[... context cut at agent.context_tokens]\n"
        return text

    def _head(self, level: int, budget: int) -> str:
        lv = LEVELS[level]
        m, e = self.cfg.metric, self.cfg.experiment
        parts = [
            "# Your task\n"
            f"You are the researcher in an automated research loop. Propose ONE change to the editable files that "
            f"you expect to make `{m.name}` {'lower' if self.lower_is_better else 'higher'}. The harness commits "
            f"it, runs `{e.run}` under a fixed budget of {e.budget_s:g}s, and keeps the change only if the metric "
            f"improves; otherwise it is reverted. Change only: {', '.join(e.editable)}. "
            f"Never change: {', '.join(e.protected) or '(nothing listed)'} (a change there is refused as a "
            "violation). Prefer simple changes; do not repeat what was tried before.\n",
            "# Research program (program.md)\n" + _cap(self.program.strip(), max(2000, budget // 4)) + "\n",
        ]
        if self.repair is not None:
            r = self.repair
            parts.append(
                f"# The last experiment crashed: fix it\n#{r.id} \"{r.description}\" ended `{r.status}` ({r.reason}). "
                "The editable files below are that experiment's version. Fix the bug if the idea is sound, keeping "
                f"its intent. Last {lv['log']} lines of its log:\n```\n{_tail(r.log_tail, lv['log'])}\n```\n")
        parts.append(self.history_summary(level))
        crash = self.last_crash()
        if crash is not None and (self.repair is None or crash.id != self.repair.id):
            parts.append(
                f"# The last failed run: #{crash.id} ({crash.status}: {crash.reason})\n"
                f"\"{_short(crash.description, lv['desc'])}\". Last {lv['log']} lines of its log:\n"
                f"```\n{_tail(crash.log_tail, lv['log'])}\n```\n")
        if self.running:
            parts.append("# Running now (do not propose these again)\n"
                         + "\n".join(f"- {_short(d, lv['desc'])}" for d in self.running[-20:]) + "\n")
        if self.swarm:
            parts.append(self.swarm[: max(600, budget // 8)] + "\n")
        if self.ideas.strip():
            parts.append("# Ideas from the human (ideas.md)\n" + _cap_tail(self.ideas.strip(), lv["ideas"]) + "\n")
        notes = self.notebook().strip()
        parts.append("# Your notebook (what you wrote in earlier proposals; add to it in a NOTES: section)\n"
                     + (_cap_tail(notes, lv["notes"]) if notes else "(empty)") + "\n")
        parts.append(self.dont_repeat(lv["tried"], lv["desc"], skip=lv["last"]))
        return "\n".join(parts)

    def history_summary(self, level: int = 0) -> str:
        lv = LEVELS[level]
        done = self.done
        if not done:
            return "# History\nNo experiments yet.\n"
        counts: dict[str, int] = {}
        for e in done:
            counts[e.status] = counts.get(e.status, 0) + 1
        lines = ["# History", f"{len(done)} experiments: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))]
        base = next((e for e in done if e.kind == Kind.BASELINE and e.metric is not None), None)
        inc = self.incumbent
        fig = self.figure
        if inc is not None and fig is not None and fig.best_mean is not None:  # the figure `status` shows
            lines.append(f"Current best: {fig.fmt(fig.best_mean)} over {fig.best_runs} run(s) "
                         f"(#{inc.id}: {_short(inc.description, lv['desc'])})")
            lines.append(f"Improvement: {fig.text()}")
        elif inc is not None and inc.metric is not None:
            gain = f", {_fmt(inc.metric - base.metric, signed=True)} from the baseline {_fmt(base.metric)}" \
                if base is not None and base is not inc else ""
            lines.append(f"Current best: {_fmt(inc.metric)} (#{inc.id}: {_short(inc.description, lv['desc'])}){gain}")
        lines += self._trend(done)
        improvements = self._improvements(done)
        if improvements:
            best = sorted(improvements, key=lambda t: -abs(t[1]))[:lv["best"]]
            lines.append(f"\nThe best changes kept (largest gains first; {len(improvements)} kept in all):")
            lines += [f"- #{e.id} {_fmt(d, signed=True)} -> {_fmt(e.metric)}  {_short(e.description, lv['desc'])}"
                      for e, d in best]
        near = self._near_misses(done)[:lv["near"]]
        if near:
            lines.append("\nNear-misses (measured, not kept; gap to the best at the time):")
            lines += [f"- #{e.id} {_fmt(e.metric)} (gap {_fmt(g)})  {_short(e.description, lv['desc'])}"
                      for e, g in near]
        lines.append(f"\nThe last {min(lv['last'], len(done))} experiments:")
        for e in done[-lv["last"]:]:
            val = _fmt(e.metric) if e.metric is not None else "-"
            why = f"  ({_short(e.reason, 80)})" if e.reason and e.status != Status.KEEP else ""
            lines.append(f"- #{e.id} {e.status:<11} {val:>10}  {_short(e.description, lv['desc'])}{why}")
        return "\n".join(lines) + "\n"

    def dont_repeat(self, limit: int, width: int, skip: int = 0) -> str:
        """Distinct descriptions tried, the most recent first, leaving out the last `skip` (listed above)."""
        seen: dict[str, Experiment] = {}
        done = self.done
        for e in reversed(done[:len(done) - skip] if skip else done):
            if e.kind != Kind.BASELINE and e.description and _norm(e.description) not in seen:
                seen[_norm(e.description)] = e
        if not seen:
            return ""
        shown = list(seen.values())[:limit]
        lines = [f"# Also tried before: do not repeat ({len(seen)} distinct besides the last {skip}; the most recent "
                 "first; an identical change is refused automatically)"]
        lines += [f"- {_short(e.description, width)} [{e.status}]" for e in shown]
        if len(seen) > limit:
            lines.append(f"- ... and {len(seen) - limit} older ones")
        return "\n".join(lines) + "\n"

    def last_crash(self) -> Optional[Experiment]:
        return next((e for e in reversed(self.done) if e.status in FAILED_RUN and e.log_tail), None)

    def _trend(self, done: list[Experiment]) -> list[str]:
        scored = [e for e in done if e.metric is not None and e.status == Status.KEEP]
        if not scored:
            return []
        points, last = [], None
        step = max(1, len(done) // 8)
        best = None
        for i, e in enumerate(done):
            if e.status == Status.KEEP and e.metric is not None:
                best = e.metric
            if best is not None and (i % step == 0 or i == len(done) - 1) and best != last:
                points.append(f"#{e.id} {_fmt(best)}")
                last = best
        since = 0
        for e in reversed(done):
            if e.status == Status.KEEP:
                break
            since += 1
        out = ["Trend of the best: " + " -> ".join(points)]
        recent = done[-20:]
        out.append(f"Keep rate of the last {len(recent)}: {sum(e.status == 'keep' for e in recent)}/{len(recent)}; "
                   f"{since} experiments since the last keep" + (" (a plateau: try something different)"
                                                                if since >= 15 else ""))
        return out

    def _improvements(self, done: list[Experiment]) -> list[tuple[Experiment, float]]:
        out, best = [], None
        for e in done:
            if e.status == Status.KEEP and e.metric is not None:
                if best is not None and e.kind != Kind.BASELINE:
                    out.append((e, e.metric - best))
                best = e.metric
        return out

    def _near_misses(self, done: list[Experiment]) -> list[tuple[Experiment, float]]:
        out, best = [], None
        for e in done:
            if e.metric is None:
                continue
            if e.status == Status.KEEP:
                best = e.metric
            elif e.status == Status.DISCARD and best is not None:
                gap = (e.metric - best) if self.lower_is_better else (best - e.metric)
                out.append((e, abs(gap)))
        return sorted(out, key=lambda t: t[1])


def change_key(patch: str) -> str:
    """A digest of what a patch changes: per file, its added and removed lines (context ignored)."""
    files: list[str] = []
    cur: list[str] = []
    for ln in patch.splitlines():
        if ln.startswith("diff --git"):
            if cur:
                files.append("\n".join(cur))
            cur = [ln.split(" b/")[-1]]
        elif ln.startswith(("+++", "---", "index ", "@@")):
            continue
        elif ln.startswith(("+", "-")) and cur:
            if ln[1:].strip():
                cur.append(ln[0] + " ".join(ln[1:].split()))
    if cur:
        files.append("\n".join(cur))
    body = "\n\n".join(sorted(f for f in files if "\n" in f))
    return hashlib.sha256(body.encode()).hexdigest() if body else ""


def _files_section(title: str, files: dict[str, str], room: Optional[int] = None) -> str:
    if not files:
        return ""
    out = [f"# {title}"]
    each = None if room is None else max(300, room // max(1, len(files)) - 40)
    for path, text in files.items():
        body = text if each is None or len(text) <= each else \
            text[:each] + f"\n... [cut: {len(text) - each} more characters, {text.count(chr(10))} lines in all]"
        out.append(f"## {path}\n```\n{body.rstrip()}\n```")
    return "\n".join(out) + "\n"


def _join(*parts: str) -> str:
    return "\n".join(p for p in parts if p)


def _cap(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n] + f"\n... [cut: {len(text) - n} more characters]"


def _cap_tail(text: str, n: int) -> str:
    return text if len(text) <= n else f"[... {len(text) - n} earlier characters not shown]\n" + text[-n:]


def _tail(text: str, lines: int) -> str:
    return "\n".join((text or "(empty log)").splitlines()[-lines:])[-6000:]


def _short(s: str, n: int) -> str:
    s = " ".join((s or "").split())
    return s if len(s) <= n else s[:n - 3] + "..."


def _fmt(x: Optional[float], signed: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.6g}" if signed else f"{x:.6g}"


def _norm(s: str) -> str:
    return " ".join(s.lower().split())


def read_files(root: Path, globs: list[str], exclude: list[str] = ()) -> dict[str, str]:
    from ..globs import matches

    out = {}
    for rel in sorted(tracked_or_present(root)):
        if matches(rel, globs) and not matches(rel, list(exclude)):
            try:
                out[rel] = (root / rel).read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue  # binary or unreadable: not shown to a text agent
    return out
