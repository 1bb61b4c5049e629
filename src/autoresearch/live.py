"""What a person watching `autoresearch run` sees: a live view, or plain lines.

A reporter is a callable `reporter(kind, **data)` that the loop calls with events:
`note`, `proposing`, `started`, `tick` (elapsed, log), `evaluating` (the run is over and
`metric.command` evaluates it), `rerun`, `checks` (attempt: the guard command starts),
`finished`. Reporters only display; they never
change what the loop does, and a reporter failing never stops the loop.

While a run trains, the live view shows its step, loss and tokens/s from the last progress
line of its log (`step N | loss X | Y tok/s`, see progress.py), read at most every
`PROGRESS_EVERY_S`; while the evaluation runs it says `evaluating` and for how long.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from typing import Any, Optional

from .ledger import Experiment
from .progress import Progress, last_progress
from .states import Kind, Status

PROGRESS_EVERY_S = 0.5


def _fmt(v: Optional[float]) -> str:
    return f"{v:.6f}" if v is not None else "-"


def best_value(inc: Optional[Experiment], figure: Any = None) -> Optional[float]:
    """The best's value: the improvement figure's (figures.py: the mean of all its runs, as `status`
    shows it) when the loop passed one, else the incumbent's recorded mean."""
    if figure is not None and figure.best_mean is not None:
        return figure.best_mean
    if inc is None:
        return None
    mean = (inc.evidence or {}).get("mean")
    return mean if isinstance(mean, (int, float)) else inc.metric


class PlainReporter:
    """One line per finished experiment; for logs, pipes and CI."""

    def __init__(self, metric: str, stream=None):
        self.metric = metric
        self.stream = stream or sys.stdout

    def __call__(self, kind: str, **data: Any) -> None:
        try:
            if kind == "note":
                print(f"autoresearch: {data['message']}", file=self.stream, flush=True)
            elif kind == "started" and data["exp"].kind == Kind.BASELINE:
                print("autoresearch: measuring the baseline", file=self.stream, flush=True)
            elif kind == "finished":
                e: Experiment = data["exp"]
                inc: Optional[Experiment] = data.get("incumbent")
                fig = data.get("figure")
                known = fig is not None and fig.best_mean is not None  # then one format: the figure's
                best = fig.fmt(fig.best_mean) if known else _fmt(best_value(inc))
                value = fig.fmt(e.metric) if known else _fmt(e.metric)
                print(f"#{e.id:<4} {e.status:<12} {self.metric}={value}  best={best}"
                      f"  {e.description[:70]}" + (f"  [{e.reason[:80]}]" if e.reason else ""),
                      file=self.stream, flush=True)
        except Exception:  # display must never break the loop
            pass


