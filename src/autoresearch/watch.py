"""`autoresearch watch`: follow a running loop from another terminal, read-only, from the ledger.

What it shows: the tag, the best result, counts per status and the elapsed time; the
experiment running now, how far into its budget it is and what it does: its step, loss and
tokens/s from the last progress line of its log (progress.py), or that `metric.command` is
evaluating it or the checks are running (seen from which of its logs was written last);
whether the loop is paused (or a
pause was asked for and waits for the experiment in flight); the last experiments; the last
notes (steering edits, pauses, tracking errors, recoveries).

Modes: a rich live view (default on a terminal); `--plain`: one line per new event, for
logs and pipes; `--once`: one snapshot, then exit.

Guarantees:
- Read-only: it never writes the ledger, git or the pause flag; it opens the database per
  poll, so it never holds a lock a writer waits on for long.
- It exits when the loop's session ends (the session row is closed, or its process is gone),
  when there is no loop to follow, or on Ctrl-C (exit code 0 in every case).
Not covered: a loop on another host is seen through the ledger alone (its process cannot be
checked, so a session killed there looks alive until it is reconciled).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from . import figures
from .control import paused_since
from .errors import AutoresearchError
from .layout import Layout
from .ledger import Experiment, Ledger
from .progress import last_progress
from .states import Status

RECENT = 8
NOTES = 4


@dataclass
class Snapshot:
    tag: str
    metric: str
    lower: bool
    budget_s: float
    rows: list[Experiment]
    events: list[dict[str, Any]]
    session: Optional[dict[str, Any]]
    alive: bool
    paused_since: Optional[float]
    now: float = field(default_factory=time.time)
    activity: str = ""  # what the experiment running now does: its progress, or evaluating (see activity())
    figure: Optional[figures.Figure] = None  # the improvement figure, as every view shows it

    @property
    def running(self) -> list[Experiment]:
        return [e for e in self.rows if e.status == Status.RUNNING]

    @property
    def best(self) -> Optional[Experiment]:
        kept = [e for e in self.rows if e.status == Status.KEEP]
        return kept[-1] if kept else None

    @property
    def pause_state(self) -> str:
        """'' (not paused), 'requested' (waiting for the experiment in flight) or 'paused'."""
        if self.paused_since is None:
            return ""
        last = next((ev for ev in reversed(self.events) if ev["kind"] in ("pause", "resume")), None)
        in_effect = last is not None and last["kind"] == "pause" and (last["created_at"] or 0) >= self.paused_since - 1
        return "paused" if in_effect and self.alive else "requested"

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.rows:
            out[e.status] = out.get(e.status, 0) + 1
        return out


def snapshot(root: Path, tag: Optional[str] = None) -> Snapshot:
    path = Layout(root).ledger
    if not path.exists():
        raise AutoresearchError(f"no runs yet in {root}: start one with `autoresearch run`")
    ledger = Ledger(path)
    try:
        tags = ledger.tags()
        if tag is None:
            if not tags:
                raise AutoresearchError("the ledger has no experiments yet: start with `autoresearch run`")
            tag = tags[-1]
        sessions = ledger.sessions(tag)
        session = sessions[-1] if sessions else None
        cfg = (session or {}).get("config") or {}
        rows = ledger.experiments(tag)
        running = [e for e in rows if e.status == Status.RUNNING]
        return Snapshot(tag=tag, metric=cfg.get("metric", {}).get("name", "metric"),
                        lower=cfg.get("metric", {}).get("direction", "min") == "min",
                        budget_s=float(cfg.get("experiment", {}).get("budget_s") or 0),
                        rows=rows, events=ledger.events(tag), session=session,
                        alive=session_alive(session), paused_since=paused_since(root, tag),
                        activity=activity(Path(root), tag, running[-1].id) if running else "",
                        figure=figures.improvement(ledger, tag, figures.Spec.from_snapshot(cfg), rows))
    finally:
        ledger.close()


def activity(root: Path, tag: str, exp_id: int, now: Optional[float] = None) -> str:
    """What experiment `exp_id` is doing, from the log written last among its logs (the run's, a rerun's,
    the evaluation's `.eval.log`, the checks' `.checks*.log`): '' when nothing is known yet."""
    folder = Layout(root).logs(tag)
    try:
        logs = sorted(((p.stat().st_mtime, p) for p in folder.glob(f"{exp_id:05d}*.log")), key=lambda t: t[0])
    except OSError:
        return ""
    if not logs:
        return ""
    last = logs[-1][1]
    before = [t for t, p in logs if p != last]
    since = f" for {_ago((now or time.time()) - before[-1])}" if before else ""
    if last.name.endswith(".eval.log"):
        return f"evaluating (metric.command){since}"
    if ".checks" in last.name:
        return "running the checks (experiment.checks)"
    p = last_progress(last)
    return p.text() if p else ""


def session_alive(session: Optional[dict[str, Any]]) -> bool:
    if not session or session.get("ended_at"):
        return False
    if session.get("host") and session["host"] != socket.gethostname():
        return True  # cannot check another host's process: trust the ledger
    try:
        os.kill(int(session["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True
    return True


# -- rendering -------------------------------------------------------------------------------------
def _fmt(v: Optional[float]) -> str:
    return f"{v:.6f}" if v is not None else "-"


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def state_line(s: Snapshot) -> str:
    if s.pause_state == "paused":
        return f"paused for {_ago(s.now - s.paused_since)}: `autoresearch resume --tag {s.tag}` continues"
    if s.pause_state == "requested" and not s.alive:
        return f"paused, no loop running: the next run on {s.tag} waits for `autoresearch resume --tag {s.tag}`"
    if s.pause_state == "requested":
        return "pause requested: the loop waits once the experiment in flight is recorded"
    if s.running:
        e = s.running[-1]
        doing = f" | {s.activity}" if s.activity else ""
        return (f"running #{e.id} for {_ago(s.now - e.started_at)} (budget {s.budget_s:g}s): {e.description[:80]}"
                + doing)
    return "between experiments (the agent is proposing)" if s.alive else "not running"


def header(s: Snapshot) -> str:
    best = s.best
    start = s.session.get("started_at") if s.session else None
    counts = ", ".join(f"{k} {v}" for k, v in sorted(s.counts().items()))
    up = f", session up {_ago(s.now - start)}" if start and s.alive else ""
    fig = s.figure
    value = (f"{fig.fmt(fig.best_mean)} ({figures.runs_text(fig.best_runs)})" if fig and fig.best_mean is not None
             else _fmt(best.metric if best else None))
    return (f"autoresearch {s.tag}: best {s.metric} {value}"
            + (f" (#{best.id} {best.short})" if best else "") + f" | {len(s.rows)} experiments: {counts}{up}")


def improvement_line(s: Snapshot) -> str:
    """The improvement figure (figures.py), word for word as `status` prints it; "" before a start."""
    return f"improvement: {s.figure.text()}" if s.figure and s.figure.base_mean is not None else ""


def row_line(e: Experiment, metric: str) -> str:
    extra = f"  [{e.reason[:80]}]" if e.status != Status.RUNNING and e.reason else ""  # why, for every verdict
    return f"#{e.id:<4} {e.status:<13} {metric}={_fmt(e.metric)}  {e.description[:70]}{extra}"


def render_text(s: Snapshot) -> str:
    """The snapshot as plain text (what `watch --once --plain` prints)."""
    lines = [header(s)] + [x for x in (improvement_line(s),) if x] + [state_line(s), ""]
    lines += [row_line(e, s.metric) for e in s.rows[-RECENT:]]
    notes = s.events[-NOTES:]
    if notes:
        lines += ["", "notes:"] + [f"  {ev['kind']}: {ev['message']}" for ev in notes]
    return "\n".join(lines)


def render_rich(s: Snapshot):
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    colours = {Status.KEEP: "green", Status.DISCARD: "white", Status.CRASH: "red", Status.TIMEOUT: "red",
               Status.VIOLATION: "magenta", Status.RUNNING: "cyan", Status.INTERRUPTED: "dim"}
    parts: list[Any] = [Text(header(s), style="bold"), Text(improvement_line(s), style="green"),
                        Text(state_line(s), style="yellow" if s.pause_state else "")]
    if s.running and not s.pause_state and s.budget_s:
        e = s.running[-1]
        elapsed = s.now - e.started_at
        parts += [ProgressBar(total=s.budget_s, completed=min(elapsed, s.budget_s), width=40),
                  Text(f"{elapsed:.0f}s / {s.budget_s:g}s budget", style="dim")]
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("#", "status", s.metric, "description"):
        table.add_column(col)
    for e in s.rows[-RECENT:]:
        table.add_row(str(e.id), Text(e.status, style=colours.get(e.status, "yellow")), _fmt(e.metric),
                      e.description[:70])
    parts.append(table)
    for ev in s.events[-NOTES:]:
        parts.append(Text(f"{ev['kind']}: {ev['message'][:150]}", style="dim"))
    return Group(*parts)


# -- following ------------------------------------------------------------------------------------
def watch(root: Path, tag: Optional[str] = None, *, plain: Optional[bool] = None, once: bool = False,
          interval: float = 1.0, stream=None) -> int:
    stream = stream or sys.stdout
    plain = (not stream.isatty()) if plain is None else plain
    s = snapshot(root, tag)
    if once or not s.alive:
        if plain:
            print(render_text(s), file=stream, flush=True)
        else:
            from rich.console import Console

            Console(file=stream).print(render_rich(s))
        if not once:
            print(f"autoresearch: no loop is running on tag {s.tag}", file=stream, flush=True)
        return 0
    try:
        return _follow_plain(root, s, interval, stream) if plain else _follow_live(root, s, interval, stream)
    except KeyboardInterrupt:
        return 0


def _follow_plain(root: Path, s: Snapshot, interval: float, stream) -> int:
    print(header(s), file=stream, flush=True)
    printed = {e.id for e in s.rows if e.status != Status.RUNNING}
    started = {e.id for e in s.rows}
    seen_events = {ev["id"] for ev in s.events}
    state = ""
    while True:
        for e in s.rows:
            if e.status == Status.RUNNING and e.id not in started:
                print(f"#{e.id:<4} running       {e.description[:70]}", file=stream, flush=True)
            started.add(e.id)
            if e.status != Status.RUNNING and e.id not in printed:
                print(row_line(e, s.metric), file=stream, flush=True)
                printed.add(e.id)
        for ev in s.events:
            if ev["id"] not in seen_events:
                seen_events.add(ev["id"])
                print(f"note {ev['kind']}: {ev['message']}", file=stream, flush=True)
        if s.pause_state != state:
            state = s.pause_state
            print(state_line(s) if state else "resumed", file=stream, flush=True)
        if not s.alive:
            print(f"autoresearch: the session on {s.tag} ended; {header(s)}", file=stream, flush=True)
            return 0
        time.sleep(interval)
        s = snapshot(root, s.tag)


def _follow_live(root: Path, s: Snapshot, interval: float, stream) -> int:
    from rich.console import Console
    from rich.live import Live

    with Live(render_rich(s), console=Console(file=stream), refresh_per_second=4) as live:
        while s.alive:
            time.sleep(interval)
            s = snapshot(root, s.tag)
            live.update(render_rich(s))
    print(f"autoresearch: the session on {s.tag} ended", file=stream, flush=True)
    return 0
