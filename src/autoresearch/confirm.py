"""`autoresearch confirm`: the final check — the starting point and the best, again, on fresh seeds.

A run's kept results were chosen because their runs looked good, so their recorded means
flatter them (the winner's curse). This re-runs the tag's baseline commit and its best
(the incumbent) on seeds that neither has used, alternating the two so drift of the
machine hits both alike, and reports the improvement with a confidence interval.

Guarantees:
- Takes the tag's lock (a running loop and `confirm` never overlap) and reconciles first,
  like any session; the runs go through the driver's engine and judge, sandbox, protected-file
  digests and worktree, and every one is stored in the ledger's `measurements` table
  (attached to the baseline's and the best's rows), with an event `confirm` holding the
  summary. Ctrl-C stops after the current run; what was measured stays recorded.
- The means compare only the fresh runs (unselected, so unbiased); the noise is the tag's
  pooled estimate (stats.py: every commit measured more than once, these runs included),
  so the interval rests on all the repeated runs of the tag. The interval is two-sided at
  confidence 1 - policy.alpha; the p-value is the one-sided pooled t-test that the best
  is better.

Not covered: the hardware class (runs go wherever this machine is), and a best that no
longer runs (its runs are reported as failures).
"""

from __future__ import annotations

from typing import Any, Optional

from . import figures, stats
from .config import Config
from .errors import AutoresearchError
from .ledger import Experiment, Ledger
from .noise import NOT_POSITIVE, pooled_noise
from .policy_confirm import TEST
from .session import RunSession
from .states import OK, Kind, Status


def confirm(cfg: Config, tag: str, runs: int = 5, reporter=None) -> dict[str, Any]:
    """Re-run the baseline and the best of `tag` `runs` times each on fresh seeds; return the summary."""
    from .driver import Driver, local_engine

    if runs < 2:
        raise AutoresearchError(f"--runs must be at least 2 (got {runs}): one run says nothing about noise")
    session = RunSession(cfg, tag, reporter=reporter, note="confirm")
    ledger = session.ledger
    with session.open(checkout_may_differ=True):
        base, best = _ends(ledger, tag)
        driver = Driver(cfg, tag, session=session, engine=local_engine(cfg))
        driver.start()
        used = {m["seed"] for m in ledger.measurements(tag=tag) if m["seed"] is not None}
        first = max(used | {cfg.experiment.seed}) + 1  # above every seed the tag used: fresh for both commits
        seeds = list(range(first, first + runs))
        rows = [base] if best.commit == base.commit else [base, best]
        measured: dict[int, list[tuple[int, Optional[float], str]]] = {r.id: [] for r in rows}
        try:
            for seed in seeds:
                for row in rows:
                    if session.stop_requested:
                        break
                    session.report("rerun", exp=row, commit=row.commit, seed=seed)
                    m = driver.measure(row, row.commit, seed)
                    measured[row.id].append((seed, m.metric if m.status == OK else None, m.status))
        finally:
            driver.shutdown(None)
        out = summarize(cfg, ledger, tag, base, best, measured)
        out["stopped"] = session.stop_requested
        ledger.event(tag, "confirm", _one_line(out, cfg.metric.name))
        return out


def _ends(ledger: Ledger, tag: str) -> tuple[Experiment, Experiment]:
    rows = ledger.experiments(tag)
    base = next((e for e in rows if e.kind == Kind.BASELINE and e.status == Status.KEEP and e.commit), None)
    best = ledger.incumbent(tag)
    if base is None or best is None or not best.commit:
        raise AutoresearchError(f"tag `{tag}` has no measured baseline yet: run `autoresearch run --tag {tag}` first")
    return base, best


