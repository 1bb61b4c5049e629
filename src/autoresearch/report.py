"""Reading the results: the summary figures, progress.png and the Markdown report.

Owns three views of a tag's ledger rows (in id order, as `Ledger.experiments(tag)` gives):
- `summary()`: the numbers `status`, the chart and the report all share; the improvement
  figure itself is figures.py's (one definition for every view).
- `progress_png()`: the original autoresearch's chart. x is the experiment's ledger id (the
  number `results`, `diff N`, `watch` and report.md use), y the metric; every discarded
  experiment a grey dot, kept ones green and labelled, the running best a step line, the
  baseline a dashed line. Experiments that were not judged on their number (a crash, a
  timeout, a violation, checks that failed, an interruption) sit apart, one lane per
  status under the plot, even when they printed a number: a fast result that failed the
  tests is a "checks failed", not an outlier.
- `report_md()`: a summary (the improvement figure, the noise, the times), the kept changes
  with their deltas and evidence, every experiment with the reason for its verdict, the failures.

Guarantees:
- Pure views: nothing is read from or written to the ledger; rerunning on the same rows
  gives the same file, so a lost or hand-edited report loses nothing.
- Any rows render: none, one, only failures, metrics that are None or not finite. A
  `running` row is counted but never plotted or judged.
- Files are written under a temporary name and renamed: a reader never sees half a file.
- matplotlib is imported inside `progress_png()` only and drawn on a bare Agg figure (no
  pyplot, no global state), so importing this module is cheap and it is thread-safe.

Definitions:
- baseline: the first `baseline`-kind row with a metric, else the first kept row with one.
- best: the incumbent, i.e. the most recent `keep` row (what the branch tip is). A lucky
  discarded run is never "best", and neither is a kept run later superseded.
- improvement: baseline → best, positive when better in the metric's direction;
  improvement_pct is relative to |baseline|.
- keep_rate: kept non-baseline rows / non-baseline rows that reached a verdict (every
  terminal status but `interrupted`, which was never judged). None when there are none.
- unverified: rows made while a protection was off (the row's `unverified` says which);
  `unverified_note()` is the sentence every view prints about them.

Y-limits: the window is set by the kept values and the baseline, widened to show nearby
discards; a wild discarded value outside it is drawn as a triangle on the edge ("discarded,
off scale"), so it cannot squash the plot and is not silently dropped.
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path
from typing import Any, Optional, Sequence

from . import figures
from .ledger import Experiment
from .states import Kind, Status

_STATUS_ORDER = (Status.KEEP, Status.DISCARD, Status.CRASH, Status.TIMEOUT, Status.VIOLATION, Status.CHECKS_FAILED,
                 Status.INTERRUPTED, Status.RUNNING)
_FAILURES = (Status.CRASH, Status.TIMEOUT, Status.VIOLATION, Status.CHECKS_FAILED, Status.INTERRUPTED)
_NO_METRIC_STYLE = {  # status: (marker, colour) in the lanes under the chart
    Status.CRASH: ("x", "#e74c3c"),
    Status.TIMEOUT: ("x", "#e67e22"),
    Status.VIOLATION: ("X", "#8e44ad"),
    Status.CHECKS_FAILED: ("x", "#b7950b"),
    Status.INTERRUPTED: ("x", "#95a5a6"),
}
_MAX_LABELS = 40  # beyond this, label only the kept changes that moved the metric most
_LABEL_CHARS = 45


# -- the figures ------------------------------------------------------------------------
def summary(rows: Sequence[Experiment], lower_is_better: bool = True,
            figure: Optional[figures.Figure] = None) -> dict[str, Any]:
    """The figures every view shares (see the module docstring for the definitions).

    baseline_metric, best_metric and improvement are `figure`'s (figures.py, from the ledger's
    runs); without one they are the same definition on the rows alone (each row's metric once).
    """
    rows = list(rows)
    fig = figure or figures.from_runs(rows, {}, None, 0, figures.Spec(lower=lower_is_better))
    counts: dict[str, int] = {}
    for e in rows:
        counts[e.status] = counts.get(e.status, 0) + 1
    counts = dict(sorted(counts.items(), key=lambda kv: _status_rank(kv[0])))

    kept = [e for e in rows if e.status == Status.KEEP]
    best = kept[-1] if kept else None
    judged = [e for e in rows if e.kind != Kind.BASELINE and e.status not in (Status.RUNNING, Status.INTERRUPTED)]
    kept_candidates = sum(1 for e in judged if e.status == Status.KEEP)

    base_metric, best_metric, improvement = fig.base_mean, fig.best_mean, fig.improvement
    pct = improvement / abs(base_metric) * 100 if improvement is not None and base_metric else None

    return {
        "n": len(rows),
        "counts": counts,
        "kept": kept_candidates,
        "judged": len(judged),
        "keep_rate": kept_candidates / len(judged) if judged else None,
        "baseline_metric": base_metric,
        "best_metric": best_metric,
        "best_commit": best.commit if best else None,
        "best_id": best.id if best else None,
        "improvement": improvement,
        "improvement_pct": pct,
        "wall_s_total": sum(e.wall_s for e in rows if e.wall_s is not None and math.isfinite(e.wall_s)),
        "elapsed_s": _elapsed(rows),
        "cost_usd_total": sum(e.cost_usd or 0.0 for e in rows),
        "tokens_in_total": sum(e.tokens_in or 0 for e in rows),
        "tokens_out_total": sum(e.tokens_out or 0 for e in rows),
        "unverified": sum(1 for e in rows if e.unverified),
        "unverified_kept": sum(1 for e in rows if e.unverified and e.status == Status.KEEP and e.kind != Kind.BASELINE),
        "unverified_reasons": sorted({e.unverified for e in rows if e.unverified}),
    }


def unverified_note(s: dict[str, Any]) -> str:
    """One plain sentence on the rows made while a protection was off (from summary()); "" when none."""
    if not s["unverified"]:
        return ""
    kept = f"; {s['unverified_kept']} of {s['kept']} kept changes among them" if s["kept"] else ""
    return (f"UNVERIFIED: {s['unverified']} of {s['n']} experiments were measured without the sandbox{kept} "
            f"({'; '.join(s['unverified_reasons'])}): a run could have tampered with its result")


# -- progress.png -------------------------------------------------------------------------
def progress_png(rows: Sequence[Experiment], path: str | os.PathLike, metric_name: str,
                 lower_is_better: bool, title: str = "") -> Path:
    """Draw the progress chart to `path` (PNG) and return it."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    from matplotlib.transforms import blended_transform_factory

    rows = list(rows)
    path = Path(path)
    s = summary(rows, lower_is_better)
    done, scored, unscored = chart_groups(rows)
    lanes = sorted({e.status for _, e in unscored}, key=_status_rank)

    strip_h = 0.32 * len(lanes) + 0.3 if lanes else 0.0
    fig = Figure(figsize=(16, 8 + strip_h), facecolor="white")
    if lanes:
        grid = fig.add_gridspec(2, 1, height_ratios=[8, strip_h], hspace=0.03)
        ax = fig.add_subplot(grid[0])
        strip = fig.add_subplot(grid[1], sharex=ax)
    else:
        ax, strip = fig.add_subplot(), None

    heading = title or "Autoresearch progress"
    ax.set_title(f"{heading}: {_plural(len(done), 'experiment')}, {_plural(s['kept'], 'kept improvement')}",
                 fontsize=14)
    ax.set_ylabel(f"{metric_name} ({'lower' if lower_is_better else 'higher'} is better)", fontsize=12)
    ax.grid(True, alpha=0.2)
    xs_all = [_x(e, i) for i, e in enumerate(rows)] or [0]
    first_x, last_x = min(xs_all), max(xs_all)
    pad = max(0.6, 0.015 * (last_x - first_x + 1))
    ax.set_xlim(first_x - pad, last_x + pad)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))

    if scored:
        kept = [(x, e, m) for x, e, m in scored if e.status == Status.KEEP]
        anchor = [m for _, _, m in kept] + ([s["baseline_metric"]] if s["baseline_metric"] is not None else [])
        lo, hi = _y_window([m for _, _, m in scored], anchor, lower_is_better)
        scale = max(abs(lo), abs(hi))  # number format from what is shown, not from an outlier
        inside = [(x, e, m) for x, e, m in scored if lo <= m <= hi]
        discards = [(x, m) for x, e, m in inside if e.status == Status.DISCARD]
        if discards:
            ax.scatter(*zip(*discards), c="#b4b4b4", s=16, alpha=0.7, zorder=2, label="discarded")
        if s["baseline_metric"] is not None:
            ax.axhline(s["baseline_metric"], color="#7f8c8d", ls="--", lw=1, alpha=0.6, zorder=1,
                       label=f"baseline ({_fmt(s['baseline_metric'], scale)})")
        if kept:
            best_so_far = _running_best([m for _, _, m in kept], lower_is_better)
            xs = [x for x, _, _ in kept] + [last_x]
            ax.step(xs, best_so_far + best_so_far[-1:], where="post", color="#27ae60", lw=2, alpha=0.75,
                    zorder=3, label=f"running best ({_fmt(best_so_far[-1], scale)})")
            ax.scatter([x for x, _, _ in kept], [m for _, _, m in kept], c="#2ecc71", s=60, zorder=4,
                       edgecolors="black", linewidths=0.6, label="kept")
            _label_kept(ax, kept, lower_is_better)
        edge = blended_transform_factory(ax.transData, ax.transAxes)  # x in data, y on the axes' edge
        above = [x for x, _, m in scored if m > hi]
        below = [x for x, _, m in scored if m < lo]
        label = f"discarded, off scale ({len(above) + len(below)})"
        for xs_off, y, marker in ((above, 0.985, "^"), (below, 0.015, "v")):
            if xs_off:
                ax.scatter(xs_off, [y] * len(xs_off), marker=marker, c="#a0a0a0", s=30, transform=edge,
                           clip_on=False, zorder=2, label=label)
                label = None
        margin = (hi - lo) * 0.08
        ax.set_ylim(lo - margin, hi + margin)
        ax.legend(loc="upper right" if lower_is_better else "lower right", fontsize=9, framealpha=0.9)
    else:
        ax.set_yticks([])
        message = "no experiments yet" if not done else "no experiment has produced a metric yet"
        ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", fontsize=14, color="#7f8c8d")

    xlabel_ax = ax
    if strip is not None:
        for lane, status in enumerate(lanes):
            xs = [x for x, e in unscored if e.status == status]
            marker, colour = _NO_METRIC_STYLE.get(status, ("x", "#7f8c8d"))
            if status == Status.DISCARD:  # discarded without a number (e.g. the agent changed nothing)
                marker, colour = "o", "#b4b4b4"
            strip.scatter(xs, [lane] * len(xs), marker=marker, c=colour, s=36, linewidths=1.6)
        strip.set_yticks(range(len(lanes)))
        strip.set_yticklabels([f"{st.replace('_', ' ')} ({sum(e.status == st for _, e in unscored)})"
                               for st in lanes], fontsize=9)
        strip.set_ylim(len(lanes) - 0.4, -0.6)
        strip.grid(True, axis="x", alpha=0.2)
        ax.tick_params(labelbottom=False)
        xlabel_ax = strip
    xlabel_ax.set_xlabel("Experiment # (the ledger id: `autoresearch diff N`)", fontsize=12)

    _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight", pad_inches=0.25))
    return path


