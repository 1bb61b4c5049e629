"""Guards: what a change must also satisfy to be kept, beyond a better metric.

A candidate the policy would keep goes through two guards, cheapest first; one that the
policy discards never pays for them (the checks may take minutes: a test suite).

1. Bounds on secondary metrics (`[metric] bounds`, each metric also in `metric.record`):
       "+10%"   at most 10% above the incumbent's value     "-5%"   at most 5% below it
       "+64"    at most 64 (units) above the incumbent's    "-0.5"  at most 0.5 below it
       "<= 900" never above 900 ("<" strict)                ">= 0.9" never below 0.9 (">" strict)
   Relative bounds compare with the incumbent (the parent being improved), so they bound
   each step; pair one with an absolute bound to cap the drift of many small steps.
   A violated bound makes the candidate a `discard` whose reason names the metric, its
   value and the limit. A candidate that does not print a bounded metric violates it
   (nothing shows it is within bounds).
2. The checks command (`experiment.checks`, e.g. the test suite) runs after the experiment,
   in the run worktree reset to the candidate's commit, as its own process tree (procs.py)
   with the experiment's scrubbed environment plus AUTORESEARCH_CHECKS=1 and inside the
   same sandbox (sandbox.py: bubblewrap when usable), killed at `experiment.checks_timeout_s`.
   A failing check (a non-zero exit; not a timeout, whose retry would cost as much again)
   is run again, from a clean worktree, up to `experiment.checks_retries` times (default 1:
   a flaky test suite does not reject a good change); it passes if any attempt passes, and
   every attempt is recorded (status, exit code, time, log), so a flaky pass is visible as
   such in the evidence and the reason. A timeout, or a failure on every attempt, is
   `checks_failed`: its metric stays on record, the reason
   quotes the last lines of the output, `log_tail` holds the tail and the whole output is
   in `<experiment log>.checks.log` (retries: `.checks.retry<N>.log`).

Every outcome is written into `exp.evidence["guards"]`. The baseline goes through the same
guards (its checks must pass, absolute bounds apply; relative ones have no incumbent),
so a broken test suite stops the run before the night starts rather than after it.

Not covered: a checks command that edits protected files cannot change a result already
measured, and the next run restores them (judge.py); checks that need the network need
`experiment.network = true`, like the experiment.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from .bounds import Bound, parse_bound
from .config import Config
from .judge import experiment_env, log_cap, read_tail
from .layout import Layout
from .ledger import Experiment
from .procs import run_tree
from .sandbox import Sandbox
from .session import marker_prefix
from .states import Kind, Status
from .workspace import Workspace

REASON_LINES = 3


def bounds(cfg: Config) -> list[Bound]:
    return [parse_bound(name, text) for name, texts in cfg.metric.bounds.items() for text in texts]


def check_bounds(cfg: Config, metrics: dict[str, float],
                 incumbent: Optional[dict[str, float]]) -> tuple[list[str], list[dict[str, Any]]]:
    """(violations as sentences, one evidence row per bound) for a candidate's secondary metrics."""
    problems, rows = [], []
    for b in bounds(cfg):
        base = (incumbent or {}).get(b.metric)
        limit = b.limit(base)
        value = metrics.get(b.metric)
        row = {"metric": b.metric, "bound": b.text, "value": value, "incumbent": base, "limit": limit}
        if limit is None:
            row["ok"], row["note"] = True, "no incumbent value to compare with"
        elif value is None or not math.isfinite(value):
            row["ok"] = False
            problems.append(f"{b.metric} was not printed, so its bound {b.text} cannot be shown to hold")
        else:
            row["ok"] = b.holds(value, limit)
            if not row["ok"]:
                against = f"incumbent {base:.6g} {b.text}" if b.relative else "an absolute bound"
                problems.append(f"{b.metric} {value:.6g} is outside its bound {b.text} "
                                f"(limit {limit:.6g}: {against}, metric.bounds)")
        rows.append(row)
    return problems, rows


@dataclass
class ChecksResult:
    ok: bool
    status: str  # passed | failed | timeout | interrupted
    exit_code: Optional[int]
    wall_s: float
    log_path: str
    tail: str


