"""Reading the results: the summary figures, progress.png and the Markdown report.

Owns three views of a tag's ledger rows (in id order, as `Ledger.experiments(tag)` gives):
- `summary()`: the numbers `status`, the chart and the report all share, defined once here.
- `progress_png()`: the original autoresearch's chart. x is the experiment's position in
  the rows, y the metric; every measured experiment a grey dot (discarded ones faint),
  kept ones green and labelled, the running best a step line, the baseline a dashed
  line. Experiments without a metric sit apart, one lane per status under the plot.
- `report_md()`: a summary, the kept changes with their deltas and evidence, the failures.

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
discards; a wild value outside it is drawn as a triangle on the edge, so it cannot squash
the plot and is not silently dropped.
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path
from typing import Any, Optional, Sequence

from .ledger import Experiment

_STATUS_ORDER = ("keep", "discard", "crash", "timeout", "violation", "checks_failed", "interrupted", "running")
_FAILURES = ("crash", "timeout", "violation", "checks_failed", "interrupted")
_NO_METRIC_STYLE = {  # status: (marker, colour) in the lanes under the chart
    "crash": ("x", "#e74c3c"),
    "timeout": ("x", "#e67e22"),
    "violation": ("X", "#8e44ad"),
    "checks_failed": ("x", "#b7950b"),
    "interrupted": ("x", "#95a5a6"),
}
_MAX_LABELS = 40  # beyond this, label only the kept changes that moved the metric most
_LABEL_CHARS = 45


# -- the figures ------------------------------------------------------------------------
def summary(rows: Sequence[Experiment], lower_is_better: bool = True) -> dict[str, Any]:
    """The figures every view shares (see the module docstring for the definitions)."""
    rows = list(rows)
    counts: dict[str, int] = {}
    for e in rows:
        counts[e.status] = counts.get(e.status, 0) + 1
    counts = dict(sorted(counts.items(), key=lambda kv: _status_rank(kv[0])))

    base = _baseline(rows)
    kept = [e for e in rows if e.status == "keep"]
    best = kept[-1] if kept else None
    judged = [e for e in rows if e.kind != "baseline" and e.status not in ("running", "interrupted")]
    kept_candidates = sum(1 for e in judged if e.status == "keep")

    base_metric = _metric(base) if base else None
    best_metric = _metric(best) if best else None
    improvement = pct = None
    if base_metric is not None and best_metric is not None:
        improvement = base_metric - best_metric if lower_is_better else best_metric - base_metric
        pct = improvement / abs(base_metric) * 100 if base_metric != 0 else None

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
        "cost_usd_total": sum(e.cost_usd or 0.0 for e in rows),
        "tokens_in_total": sum(e.tokens_in or 0 for e in rows),
        "tokens_out_total": sum(e.tokens_out or 0 for e in rows),
        "unverified": sum(1 for e in rows if e.unverified),
        "unverified_kept": sum(1 for e in rows if e.unverified and e.status == "keep" and e.kind != "baseline"),
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
    done = [(x, e) for x, e in enumerate(rows) if e.status != "running"]
    scored = [(x, e, _metric(e)) for x, e in done if _metric(e) is not None]
    unscored = [(x, e) for x, e in done if _metric(e) is None]
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
    last_x = max(len(rows) - 1, 0)
    pad = max(0.6, 0.015 * len(rows))
    ax.set_xlim(-pad, last_x + pad)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))

    if scored:
        kept = [(x, e, m) for x, e, m in scored if e.status == "keep"]
        anchor = [m for _, _, m in kept] + ([s["baseline_metric"]] if s["baseline_metric"] is not None else [])
        lo, hi = _y_window([m for _, _, m in scored], anchor, lower_is_better)
        scale = max(abs(lo), abs(hi))  # number format from what is shown, not from an outlier
        inside = [(x, e, m) for x, e, m in scored if lo <= m <= hi]
        discards = [(x, m) for x, e, m in inside if e.status == "discard"]
        others = [(x, e, m) for x, e, m in inside if e.status not in ("discard", "keep")]
        if discards:
            ax.scatter(*zip(*discards), c="#b4b4b4", s=16, alpha=0.7, zorder=2, label="discarded")
        if others:
            names = ", ".join(sorted({e.status.replace("_", " ") for _, e, _ in others}))
            ax.scatter([x for x, _, _ in others], [m for _, _, m in others], c="#7f8c8d", s=20,
                       alpha=0.85, zorder=2, label=f"measured, not kept ({names})")
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
        label = f"off scale ({len(above) + len(below)})"
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
            strip.scatter(xs, [lane] * len(xs), marker=marker, c=colour, s=36, linewidths=1.6)
        strip.set_yticks(range(len(lanes)))
        strip.set_yticklabels([f"{st.replace('_', ' ')} ({sum(e.status == st for _, e in unscored)})"
                               for st in lanes], fontsize=9)
        strip.set_ylim(len(lanes) - 0.4, -0.6)
        strip.grid(True, axis="x", alpha=0.2)
        ax.tick_params(labelbottom=False)
        xlabel_ax = strip
    xlabel_ax.set_xlabel("Experiment #", fontsize=12)

    _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight", pad_inches=0.25))
    return path


def _label_kept(ax: Any, kept: list, lower_is_better: bool) -> None:
    """Label kept points with their description, mirrored so labels point into the worse side."""
    chosen = kept
    if len(kept) > _MAX_LABELS:
        moved = [(abs(m - prev), x) for (x, _, m), (_, _, prev) in zip(kept[1:], kept[:-1])]
        keep_x = {kept[0][0]} | {x for _, x in sorted(moved, reverse=True)[: _MAX_LABELS - 1]}
        chosen = [k for k in kept if k[0] in keep_x]
    up = lower_is_better  # worse values are above when lower is better
    for x, e, m in chosen:
        text = " ".join((e.description or "").split()) or e.short or f"#{x}"
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
              lower_is_better: bool, tag: str = "") -> Path:
    """Write the Markdown report to `path` and return it; links progress.png if it is beside it."""
    rows = list(rows)
    path = Path(path)
    s = summary(rows, lower_is_better)
    anchor = [m for e in rows if (m := _metric(e)) is not None and (e.status == "keep" or e.kind == "baseline")]
    scale = max(map(abs, anchor or [m for e in rows if (m := _metric(e)) is not None] or [1.0]))
    f = lambda v: _fmt(v, scale)  # noqa: E731 - one number format per report
    direction = "lower" if lower_is_better else "higher"

    out = [f"# Autoresearch report{': ' + tag if tag else ''}", ""]
    if (path.parent / "progress.png").exists():
        out += ["![progress](progress.png)", ""]
    out += ["## Summary", "", "| | |", "|---|---|", f"| Experiments | {s['n']} |"]
    if s["counts"]:
        out.append("| By status | " + " · ".join(f"{k} {v}" for k, v in s["counts"].items()) + " |")
    if s["keep_rate"] is not None:
        out.append(f"| Keep rate | {s['kept']} / {s['judged']} ({s['keep_rate'] * 100:.1f}%) |")
    if s["baseline_metric"] is not None:
        out.append(f"| Baseline {metric_name} | {f(s['baseline_metric'])} |")
    if s["best_metric"] is not None:
        out.append(f"| Best {metric_name} | {f(s['best_metric'])} (`{(s['best_commit'] or '-')[:7]}`, "
                   f"id {s['best_id']}) |")
    if s["improvement"] is not None:
        pct = f" ({s['improvement_pct']:+.2f}%)" if s["improvement_pct"] is not None else ""
        out.append(f"| Improvement | {_signed(s['improvement'], f)}{pct}, {direction} is better |")
    if s["unverified"]:
        out.append(f"| **Unverified** | {_cell(unverified_note(s))} |")
    out.append(f"| Wall time | {_duration(s['wall_s_total'])} |")
    if s["cost_usd_total"] or s["tokens_in_total"] or s["tokens_out_total"]:
        out.append(f"| Agent cost | ${s['cost_usd_total']:.2f} ({s['tokens_in_total']:,} tokens in, "
                   f"{s['tokens_out_total']:,} out) |")
    out.append("")

    out += _kept_table(rows, metric_name, f)
    out += _failure_list(rows)
    _atomic_write(path, lambda tmp: Path(tmp).write_text("\n".join(out).rstrip() + "\n", encoding="utf-8"))
    return path


def _kept_table(rows: list[Experiment], metric_name: str, f: Any) -> list[str]:
    base = _baseline(rows)
    table = [(x, e) for x, e in enumerate(rows) if e.status == "keep" or e is base]
    if not table:
        return ["## Kept changes", "", "None yet.", ""]
    base_metric = _metric(base) if base else None
    out = ["## Kept changes", "",
           f"| # | id | commit | {metric_name} | Δ previous | Δ baseline | evidence | description |",
           "|---:|---:|---|---:|---:|---:|---|---|"]
    prev: Optional[float] = None
    for x, e in table:
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
        out.append(f"| {x} | {e.id} | `{e.short or '-'}` | {f(m) if m is not None else '—'} | {d_prev} | "
                   f"{d_base} | {_cell(_evidence(e.evidence, f))} | {desc} |")
        prev = m if m is not None else prev
    return out + [""]


def _failure_list(rows: list[Experiment], limit: int = 10) -> list[str]:
    failed = [(x, e) for x, e in enumerate(rows) if e.status in _FAILURES]
    if not failed:
        return []
    out = ["## Failures", ""]
    for status in _FAILURES:
        group = [(x, e) for x, e in failed if e.status == status]
        if not group:
            continue
        out.append(f"- **{status}** ({len(group)})")
        for x, e in group[:limit]:
            why = _first_line(e.reason) or _last_line(e.log_tail)
            out.append(f"  - #{x} `{e.short or '-'}` {_cell(e.description)}" + (f" — {_cell(why)}" if why else ""))
        if len(group) > limit:
            out.append(f"  - … and {len(group) - limit} more")
    return out + [""]


def _evidence(ev: dict[str, Any], f: Any) -> str:
    """A policy's evidence dict on one line: the known keys first and formatted, then short scalars."""
    if not isinstance(ev, dict):
        return ""
    known = {"runs": lambda v: f"runs={len(v) if isinstance(v, (list, tuple)) else v}",
             "mean": lambda v: f"mean {f(v)}",
             "std": (lambda v: f"std {v:.3g} (log)") if str(ev.get("noise", "")).startswith("relative")
             else (lambda v: f"std {f(v)}"),
             "p_value": lambda v: f"p={v:.3g}", "effect_sigma": lambda v: f"{v:.2g}σ"}
    parts = []
    for key, show in known.items():
        try:
            parts += [show(ev[key])] if ev.get(key) is not None else []
        except (TypeError, ValueError):  # a policy wrote something unexpected: show it raw
            parts.append(f"{key}={ev[key]}")
    parts += [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in ev.items()
              if k not in known and isinstance(v, (int, float, str)) and len(str(v)) <= 40]
    text = ", ".join(parts)
    return text if len(text) <= 120 else text[:117] + "..."


# -- helpers ----------------------------------------------------------------------------------
def _metric(e: Experiment) -> Optional[float]:
    m = e.metric
    return float(m) if m is not None and math.isfinite(m) else None


def _baseline(rows: list[Experiment]) -> Optional[Experiment]:
    for e in rows:
        if e.kind == "baseline" and _metric(e) is not None:
            return e
    for e in rows:
        if e.status == "keep" and _metric(e) is not None:
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


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {sec:02d}s" if m else f"{sec}s"


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
