"""The improvement of the best over the start: one estimate, one definition, shown the same by every view.

Owns: `improvement()` (the Figure: start and best with their means and run counts, the gain,
its interval and p-value, the noise it rests on, and where it comes from), `estimate()` (the
comparison itself, which `autoresearch confirm` uses too), `noise()` (what status says about
the run-to-run noise), the number format every view prints values with (`Format`), durations,
and the one-line texts (`Figure.text()`, `Noise.text()`, `evidence_text()`). `status`, `watch`,
the live view, `results`, report.md, report.html, `finalize` and the agents' context all print
these; none of them computes an improvement of its own.

Definitions:
- start: the tag's baseline row (the first `baseline` with a metric, else the first keep with one);
  best: the incumbent (the latest keep: what the branch tip is).
- the runs of a commit: every usable measurement of that commit in the tag's `measurements`
  table (status ok, finite; a seed counts once), whichever experiment took it; a row with no
  measurement at all (ledgers built by hand, imported histories) counts its own metric once.
- the estimate: the mean of the best's runs against the mean of the start's runs; with
  metric.noise = "relative" on log(metric) (geometric means; the gain is given back in metric
  units against the start). The noise is the tag's pooled estimate, the one the policy uses
  (noise.pooled_noise). The interval is two-sided at confidence 1 - policy.alpha and
  the p-value the one-sided pooled t-test that the best is better.
- when `autoresearch confirm` has run on the same start and best (its session's fresh runs),
  its figure is the figure: the same estimate on the fresh runs only, which were not selected
  (unbiased). It is `refuted` when its interval reaches down to no improvement (or, with a
  deterministic metric, when the best is not better).
Not covered: without confirm the best's runs are the ones that got it kept, so the ledger's
figure flatters it (the winner's curse); the text says "not confirmed" for that reason.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

from . import stats
from .ledger import Experiment, Ledger
from .states import OK, Kind, Status
from .noise import pooled_noise


# -- what the metric is --------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    """What the figure needs to know of the metric: its name, direction, noise scale and alpha."""

    name: str = "metric"
    lower: bool = True
    relative: bool = False
    alpha: float = 0.05
    command: str = ""  # metric.command: the evaluation that prints the metric (finalize's "reproduce")

    @classmethod
    def from_config(cls, cfg: Any) -> "Spec":
        return cls(cfg.metric.name, cfg.lower_is_better(), cfg.metric.noise == "relative", cfg.policy.alpha,
                   cfg.metric.command or "")

    @classmethod
    def from_snapshot(cls, snap: dict[str, Any]) -> "Spec":
        """From a config snapshot as the ledger's sessions store it (Config.snapshot())."""
        metric, policy = snap.get("metric") or {}, snap.get("policy") or {}
        return cls(metric.get("name") or "metric", metric.get("direction", "min") == "min",
                   metric.get("noise") == "relative", float(policy.get("alpha") or 0.05), metric.get("command") or "")

    @classmethod
    def of(cls, ledger: Ledger, tag: str, cfg: Any = None) -> "Spec":
        """The project's config when given, else the config the tag's last session ran with."""
        if cfg is not None:
            return cls.from_config(cfg)
        sessions = ledger.sessions(tag)
        return cls.from_snapshot(sessions[-1]["config"] if sessions else {})

    @property
    def scale(self) -> stats.Scale:
        return stats.Scale(self.relative)


# -- numbers as people read them --------------------------------------------------------------------
@dataclass(frozen=True)
class Format:
    """The metric's sensible precision: to a tenth of the run-to-run noise when it is measured
    (noise 0.012 -> 0.138; 16 ms -> 164), else six significant digits."""

    decimals: Optional[int] = None

    @classmethod
    def for_noise(cls, sd_units: Optional[float]) -> "Format":
        if sd_units is None or not math.isfinite(sd_units) or sd_units <= 0:
            return cls(None)
        return cls(max(0, min(8, 1 - math.floor(math.log10(sd_units)))))

    def __call__(self, v: Optional[float]) -> str:
        if v is None or not math.isfinite(v):
            return "-"
        return f"{v:.{self.decimals}f}" if self.decimals is not None else f"{v:.6g}"

    def signed(self, v: Optional[float]) -> str:
        text = self(v)
        return text if text.startswith(("-", "+")) or text == "-" else "+" + text


