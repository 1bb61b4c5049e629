"""What a person watching `autoresearch run` sees: a live view, or plain lines.

A reporter is a callable `reporter(kind, **data)` that the loop calls with events:
`note`, `proposing`, `started`, `tick`, `rerun`, `finished`. Reporters only display;
they never change what the loop does, and a reporter failing never stops the loop.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from typing import Any, Optional

from .ledger import Experiment


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
            elif kind == "started" and data["exp"].kind == "baseline":
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

    def __init__(self, metric: str, budget_s: float, tag: str):
        from rich.console import Console
        from rich.live import Live

        self.metric, self.budget, self.tag = metric, budget_s, tag
        self.console = Console()
        self.recent: deque[Experiment] = deque(maxlen=8)
        self.current: Optional[Experiment] = None
        self.phase = "starting"
        self.elapsed = 0.0
        self.best: Optional[Experiment] = None
        self.figure: Any = None  # figures.Figure: the improvement, as every view shows it
        self.counts: dict[str, int] = {}
        self.t0 = time.monotonic()
        self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
        self.live.start()

    def __call__(self, kind: str, **data: Any) -> None:
        try:
            if kind == "note":
                self.console.print(f"[dim]autoresearch:[/] {data['message']}")
            elif kind == "proposing":
                self.phase, self.current = ("repairing a crash" if data.get("repair") else "agent is proposing"), None
            elif kind == "started":
                self.current, self.phase, self.elapsed = data["exp"], "running", 0.0
            elif kind == "tick":
                self.elapsed = data["elapsed"]
            elif kind == "rerun":
                self.phase, self.elapsed = f"confirming on seed {data['seed']}", 0.0
            elif kind == "finished":
                e = data["exp"]
                self.recent.append(e)
                self.best, self.figure = data.get("incumbent"), data.get("figure")
                self.counts[e.status] = self.counts.get(e.status, 0) + 1
                self.current, self.phase = None, "between experiments"
            self.live.update(self._render())
        except Exception:
            pass

    def _render(self):
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
        if self.current is not None:
            cur = Text(f"#{self.current.id} {self.phase}: {self.current.description[:80]}")
            bar = ProgressBar(total=max(self.budget, 1e-9), completed=min(self.elapsed, self.budget), width=40)
            now = Group(cur, bar, Text(f"{self.elapsed:.0f}s / {self.budget:g}s budget", style="dim"))
        else:
            now = Text(self.phase, style="yellow")
        table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
        for col in ("#", "status", self.metric, "description", "reason"):
            table.add_column(col)
        colors = {"keep": "green", "discard": "white", "crash": "red", "timeout": "red", "violation": "magenta"}
        for e in self.recent:
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
            self.live.update(self._render())
            self.live.stop()
        except Exception:
            pass


def make_reporter(metric: str, budget_s: float, tag: str, live: Optional[bool] = None):
    if live is None:
        live = sys.stdout.isatty()
    return LiveReporter(metric, budget_s, tag) if live else PlainReporter(metric)