class LiveReporter:
    """A rich live view: the experiment running, its budget, the best so far, the last results."""

    def __init__(self, metric: str, budget_s: float, tag: str, console: Any = None):
        from rich.console import Console
        from rich.live import Live

        self.metric, self.budget, self.tag = metric, budget_s, tag
        self.console = console or Console()
        self.recent: deque[Experiment] = deque(maxlen=8)
        self.current: Optional[Experiment] = None
        self.phase = "starting"
        self.elapsed = 0.0
        self.best: Optional[Experiment] = None
        self.figure: Any = None  # figures.Figure: the improvement, as every view shows it
        self.counts: dict[str, int] = {}
        self.t0 = time.monotonic()
        self.progress: Optional[Progress] = None
        self.progress_read = 0.0
        self.evaluating_since: Optional[float] = None
        self.last_frame: Any = ""
        # get_renderable: each refresh renders anew, so the clocks move while nothing reports (an evaluation)
        self.live = Live(get_renderable=self._render, console=self.console, refresh_per_second=4, transient=False)
        self.live.start()

    def __call__(self, kind: str, **data: Any) -> None:
        try:
            if kind == "note":
                self.console.print(f"[dim]autoresearch:[/] {data['message']}")
            elif kind == "proposing":
                self.phase, self.current = ("repairing a crash" if data.get("repair") else "agent is proposing"), None
            elif kind == "started":
                self.current, self.phase, self.elapsed = data["exp"], "running", 0.0
                self.progress, self.evaluating_since = None, None
            elif kind == "tick":
                self.elapsed = data["elapsed"]
                now = time.monotonic()
                if data.get("log") and now - self.progress_read >= PROGRESS_EVERY_S:
                    self.progress_read = now
                    self.progress = last_progress(data["log"]) or self.progress
            elif kind == "evaluating":
                self.evaluating_since = time.monotonic()
                self.progress = last_progress(data.get("log")) or self.progress  # the run's final line
            elif kind == "rerun":
                self.phase, self.elapsed = f"confirming on seed {data['seed']}", 0.0
                self.progress, self.evaluating_since = None, None
            elif kind == "checks":
                retry = f" (retry {data['attempt']}: the last run failed)" if data.get("attempt") else ""
                self.phase, self.evaluating_since = f"running the checks (experiment.checks){retry}", None
            elif kind == "finished":
                e = data["exp"]
                self.recent.append(e)
                self.best, self.figure = data.get("incumbent"), data.get("figure")
                self.counts[e.status] = self.counts.get(e.status, 0) + 1
                self.current, self.phase = None, "between experiments"
                self.progress, self.evaluating_since = None, None
            self.live.refresh()
        except Exception:
            pass

    def _render(self):
        """The view now; called by rich's refresh thread too, so a race with an event never breaks it."""
        try:
            self.last_frame = self.frame()
        except Exception:  # the loop's thread changed something mid-render: show the previous frame
            pass
        return self.last_frame

    def frame(self):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        mins = (time.monotonic() - self.t0) / 60
        head = Text.assemble(
            ("autoresearch ", "bold"), (f"{self.tag}  ", "cyan"),
            (f"best {self.metric} {self._best()}  ", "green"),
            ("  ".join(f"{k} {v}" for k, v in sorted(self.counts.items())) + f"   {mins:.1f} min", "dim"),
        )
        if self.current is not None and self.evaluating_since is not None:
            waited = time.monotonic() - self.evaluating_since
            now = Group(Text(f"#{self.current.id} evaluating: {self.current.description[:80]}"),
                        Text(f"the run is over ({self.elapsed:.0f}s); metric.command has been evaluating it "
                             f"for {waited:.0f}s", style="yellow"),
                        Text(self.progress.text() if self.progress else "", style="dim"))
        elif self.current is not None and self.phase.startswith("running the checks"):
            now = Text(f"#{self.current.id} {self.phase}: {self.current.description[:80]}", style="yellow")
        elif self.current is not None:
            cur = Text(f"#{self.current.id} {self.phase}: {self.current.description[:80]}")
            bar = ProgressBar(total=max(self.budget, 1e-9), completed=min(self.elapsed, self.budget), width=40)
            clock = f"{self.elapsed:.0f}s / {self.budget:g}s budget"
            now = Group(cur, bar, Text(f"{clock}   {self.progress.text()}" if self.progress else clock, style="dim"))
        else:
            now = Text(self.phase, style="yellow")
        table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
        for col in ("#", "status", self.metric, "description", "reason"):
            table.add_column(col)
        colors = {Status.KEEP: "green", Status.DISCARD: "white", Status.CRASH: "red", Status.TIMEOUT: "red",
                  Status.VIOLATION: "magenta"}
        for e in list(self.recent):
            value = self.figure.fmt(e.metric) if self.figure is not None else _fmt(e.metric)
            table.add_row(str(e.id), Text(e.status, style=colors.get(e.status, "yellow")), value,
                          e.description[:60], Text((e.reason or "")[:70], style="dim"))
        improvement = Text(f"improvement: {self.figure.text()}" if self.figure is not None
                           and self.figure.base_mean is not None else "", style="green")
        return Group(head, improvement, now, table)

    def _best(self) -> str:
        fig = self.figure
        if fig is not None and fig.best_mean is not None:
            return f"{fig.fmt(fig.best_mean)} ({fig.best_runs} run{'s' if fig.best_runs != 1 else ''})"
        return _fmt(best_value(self.best))

    def close(self) -> None:
        try:
            self.live.refresh()
            self.live.stop()
        except Exception:
            pass


def make_reporter(metric: str, budget_s: float, tag: str, live: Optional[bool] = None):
    if live is None:
        live = sys.stdout.isatty()
    return LiveReporter(metric, budget_s, tag) if live else PlainReporter(metric)