def duration(seconds: Optional[float]) -> str:
    """A time for people: 32.8s, 4m 05s, 2h 10m (never 0.00 h for half a minute)."""
    s = float(seconds or 0.0)
    if s < 60:
        return f"{s:.1f}s"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {sec:02d}s"


# -- the runs -----------------------------------------------------------------------------------------
def commit_runs(ledger: Ledger, tag: str) -> dict[str, list[tuple[int, float]]]:
    """The tag's usable runs by commit, in the order taken: (seed, metric); a seed counts once."""
    out: dict[str, list[tuple[int, float]]] = {}
    seen: set[tuple[str, int]] = set()
    for m in ledger.measurements(tag=tag):
        v = m["metric"]
        if m["status"] != OK or v is None or not math.isfinite(v) or (m["commit"], m["seed"]) in seen:
            continue
        seen.add((m["commit"], m["seed"]))
        out.setdefault(m["commit"], []).append((m["seed"], v))
    return out


def row_values(row: Experiment, runs: dict[str, list[tuple[int, float]]]) -> list[float]:
    """A row's values: its commit's runs (`commit_runs`), else its own metric once (rows with no measurement)."""
    got = [v for _, v in runs.get(row.commit or "", [])]
    if got:
        return got
    return [row.metric] if row.metric is not None and math.isfinite(row.metric) else []


def ends(rows: Sequence[Experiment]) -> tuple[Optional[Experiment], Optional[Experiment]]:
    """(start, best) of a tag's rows (see the module docstring)."""
    rows = list(rows)
    base = next((e for e in rows if e.kind == Kind.BASELINE and _finite(e.metric) is not None), None)
    base = base or next((e for e in rows if e.status == Status.KEEP and _finite(e.metric) is not None), None)
    kept = [e for e in rows if e.status == Status.KEEP]
    return base, (kept[-1] if kept else None)


# -- the estimate -----------------------------------------------------------------------------------
def estimate(base_values: Sequence[float], best_values: Sequence[float], sd: Optional[float], df: int,
             spec: Spec) -> dict[str, Any]:
    """Best against start on the spec's scale; every figure back in metric units.

    Keys: base_mean, best_mean, improvement (positive = better), change_pct (the metric's change
    relative to the start, signed), interval (of the improvement, two-sided at 1 - alpha, or None),
    p_value, t, effect_sigma. Relative noise needs positive values (raises ValueError otherwise).
    """
    scale = spec.scale
    if scale.relative and min([*base_values, *best_values]) <= 0:
        raise ValueError('metric.noise = "relative" needs a positive metric')
    c = stats.compare([scale.judged(v) for v in best_values], [scale.judged(v) for v in base_values], sd, df,
                      spec.lower)
    gain, ref = scale.gain(c.gain, c.mean_ref, spec.lower), scale.units(c.mean_ref)
    iv = c.interval(spec.alpha / 2) if c.se else None
    best = scale.units(c.mean)
    return {"base_mean": ref, "best_mean": best, "improvement": gain,
            "change_pct": (best - ref) / abs(ref) * 100 if ref else None,
            "interval": [scale.gain(x, c.mean_ref, spec.lower) for x in iv] if iv else None,
            "p_value": c.p_value, "t": _finite(c.t), "effect_sigma": _finite(c.effect_sigma)}