def chart_groups(rows: Sequence[Experiment]) -> tuple[list, list, list]:
    """(done, scored, lanes) of the chart: done [(x, row)] every finished row; scored [(x, row, metric)]
    the points on the scale; lanes [(x, row)] the rest, drawn in one lane per status under the plot.

    x is the ledger id: the number `results`, `diff N`, report.md and `watch` use. Only judged
    results (keep, discard) with a metric are points; a run that failed (a crash, a violation,
    checks that failed) sits in its status's lane whatever number it printed, so a fast result
    that failed the tests reads "checks failed", not "off scale".
    """
    done = [(_x(e, i), e) for i, e in enumerate(rows) if e.status != Status.RUNNING]
    judged = [(x, e) for x, e in done if _metric(e) is not None and e.status in (Status.KEEP, Status.DISCARD)]
    ids = {id(e) for _, e in judged}
    return done, [(x, e, _metric(e)) for x, e in judged], [(x, e) for x, e in done if id(e) not in ids]


def _label_kept(ax: Any, kept: list, lower_is_better: bool) -> None:
    """Label kept points with their description, mirrored so labels point into the worse side."""
    chosen = kept
    if len(kept) > _MAX_LABELS:
        moved = [(abs(m - prev), x) for (x, _, m), (_, _, prev) in zip(kept[1:], kept[:-1])]
        keep_x = {kept[0][0]} | {x for _, x in sorted(moved, reverse=True)[: _MAX_LABELS - 1]}
        chosen = [k for k in kept if k[0] in keep_x]
    up = lower_is_better  # worse values are above when lower is better
    for x, e, m in chosen:
        text = f"#{e.id} " + (" ".join((e.description or "").split()) or e.short or "")
        if len(text) > _LABEL_CHARS:
            text = text[: _LABEL_CHARS - 3] + "..."
        ax.annotate(text, (x, m), textcoords="offset points", xytext=(6, 6 if up else -6), fontsize=8,
                    color="#1a7a3a", alpha=0.9, rotation=30 if up else -30, ha="left",
                    va="bottom" if up else "top", rotation_mode="anchor", zorder=5)