def summarize(cfg: Config, ledger: Ledger, tag: str, base: Experiment, best: Experiment,
              measured: dict[int, list[tuple[int, Optional[float], str]]]) -> dict[str, Any]:
    """The comparison of the fresh runs (see the module docstring); pure given the ledger."""
    scale = stats.Scale.of(cfg.metric.noise)

    def side(row: Experiment) -> dict[str, Any]:
        got = measured.get(row.id, [])
        values = [v for _, v, _ in got if v is not None]
        if scale.relative and values and min(values) <= 0:
            raise AutoresearchError(f"a fresh run of #{row.id} gave a metric <= 0, but {NOT_POSITIVE}: set "
                                    "metric.noise = \"absolute\" or fix the metric")
        judged = [scale.judged(v) for v in values]  # relative: a geometric mean, the sd of the logs
        mean = scale.units(stats.mean(judged)) if values else None
        return {"id": row.id, "commit": row.commit, "description": row.description, "seeds": [s for s, _, _ in got],
                "runs": len(values), "failed": [{"seed": s, "status": st} for s, v, st in got if v is None],
                "mean": mean, "sd": stats.sd(judged), "values": values}

    a, b = side(base), side(best) if best.commit != base.commit else None
    sd, df = pooled_noise(ledger, tag, scale)
    out: dict[str, Any] = {"tag": tag, "metric": cfg.metric.name, "direction": cfg.metric.direction,
                           "baseline": a, "best": b or a, "same_commit": b is None, "std": sd, "df": df,
                           "test": TEST, "confidence": 1 - cfg.policy.alpha}
    if scale.relative:
        out.update(noise="relative (means geometric, std on the log scale)", test=TEST + ", on log(metric)")
    if b is None:
        out.update(improvement=0.0, interval=None, p_value=None, note="nothing was kept: the best is the starting point")
        return out
    if not a["values"] or not b["values"]:
        raise AutoresearchError(f"no usable run of the {'baseline' if not a['values'] else 'best'} on the fresh "
                                f"seeds (see the logs under .autoresearch/logs/{tag}/): nothing to compare")
    # The one estimate every view shows (figures.py): the test on its scale, the figures in metric units.
    e = figures.estimate(a["values"], b["values"], sd, df, figures.Spec.from_config(cfg))
    ref = e["base_mean"]
    out.update(improvement=e["improvement"], improvement_pct=(e["improvement"] / abs(ref) * 100) if ref else None,
               interval=e["interval"], p_value=e["p_value"], t=e["t"], effect_sigma=e["effect_sigma"])
    return out


def render(out: dict[str, Any]) -> str:
    """The summary as a few lines for a person."""
    name, arrow = out["metric"], "lower" if out["direction"] == "min" else "higher"
    a, b = out["baseline"], out["best"]
    seeds = a["seeds"]
    lines = [f"confirm {out['tag']}: {name} ({arrow} is better), {len(seeds)} fresh run(s) each"
             + (f" on seeds {seeds[0]}..{seeds[-1]}" if seeds else "")]
    relative = str(out.get("noise", "")).startswith("relative")
    for label, s in (("start", a), ("best", b)) if not out["same_commit"] else (("start", a),):
        spread = f" ± {s['sd']:.4g} (sd{' of log; geometric mean' if relative else ''})" if s["sd"] is not None else ""
        failed = f", {len(s['failed'])} failed" if s["failed"] else ""
        mean = f"{s['mean']:.6g}" if s["mean"] is not None else "-"
        lines.append(f"  {label:5} #{s['id']} {s['commit'][:7]}  {mean}{spread}  ({s['runs']} runs{failed})")
    if out["same_commit"]:
        lines.append(f"  {out['note']}")
        return "\n".join(lines)
    gain = out["improvement"]
    pct = f" ({out['improvement_pct']:+.2f}%)" if out.get("improvement_pct") is not None else ""
    text = f"  improvement {gain:+.6g}{pct}"
    if out["interval"]:
        lo, hi = out["interval"]
        text += (f", {out['confidence'] * 100:.0f}% CI [{lo:+.6g}, {hi:+.6g}], p = {out['p_value']:.3g} "
                 f"({out['test']}, {out['df']} df)")
        if out.get("effect_sigma") is not None:
            scale = " of log(metric)" if relative else ""
            text += f"; {out['effect_sigma']:.2f}σ of run-to-run noise (sd {out['std']:.4g}{scale})"
        verdict = "the best is better than the start" if lo > 0 else "the interval includes no improvement"
        lines += [text, f"  {verdict}"]
    elif out.get("std") == 0 and out.get("p_value") is not None:  # repeated runs agree exactly
        verdict = "the best is better than the start" if gain > 0 else "the best is not better than the start"
        lines += [text + f", p = {out['p_value']:.3g}", f"  deterministic (measured noise 0 over {out['df']} df): {verdict}"]
    else:
        lines += [text, "  no noise estimate: the interval needs runs repeated on one commit"]
    if out.get("stopped"):
        lines.append(f"  stopped early ({out['stopped']}): fewer runs than asked")
    return "\n".join(lines)


def _one_line(out: dict[str, Any], name: str) -> str:
    if out["same_commit"]:
        return f"{name}: nothing kept; start {out['baseline']['mean']} over {out['baseline']['runs']} fresh runs"
    iv = out["interval"]
    ci = f", {out['confidence'] * 100:.0f}% CI [{iv[0]:.6g}, {iv[1]:.6g}], p={out['p_value']:.3g}" if iv else ""
    return (f"{name}: start #{out['baseline']['id']} {out['baseline']['mean']:.6g} ({out['baseline']['runs']} runs) vs "
            f"best #{out['best']['id']} {out['best']['mean']:.6g} ({out['best']['runs']} runs): "
            f"improvement {out['improvement']:.6g}{ci}")

