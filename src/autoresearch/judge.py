"""The judge: runs one experiment and says what happened, never raising for its failure.

Guarantees:
- The experiment runs as its own process tree (see procs.py) in the given worktree, with
  a scrubbed environment built from an allow-list (no API keys or other secrets unless
  the project names them in `experiment.env_allow`), plus AUTORESEARCH_BUDGET_S,
  AUTORESEARCH_SEED, AUTORESEARCH_TAG and AUTORESEARCH_EXPERIMENT.
- At `timeout_s` the whole tree gets SIGTERM, then SIGKILL after `grace_s`.
- Every protected file is hashed before and after against the digests the run started
  with; any difference is a `violation`, and the file is restored.
- The metric is the last `NAME: VALUE` (or `METRIC NAME=VALUE`, or `metric.pattern`)
  in the log; NaN/inf or no metric is a `crash`.
- The result's status is one of: ok (a measurement the policy will judge), crash,
  timeout, violation, interrupted. Failures of the experiment are data.
"""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .config import Config
from .procs import run_tree
from .workspace import Workspace

ENV_ALLOW = (
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TERM", "TZ", "TMPDIR",
    "VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_DEFAULT_ENV", "PYTHONPATH",
    "CUDA_VISIBLE_DEVICES", "CUDA_HOME", "CUDA_PATH", "LD_LIBRARY_PATH", "HIP_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
    "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "TORCH_HOME", "HF_HOME", "XDG_CACHE_HOME",
    "AUTORESEARCH_CACHE",
)
ENV_ALLOW_PREFIXES = ("LC_", "NVIDIA_", "UV_")
_NUMBER = r"([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|inf(?:inity)?))"
TAIL_LINES = 50


@dataclass
class Measurement:
    status: str  # ok | crash | timeout | violation | interrupted
    reason: str = ""
    exit_code: Optional[int] = None
    wall_s: float = 0.0
    metric: Optional[float] = None
    metrics: dict[str, float] = field(default_factory=dict)
    peak_mem_mb: Optional[float] = None
    log_tail: str = ""
    pid: Optional[int] = None


def experiment_env(cfg: Config, seed: int, extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    allow = set(ENV_ALLOW) | set(cfg.experiment.env_allow)
    env = {k: v for k, v in os.environ.items() if k in allow or k.startswith(ENV_ALLOW_PREFIXES)}
    # `python` in the run command means the interpreter the harness runs under.
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.setdefault("HOME", str(Path.home()))
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no __pycache__ in the worktree
    env.update(cfg.experiment.env)
    env["AUTORESEARCH_BUDGET_S"] = f"{cfg.experiment.budget_s:g}"
    env["AUTORESEARCH_SEED"] = str(seed)
    env.update(extra or {})
    return env


def judge(
    cfg: Config,
    ws: Workspace,
    wt: Path,
    *,
    seed: int,
    log_path: Path,
    marker: str,
    protected_digests: dict[str, str],
    restore_from: str,
    env_extra: Optional[dict[str, str]] = None,
    should_stop: Callable[[], bool] = lambda: False,
    on_start: Callable[[int], None] = lambda pid: None,
    on_tick: Callable[[float], None] = lambda elapsed: None,
    wrap: Optional[list[str]] = None,
) -> Measurement:
    """Run the experiment checked out in `wt`; `restore_from` is the commit whose protected files are the truth."""
    before = ws.digests(wt, cfg.experiment.protected)
    tampered = _differences(protected_digests, before)
    if tampered:
        ws.restore(wt, tampered, restore_from)
        return Measurement("violation", f"protected file(s) differ before the run: {', '.join(tampered)}")
    env = experiment_env(cfg, seed, env_extra)
    res = run_tree(
        cfg.experiment.run, cwd=wt, env=env, log_path=log_path, timeout_s=cfg.timeout_s,
        grace_s=cfg.experiment.grace_s, marker=marker, should_stop=should_stop, on_start=on_start,
        on_tick=on_tick, wrap=wrap,
    )
    tail = read_tail(log_path)
    text = _read_end(log_path)
    metric = parse_metric(text, cfg.metric.name, cfg.metric.pattern)
    metrics = {name: v for name in _secondary(cfg) if (v := parse_metric(text, name)) is not None}
    mem = metrics.get(cfg.metric.memory) if cfg.metric.memory else None
    m = Measurement("ok", exit_code=res.exit_code, wall_s=res.wall_s, metric=metric, metrics=metrics,
                    peak_mem_mb=mem if mem is not None else (res.peak_rss_mb or None), log_tail=tail, pid=res.pid)
    after = ws.digests(wt, cfg.experiment.protected)
    tampered = _differences(protected_digests, after)
    if tampered:
        ws.restore(wt, tampered, restore_from)
        m.status, m.reason = "violation", f"the run changed protected file(s): {', '.join(tampered)} (restored)"
    elif res.interrupted:
        m.status, m.reason = "interrupted", "stopped by the user"
    elif res.timed_out:
        m.status, m.reason = "timeout", f"killed after {cfg.timeout_s:g}s (experiment.timeout_s)"
    elif res.exit_code != 0:
        m.status, m.reason = "crash", f"exit code {res.exit_code}"
    elif metric is None:
        m.status, m.reason = "crash", f"no `{cfg.metric.name}:` line in the log"
    elif not math.isfinite(metric):
        m.status, m.reason = "crash", f"{cfg.metric.name} is {metric}"
    if m.status != "ok":
        m.metric = None  # a crashed, killed or tampered run has no trustworthy metric
    return m


def _secondary(cfg: Config) -> list[str]:
    names = list(cfg.metric.record)
    if cfg.metric.memory and cfg.metric.memory not in names:
        names.append(cfg.metric.memory)
    return names


def _differences(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    return sorted(p for p in set(expected) | set(actual) if expected.get(p) != actual.get(p))


def parse_metric(text: str, name: str, pattern: str = "") -> Optional[float]:
    """The last value of metric `name` in `text`, or None."""
    if pattern:
        rx = re.compile(pattern, re.MULTILINE)
    else:
        n = re.escape(name)
        rx = re.compile(rf"^\s*(?:METRIC\s+{n}\s*=|{n}\s*[:=])\s*{_NUMBER}\s*$", re.MULTILINE | re.IGNORECASE)
    found = rx.findall(text)
    if not found:
        return None
    last = found[-1]
    if isinstance(last, tuple):
        last = last[0]
    try:
        return float(last)
    except ValueError:
        return None


def _read_end(path: Path, limit: int = 1 << 20) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def read_tail(path: Path, lines: int = TAIL_LINES, max_chars: int = 8000) -> str:
    tail = "\n".join(_read_end(path, 256 * 1024).splitlines()[-lines:])
    return tail[-max_chars:]