def _y_window(values: list[float], anchor: list[float], lower_is_better: bool) -> tuple[float, float]:
    """The y range to show: the anchor values (kept + baseline) widened to nearby points."""
    core = anchor or values
    lo, hi = min(core), max(core)
    span = hi - lo
    if span == 0:  # one kept value: scale by the others' median distance, capped so outliers can't set it
        spread = sorted(d for v in values if (d := abs(v - lo)) > 0)
        span = spread[len(spread) // 2] if spread else abs(lo) * 0.01 or 1.0
        span = min(span, abs(lo) * 0.1) or span
    worse, better = 1.0 * span, 0.5 * span
    lo_cap, hi_cap = (lo - better, hi + worse) if lower_is_better else (lo - worse, hi + better)
    shown = [v for v in values if lo_cap <= v <= hi_cap] + core
    lo, hi = min(shown), max(shown)
    if hi == lo:
        hi, lo = hi + span / 2, lo - span / 2
    return lo, hi


def _running_best(values: list[float], lower_is_better: bool) -> list[float]:
    out: list[float] = []
    for v in values:
        out.append(v if not out else (min(out[-1], v) if lower_is_better else max(out[-1], v)))
    return out


# -- report.md ------------------------------------------------------------------------------
def report_md(rows: Sequence[Experiment], path: str | os.PathLike, metric_name: str,
              lower_is_better: bool, tag: str = "", figure: Optional[figures.Figure] = None,
              noise: Optional[figures.Noise] = None) -> Path:
    """Write the Markdown report to `path` and return it; links progress.png if it is beside it.

    `figure` and `noise` come from figures.py (the ledger's runs, or `confirm`'s); without them
    the rows alone give the figure (each row's metric once, no interval).
    """
    rows = list(rows)
    path = Path(path)
    figure = figure or figures.from_runs(rows, {}, None, 0, figures.Spec(metric_name, lower_is_better))
    s = summary(rows, lower_is_better, figure)
    anchor = [m for e in rows if (m := _metric(e)) is not None and (e.status == Status.KEEP or e.kind == Kind.BASELINE)]
    scale = max(map(abs, anchor or [m for e in rows if (m := _metric(e)) is not None] or [1.0]))
    # One number format per report: the figure's (to a tenth of the measured noise), else by magnitude.
    f = figure.fmt if figure.fmt.decimals is not None else (lambda v: _fmt(v, scale))  # noqa: E731
    direction = "lower" if lower_is_better else "higher"

    out = [f"# Autoresearch report{': ' + tag if tag else ''}", ""]
    if (path.parent / "progress.png").exists():
        out += ["![progress](progress.png)", ""]
    out += ["## Summary", "", "| | |", "|---|---|", f"| Experiments | {s['n']} |"]
    if s["counts"]:
        out.append("| By status | " + " · ".join(f"{k} {v}" for k, v in s["counts"].items()) + " |")
    if s["keep_rate"] is not None:
        out.append(f"| Keep rate | {s['kept']} / {s['judged']} ({s['keep_rate'] * 100:.1f}%) |")
    g = figure.fmt
    if figure.base_mean is not None:
        out.append(f"| Baseline {metric_name} | {g(figure.base_mean)} ({figures.runs_text(figure.base_runs)}, "
                   f"#{figure.base_id}) |")
    if figure.best_mean is not None:
        out.append(f"| Best {metric_name} | {g(figure.best_mean)} ({figures.runs_text(figure.best_runs)}, "
                   f"`{(s['best_commit'] or '-')[:7]}`, #{s['best_id']}) |")
    if figure.base_mean is not None:
        out.append(f"| Improvement | {_cell(figure.text())} ({direction} is better) |")
    if noise is not None:
        out.append(f"| Noise | {_cell(noise.text(g).removeprefix('noise: '))} |")
    if s["unverified"]:
        out.append(f"| **Unverified** | {_cell(unverified_note(s))} |")
    out.append(f"| Elapsed | {figures.duration(s['elapsed_s'])} (first start to last end) |")
    out.append(f"| Run time | {figures.duration(s['wall_s_total'])} (the experiments' own runs; agent, "
               "re-runs and checks not included) |")
    if s["cost_usd_total"] or s["tokens_in_total"] or s["tokens_out_total"]:
        out.append(f"| Agent cost | ${s['cost_usd_total']:.2f} ({s['tokens_in_total']:,} tokens in, "
                   f"{s['tokens_out_total']:,} out) |")
    out.append("")

    out += _kept_table(rows, metric_name, f)
    out += _all_table(rows, metric_name, f)
    out += _failure_list(rows)
    _atomic_write(path, lambda tmp: Path(tmp).write_text("\n".join(out).rstrip() + "\n", encoding="utf-8"))
    return path


def _kept_table(rows: list[Experiment], metric_name: str, f: Any) -> list[str]:
    base = _baseline(rows)
    table = [e for e in rows if e.status == Status.KEEP or e is base]
    if not table:
        return ["## Kept changes", "", "None yet.", ""]
    base_metric = _metric(base) if base else None
    out = ["## Kept changes", "",
           f"| # | commit | {metric_name} | Δ previous | Δ baseline | evidence | description |",
           "|---:|---|---:|---:|---:|---|---|"]
    prev: Optional[float] = None
    for e in table:
        m = _metric(e)
        d_prev = _signed(m - prev, f) if m is not None and prev is not None else "—"
        if m is not None and base_metric is not None and e is not base:
            pct = f" ({(m - base_metric) / abs(base_metric) * 100:+.2f}%)" if base_metric else ""
            d_base = _signed(m - base_metric, f) + pct
        else:
            d_base = "—"
        desc = _cell(e.description)
        if e is base and "baseline" not in desc.lower():
            desc += " *(baseline)*"
        if e.unverified:
            desc += " **(unverified)**"
        out.append(f"| {e.id} | `{e.short or '-'}` | {f(m) if m is not None else '—'} | {d_prev} | "
                   f"{d_base} | {_cell(figures.evidence_text(e.evidence, f, limit=120))} | {desc} |")
        prev = m if m is not None else prev
    return out + [""]


def _all_table(rows: list[Experiment], metric_name: str, f: Any) -> list[str]:
    """Every experiment with the reason for its verdict: why a result below the best was discarded."""
    done = [e for e in rows if e.status != Status.RUNNING]
    if not done:
        return []
    out = ["## All experiments", "", f"| # | commit | status | {metric_name} | reason | description |",
           "|---:|---|---|---:|---|---|"]
    for e in done:
        m = _metric(e)
        out.append(f"| {e.id} | `{e.short or '-'}` | {e.status} | {f(m) if m is not None else '—'} | "
                   f"{_cell(_first_line(e.reason))} | {_cell(e.description)} |")
    return out + [""]


def _failure_list(rows: list[Experiment], limit: int = 10) -> list[str]:
    failed = [e for e in rows if e.status in _FAILURES]
    if not failed:
        return []
    out = ["## Failures", ""]
    for status in _FAILURES:
        group = [e for e in failed if e.status == status]
        if not group:
            continue
        out.append(f"- **{status}** ({len(group)})")
        for e in group[:limit]:
            why = _first_line(e.reason) or _last_line(e.log_tail)
            out.append(f"  - #{e.id} `{e.short or '-'}` {_cell(e.description)}" + (f" — {_cell(why)}" if why else ""))
        if len(group) > limit:
            out.append(f"  - … and {len(group) - limit} more")
    return out + [""]


# -- helpers ----------------------------------------------------------------------------------
def _elapsed(rows: list[Experiment]) -> float:
    """Seconds from the first experiment's start to the last one's end (the session's wall clock)."""
    starts = [e.started_at for e in rows if e.started_at]
    ends = [e.ended_at or e.started_at for e in rows if e.started_at]
    return max(ends) - min(starts) if starts else 0.0


def _x(e: Experiment, position: int) -> int:
    """Where an experiment sits on the chart: its ledger id (its position for rows not yet stored)."""
    return e.id if e.id is not None else position


def _metric(e: Experiment) -> Optional[float]:
    m = e.metric
    return float(m) if m is not None and math.isfinite(m) else None


def _baseline(rows: list[Experiment]) -> Optional[Experiment]:
    for e in rows:
        if e.kind == Kind.BASELINE and _metric(e) is not None:
            return e
    for e in rows:
        if e.status == Status.KEEP and _metric(e) is not None:
            return e
    return None


def _status_rank(status: str) -> tuple[int, str]:
    return (_STATUS_ORDER.index(status) if status in _STATUS_ORDER else len(_STATUS_ORDER), status)


def _fmt(v: float, scale: float) -> str:
    """Metric format fixed by the data's magnitude: 0.997900, 123.456, 1100.0."""
    scale = abs(scale)
    return f"{v:.6f}" if scale < 10 else f"{v:.3f}" if scale < 1000 else f"{v:.1f}"


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _signed(v: float, f: Any) -> str:
    text = f(v)
    return text if text.startswith("-") else "+" + text


def _cell(text: str) -> str:
    """Text made safe for one Markdown table cell or list line."""
    return " ".join((text or "").split()).replace("|", "\\|")


def _first_line(text: str) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= 120 else line[:117] + "..."


def _last_line(text: str) -> str:
    lines = [ln for ln in (text or "").splitlines() if ln.strip()]
    return _first_line(lines[-1]) if lines else ""


def _atomic_write(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