@dataclass
class Figure:
    """The improvement of the best over the start (see the module docstring)."""

    metric: str
    lower: bool
    base_id: Optional[int] = None
    base_commit: str = ""
    best_id: Optional[int] = None
    best_commit: str = ""
    best_description: str = ""
    base_mean: Optional[float] = None
    base_runs: int = 0
    best_mean: Optional[float] = None
    best_runs: int = 0
    improvement: Optional[float] = None
    change_pct: Optional[float] = None
    interval: Optional[list[float]] = None
    confidence: float = 0.9
    p_value: Optional[float] = None
    sd: Optional[float] = None  # the pooled noise, on the test's scale (log for relative)
    df: int = 0
    relative: bool = False
    source: str = "ledger"  # ledger: the runs the loop took; confirm: `autoresearch confirm`'s fresh runs
    refuted: bool = False
    note: str = ""
    fmt: Format = field(default_factory=Format)

    @property
    def same(self) -> bool:
        """Nothing kept beyond the start: the best is the start itself (or its very code)."""
        return self.best_id is None or self.best_id == self.base_id or bool(
            self.best_commit and self.best_commit == self.base_commit)

    @property
    def claimed(self) -> bool:
        """An improvement a person may be told about: measured, better, and not refuted by confirm."""
        return self.improvement is not None and self.improvement > 0 and not self.refuted and not self.same

    def text(self) -> str:
        """The figure on one line, identical in every view."""
        f = self.fmt
        if self.base_mean is None:
            return f"{self.metric}: no measured start yet"
        start = f"{self.metric} {f(self.base_mean)} ({runs_text(self.base_runs)})"
        if self.same or self.best_mean is None:
            return f"{start}: nothing kept yet, the best is the start"
        pct = f", {self.change_pct:+.2f}%" if self.change_pct is not None else ""
        out = (f"{start} → {f(self.best_mean)} ({runs_text(self.best_runs)}){pct}; "
               f"improvement {f.signed(self.improvement)}")
        if self.interval:
            out += (f", {self.confidence * 100:.0f}% CI [{f.signed(self.interval[0])}, {f.signed(self.interval[1])}]"
                    f", p = {self.p_value:.3g}")
        elif self.sd == 0 and self.p_value is not None:
            out += " (deterministic: measured noise 0)"
        else:
            out += " (no noise estimate: no interval)"
        if self.source == "confirm":
            out += (" — REFUTED by `autoresearch confirm`: the interval includes no improvement" if self.refuted
                    else " — confirmed by `autoresearch confirm` (fresh runs)")
        else:
            out += " — from the loop's runs, not confirmed (`autoresearch confirm` re-measures both)"
        return out + (f"; {self.note}" if self.note else "")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("fmt")
        d["text"] = self.text()
        return d


def runs_text(n: int) -> str:
    """`1 run`, `3 runs`."""
    return f"{n} run" + ("" if n == 1 else "s")


def _tag_runs(ledger: Ledger, tag: str, spec: Spec, rows: Optional[Sequence[Experiment]]):
    """The tag's rows, its runs by commit, and the noise pooled over them (sd, degrees of freedom)."""
    rows = list(rows) if rows is not None else ledger.experiments(tag)
    try:
        sd, df = pooled_noise(ledger, tag, spec.scale)
    except ValueError:
        sd, df = None, 0
    return rows, commit_runs(ledger, tag), sd, df


def improvement(ledger: Ledger, tag: str, spec: Spec, rows: Optional[Sequence[Experiment]] = None) -> Figure:
    """The tag's improvement figure: confirm's when it ran on today's start and best, else the ledger's."""
    rows, runs, sd, df = _tag_runs(ledger, tag, spec, rows)
    fig = from_runs(rows, runs, sd, df, spec)
    confirmed = _confirm_runs(ledger, tag, fig)
    if confirmed is not None:
        base_vals, best_vals = confirmed
        if base_vals and best_vals and not fig.same:
            _fill(fig, base_vals, best_vals, sd, df, spec)
            fig.source = "confirm"
            lo = fig.interval[0] if fig.interval else None
            fig.refuted = (lo is not None and lo <= 0) or (lo is None and sd == 0 and (fig.improvement or 0) <= 0)
    return fig