def run_checks(cfg: Config, ws: Workspace, wt: Path, *, log_path: Path, marker: str,
               should_stop: Callable[[], bool] = lambda: False, sandbox: Optional[Sandbox] = None) -> ChecksResult:
    """Run `experiment.checks` in `wt` as its own process tree, confined like the experiment
    (`sandbox`: the session's; default one for this call); never raises for its failure."""
    log_path.unlink(missing_ok=True)
    env = experiment_env(cfg, cfg.experiment.seed, {"AUTORESEARCH_CHECKS": "1"})
    box = sandbox or Sandbox.for_project(cfg, ws)
    rd = box.new_run_dir([])
    try:
        wrap = box.wrap(worktree=ws.top_of(wt), cwd=wt, rd=rd, env=env, evaluation=False)
        res = run_tree(cfg.experiment.checks, cwd=wt, env=env, log_path=log_path,
                       timeout_s=cfg.experiment.checks_timeout_s, grace_s=cfg.experiment.grace_s, marker=marker,
                       should_stop=should_stop, wrap=wrap, log_max_bytes=log_cap(cfg))
    finally:
        rd.cleanup()
    status = (Status.INTERRUPTED if res.interrupted else Status.TIMEOUT if res.timed_out
              else "passed" if res.exit_code == 0 else "failed")
    return ChecksResult(status == "passed", status, res.exit_code, res.wall_s, str(log_path), read_tail(log_path))


def enforce(cfg: Config, ws: Workspace, exp: Experiment, incumbent: Optional[Experiment], *,
            should_stop: Callable[[], bool] = lambda: False, worktree: str = "run0",
            sandbox: Optional[Sandbox] = None, on_checks: Callable[[int], None] = lambda attempt: None) -> None:
    """Take a would-be `keep` through the guards; on a failure, set its status and reason.

    `incumbent` is what the candidate improves on (ignored for the baseline); `worktree`
    names the run worktree to check in (engines running several at once pass their own).
    `on_checks(attempt)` is called as each run of the checks starts (0: the first; display only).
    """
    if exp.status != Status.KEEP:
        return
    if exp.kind == Kind.BASELINE or (incumbent is not None and incumbent.id == exp.id):
        incumbent = None
    record: dict[str, Any] = {}
    exp.evidence = dict(exp.evidence or {}, guards=record)
    if cfg.metric.bounds:
        problems, record["bounds"] = check_bounds(cfg, exp.metrics, incumbent.metrics if incumbent else None)
        if problems:
            exp.status = Status.DISCARD
            exp.reason = f"{exp.reason}; but {'; '.join(problems)}" if exp.reason else "; ".join(problems)
            return
    if not cfg.experiment.checks.strip():
        return
    log = Path(exp.log_path) if exp.log_path else Layout(cfg.root).log(exp.tag, exp.id)
    attempts: list[dict[str, Any]] = []
    for attempt in range(cfg.experiment.checks_retries + 1):
        wt = ws.worktree(worktree, at=exp.commit)  # clean, at the candidate: outputs (and a failed try's) are gone
        name = ".checks.log" if attempt == 0 else f".checks.retry{attempt}.log"
        on_checks(attempt)
        res = run_checks(cfg, ws, wt, log_path=log.with_name(log.stem + name),
                         marker=f"{marker_prefix(cfg.root, exp.tag)}{exp.id}:checks{attempt or ''}",
                         should_stop=should_stop, sandbox=sandbox)
        attempts.append({"status": res.status, "exit_code": res.exit_code, "wall_s": round(res.wall_s, 3),
                         "log": res.log_path})
        if res.status != "failed":  # passed, interrupted, or a timeout (not retried: it would cost as much again)
            break
    record["checks"] = {"command": cfg.experiment.checks, "status": res.status, "exit_code": res.exit_code,
                        "wall_s": round(res.wall_s, 3), "log": res.log_path, "attempts": attempts}
    if res.ok:
        if len(attempts) > 1:  # a pass after a failure: kept, and said where people look
            first = attempts[0]
            record["checks"]["flaky"] = True
            note = (f"checks failed (exit {first['exit_code']}, see {first['log']}), then passed on retry "
                    f"{len(attempts) - 1}: flaky (experiment.checks_retries)")
            exp.reason = f"{exp.reason}; {note}" if exp.reason else note
        return
    if res.status == Status.INTERRUPTED:
        exp.status, exp.reason = Status.INTERRUPTED, "stopped by the user while the checks ran"
        return
    last = [ln.strip() for ln in res.tail.splitlines() if ln.strip()][-REASON_LINES:]
    what = (f"timed out after {cfg.experiment.checks_timeout_s:g}s (experiment.checks_timeout_s)"
            if res.status == Status.TIMEOUT else f"exited {res.exit_code}")
    exp.status = Status.CHECKS_FAILED
    tries = f"; it failed all {len(attempts)} attempts (experiment.checks_retries)" if len(attempts) > 1 else ""
    exp.reason = (f"checks `{cfg.experiment.checks}` {what}" + (f": {' | '.join(last)}"[:600] if last else "")
                  + f" (full output: {res.log_path}{tries})")
    if exp.kind == Kind.BASELINE:
        exp.reason += "; they fail at the starting point: fix the project or `experiment.checks` first"
    exp.log_tail = res.tail