def from_runs(rows: Sequence[Experiment], runs: dict[str, list[tuple[int, float]]], sd: Optional[float], df: int,
              spec: Spec) -> Figure:
    """The ledger's figure from rows and their runs by commit (`commit_runs`); no runs: each row's metric once."""
    base, best = ends(rows)
    fig = Figure(spec.name, spec.lower, confidence=1 - spec.alpha, sd=sd, df=df, relative=spec.relative)
    if base is None:
        return fig
    fig.base_id, fig.base_commit = base.id, base.commit or ""
    if best is not None:
        fig.best_id, fig.best_commit, fig.best_description = best.id, best.commit or "", best.description
    base_vals = row_values(base, runs)
    best_vals = row_values(best, runs) if best is not None else []
    if not base_vals:
        return fig
    if fig.same or not best_vals:
        fig.base_mean, fig.base_runs = _mean(base_vals, spec), len(base_vals)
        if fig.same:
            fig.best_mean, fig.best_runs, fig.improvement, fig.change_pct = fig.base_mean, fig.base_runs, 0.0, 0.0
        fig.fmt = Format.for_noise(_sd_units(sd, fig.base_mean, spec))
        return fig
    _fill(fig, base_vals, best_vals, sd, df, spec)
    return fig


def _fill(fig: Figure, base_vals: list[float], best_vals: list[float], sd: Optional[float], df: int,
          spec: Spec) -> None:
    try:
        e = estimate(base_vals, best_vals, sd, df, spec)
    except ValueError:  # relative noise and a value <= 0: the figure in plain units, no test
        e = estimate(base_vals, best_vals, None, 0, Spec(spec.name, spec.lower, False, spec.alpha))
    fig.base_mean, fig.best_mean, fig.improvement = e["base_mean"], e["best_mean"], e["improvement"]
    fig.change_pct, fig.interval, fig.p_value = e["change_pct"], e["interval"], e["p_value"]
    fig.base_runs, fig.best_runs = len(base_vals), len(best_vals)
    fig.fmt = Format.for_noise(_sd_units(sd, fig.base_mean, spec))


def _mean(values: list[float], spec: Spec) -> float:
    if spec.relative and min(values) > 0:
        return math.exp(stats.mean([math.log(v) for v in values]))
    return stats.mean(values)


def _sd_units(sd: Optional[float], level: Optional[float], spec: Spec) -> Optional[float]:
    """The noise in metric units near `level` (relative noise is a fraction of the value)."""
    if sd is None or level is None:
        return None
    return sd * abs(level) if spec.relative else sd


def _confirm_runs(ledger: Ledger, tag: str, fig: Figure) -> Optional[tuple[list[float], list[float]]]:
    """The fresh runs of the last `confirm` session, when it measured today's start and best."""
    sessions = [s for s in ledger.sessions(tag) if s.get("note") == "confirm"]
    if not sessions or fig.base_id is None or fig.same:
        return None
    s = sessions[-1]
    t0, t1 = s["started_at"] or 0.0, s["ended_at"] or math.inf
    ms = [m for m in ledger.measurements(tag=tag) if t0 <= (m["created_at"] or 0.0) <= t1]
    if not any(m["experiment_id"] == fig.best_id and m["commit"] == fig.best_commit for m in ms):
        return None  # confirm ran on an earlier best: the loop's figure stands
    return confirm_values(ms, fig.base_id, fig.base_commit), confirm_values(ms, fig.best_id, fig.best_commit)


def confirm_values(ms: list[dict[str, Any]], exp_id: Optional[int], commit: str) -> list[float]:
    """The usable values among `ms` measured for `exp_id` on `commit`."""
    return [m["metric"] for m in ms if m["experiment_id"] == exp_id and m["commit"] == commit
            and m["status"] == OK and m["metric"] is not None and math.isfinite(m["metric"])]


# -- the noise ----------------------------------------------------------------------------------------
@dataclass
class Noise:
    sd: Optional[float]
    df: int
    commits: int  # commits measured more than once (what the estimate pools)
    runs: int  # their runs
    relative: bool
    baseline_runs: int
    calibration: str = ""  # the calibration event's text, when the baseline was calibrated

    def text(self, fmt: Optional[Format] = None) -> str:
        if self.sd is None:
            return ("noise: not measured (no commit was run more than once; policy.calibration_runs >= 2 "
                    "measures it on the baseline)")
        sd = f"{self.sd:.3g} of log(metric), about {self.sd * 100:.2g}% of the value" if self.relative \
            else (fmt or Format())(self.sd) if self.sd else "0 (deterministic)"
        return (f"noise: sd {sd}, {self.df} degrees of freedom, pooled over {self.commits} commit(s) measured more "
                f"than once ({self.runs} runs; the baseline {runs_text(self.baseline_runs)})"
                + (f"; first measured at calibration: {self.calibration}" if self.calibration else ""))

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"text": self.text()}


def noise(ledger: Ledger, tag: str, spec: Spec, rows: Optional[Sequence[Experiment]] = None) -> Noise:
    rows, runs, sd, df = _tag_runs(ledger, tag, spec, rows)
    repeated = [r for r in runs.values() if len(r) >= 2]
    base, _ = ends(rows)
    cal = next((ev["message"] for ev in reversed(ledger.events(tag)) if ev["kind"] == "calibration"), "")
    return Noise(sd, df, len(repeated), sum(map(len, repeated)), spec.relative,
                 len(row_values(base, runs)) if base else 0, cal)


# -- evidence --------------------------------------------------------------------------------------------
def evidence_text(ev: dict[str, Any], fmt: Any = None, limit: int = 0) -> str:
    """A policy's evidence on one line, as values: `runs=3, mean 0.982, std 0.004, p=0.012, 2.4σ,
    90% CI [+0.001, +0.03]`; the known keys first and formatted with `fmt` (the metric's format),
    then short scalars; lists (seeds) are left out, never printed as their lengths."""
    if not isinstance(ev, dict) or not ev:
        return ""
    f = fmt or Format()
    relative = str(ev.get("noise", "")).startswith("relative")

    def interval(iv: Any) -> str:
        lo, hi = (f(x) for x in iv)
        conf = ev.get("confidence")
        head = f"{conf * 100:.0f}% CI" if isinstance(conf, (int, float)) else "CI"
        return f"{head} [{lo if lo.startswith('-') else '+' + lo}, {hi if hi.startswith('-') else '+' + hi}]"

    known = {"runs": lambda v: f"runs={len(v) if isinstance(v, (list, tuple)) else v}",
             "mean": lambda v: f"mean {f(v)}",
             "std": (lambda v: f"std {v:.3g} (log)") if relative else (lambda v: f"std {f(v)}"),
             "p_value": lambda v: f"p={v:.3g}", "effect_sigma": lambda v: f"{v:.2g}σ",
             "incumbent_mean": lambda v: f"vs {f(v)}", "interval": interval}
    parts = []
    for key, show in known.items():
        try:
            parts += [show(ev[key])] if ev.get(key) is not None else []
        except (TypeError, ValueError):  # a policy wrote something unexpected: show it raw
            parts.append(f"{key}={ev[key]}")
    skip = set(known) | {"confidence", "noise"}
    parts += [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in ev.items()
              if k not in skip and isinstance(v, (int, float, str)) and len(str(v)) <= 40]
    text = ", ".join(parts)
    return text if not limit or len(text) <= limit else text[:limit - 3] + "..."


def _finite(x: Optional[float]) -> Optional[float]:
    return x if x is not None and math.isfinite(x) else None
