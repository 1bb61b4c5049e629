"""The judge: runs one experiment and says what happened, never raising for its failure.

Guarantees:
- The experiment runs as its own process tree (see procs.py) in the given worktree, with
  a scrubbed environment built from an allow-list (no API keys or other secrets unless
  the project names them in `experiment.env_allow`), plus AUTORESEARCH_BUDGET_S,
  AUTORESEARCH_SEED, AUTORESEARCH_TAG and AUTORESEARCH_EXPERIMENT.
- At `timeout_s` the whole tree gets SIGTERM, then SIGKILL after `grace_s`.
- Every protected file is hashed before and after against the digests the run started
  with; any difference is a `violation`, and the file is restored.
- A candidate's patch is reviewed first (integrity.review): a hack with a clear signature
  is a `violation`, a no-op or seed-only change a `discard`; neither runs.
- The run is confined by the session's Sandbox (sandbox.py: bubblewrap when usable) and
  gets AUTORESEARCH_CHECKPOINT, a path in a harness-owned temp folder outside the
  worktree where it may save its artefact. `experiment.hidden` data is replaced by decoys
  (or, without bwrap, watched); opening it is a `violation` and stops the run at once. Any
  change to hidden or `experiment.data` files since the session's first run, and a wall
  time past budget_s + `experiment.overhead_s`, are violations too.
- The metric channel: with `metric.command` set, the judge runs that protected evaluation
  after the run's whole process tree is dead, as its own process tree (own log
  `<id>.eval.log`, own `metric.timeout_s`), sandboxed (its own PID namespace, hidden data
  visible, nothing writable) in its *own* fresh checkout of the commit (workspace:
  `evaluation_worktree`, reset and `git clean -ffdx`), never in the run's worktree: nothing
  the run wrote there (a planted `argparse.py`) exists where the evaluation runs. The run hands
  over only its artefact folder, hashed (`artifact_digest`: paths, modes, contents) when the
  run ends and verified right before the evaluation starts; a change in between is a
  `violation`, and the digest is `Measurement.artifact_sha256`. The evaluation's interpreter
  is isolated (`evaluation_env`): PYTHONSAFEPATH=1 (no script folder on sys.path, Python
  3.11+), PYTHONNOUSERSITE=1, and no PYTHONPATH, PYTHONSTARTUP, PYTHONHOME or other PYTHON*
  setting of the user's. AUTORESEARCH_EVAL_SECRET (the project's secret) is in its env only:
  never in the run's, the setup's or the checks'. Only its output counts: a metric line
  printed by the run is ignored. A line `violation: <why>` in its output makes the run a
  `violation`.
- Logs (run, evaluation, setup) are capped at `experiment.log_max_mb` (head and tail kept,
  procs.LogCap); `Measurement.log_bytes` is what the run wrote in all.
- Without `metric.command`, the metric is the last `NAME: VALUE` (or `METRIC NAME=VALUE`,
  or `metric.pattern`) in the run's log. NaN/inf or no metric is a `crash`.
- The result's status is one of: ok (a measurement the policy will judge), crash,
  timeout, violation, interrupted, or discard (the review refused to run a non-change).
  Failures of the experiment are data.

Not covered: on Python 3.10 (no PYTHONSAFEPATH) the evaluator's folder is still first on
sys.path; that folder is a fresh checkout, so only a committed editable file named like a
module the evaluator imports could shadow it. Without bubblewrap the evaluation is not in
its own PID namespace, and a process that escaped the run's kill (setsid and a scrubbed
environment) could still write the checkout between its reset and the start, or the
artefact during the evaluation (the digest is checked before it starts). An evaluation
command that imports the candidate's code runs that code in the evaluation's process, where
it can print a metric line of its own; integrity.review flags the known ways. The GPT
template's evaluation does not: it runs train.py's model in a child process that only
returns logits and shows its output prefixed. docs/integrity.md lists the rest.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from . import integrity
from .config import Config
from .errors import AutoresearchError
from .layout import Layout
from .procs import run_tree
from .sandbox import Sandbox, resolve_paths
from .states import OK, Status
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
    status: str  # states.OK or a failed states.Status (crash, timeout, violation, interrupted)
    reason: str = ""
    exit_code: Optional[int] = None
    wall_s: float = 0.0
    metric: Optional[float] = None
    metrics: dict[str, float] = field(default_factory=dict)
    peak_mem_mb: Optional[float] = None
    log_tail: str = ""
    pid: Optional[int] = None
    eval_log: str = ""
    artifact_sha256: str = ""  # the run's artefact folder as the evaluation got it (metric.command only)
    log_bytes: int = 0  # what the run wrote to its log, the part the cap dropped included
    load: dict = field(default_factory=dict)  # the machine's load around the run (procs.ProcResult.load)


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
    on_evaluate: Callable[[], None] = lambda: None,
    wrap: Optional[list[str]] = None,
    parent: Optional[str] = None,
    sandbox: Optional[Sandbox] = None,
) -> Measurement:
    """Run the experiment checked out in `wt`; `restore_from` is the commit whose protected files are the truth.

    `parent`: the candidate's parent commit; its patch is reviewed (integrity.review) before anything runs.
    `sandbox`: the session's Sandbox (default: one for this call); `wrap` overrides its argv prefix.
    `on_evaluate()` is called when the run is over and `metric.command`'s evaluation starts (display only).
    """
    commit = ws.head_of(wt)  # what the evaluation checks out: an unsandboxed run could move its HEAD
    before = ws.digests(wt, cfg.experiment.protected)
    tampered = _differences(protected_digests, before)
    if tampered:
        ws.restore(wt, tampered, restore_from)
        return Measurement(Status.VIOLATION, f"protected file(s) differ before the run: {', '.join(tampered)}")
    if parent:
        found = integrity.review(cfg, ws, parent, commit)
        if found:
            return Measurement(*found)
    box = sandbox or Sandbox.for_project(cfg, ws)
    env = experiment_env(cfg, seed, env_extra)
    run_setup(cfg, box, wt, env, log_path.parent / "setup.log", marker)
    hidden = resolve_paths(cfg.experiment.hidden, cfg.root, env)
    data = resolve_paths(cfg.experiment.data, cfg.root, env)
    secret = integrity.secret(cfg.root) if cfg.metric.command else ""  # read before the tripwire is armed
    rd = box.new_run_dir(hidden)
    try:
        env |= {"AUTORESEARCH_ARTIFACTS": str(rd.artifacts), "AUTORESEARCH_CHECKPOINT": str(rd.artifacts / "checkpoint")}
        if cfg.metric.command:
            env["AUTORESEARCH_EXTERNAL_EVAL"] = "1"  # the harness evaluates: the run need not (and cannot)
        top = ws.top_of(wt)
        if wrap is None:
            wrap = box.wrap(worktree=top, cwd=wt, rd=rd, env=env, evaluation=False, readable=hidden + data)
        watch = list(rd.decoys.values()) if rd.decoys else hidden + (
            [Layout(cfg.root).eval_secret] if secret else [])
        prints = integrity.fingerprint(hidden + data)
        if box.data_prints is None:
            box.data_prints = prints  # the session's reference: data may not change while it runs
        elif moved := integrity.changed_files(box.data_prints, prints):
            return Measurement(Status.VIOLATION, f"data changed since the session started: {', '.join(moved[:3])} "
                                            "(restore it, then start again)")
        with integrity.Tripwire(watch) as wire:
            res = run_tree(
                cfg.experiment.run, cwd=wt, env=env, log_path=log_path, timeout_s=cfg.timeout_s,
                grace_s=cfg.experiment.grace_s, marker=marker, on_start=on_start, on_tick=on_tick, wrap=wrap,
                should_stop=lambda: should_stop() or wire.tripped(),  # caught reading hidden data: stop it now
                log_max_bytes=log_cap(cfg),
            )
        text = read_end(log_path)
        metrics = {name: v for name in _secondary(cfg) if (v := parse_metric(text, name)) is not None}
        mem = metrics.get(cfg.metric.memory) if cfg.metric.memory else None
        m = Measurement(OK, exit_code=res.exit_code, wall_s=res.wall_s, metrics=metrics,
                        peak_mem_mb=mem if mem is not None else (res.peak_rss_mb or None), log_tail=read_tail(log_path),
                        pid=res.pid, log_bytes=res.log_bytes, load=res.load())
        real = {decoy: path for path, decoy in rd.decoys.items()}  # report the hidden path, not its decoy
        hits = [real.get(p) or (real[p.parent] / p.name if p.parent in real else p) for p in wire.hits]
        m.status, m.reason = _run_status(cfg, res, hits)
        if m.status == OK and cfg.metric.command:
            # The run's tree is dead (run_tree returns after killing it): freeze what it handed over.
            try:
                m.artifact_sha256 = artifact_digest(rd.artifacts)
            except ArtifactTooDeep as e:
                m.status, m.reason = Status.VIOLATION, str(e)
        if m.status == OK and cfg.metric.command:
            ewt = evaluation_checkout(ws, wt, commit)
            try:
                now = artifact_digest(rd.artifacts)
            except ArtifactTooDeep:
                now = "deeper than allowed"  # it was not at the run's end: changed since
            if now != m.artifact_sha256 and VERIFY_ARTIFACTS:
                m.status, m.reason = Status.VIOLATION, (f"the artefact changed between the run's end and the "
                                                        f"evaluation (sha256 {m.artifact_sha256[:12]} -> {now[:12]}): "
                                                        "something the run left behind kept writing it")
            else:
                eval_env = evaluation_env(env, secret)
                eval_wrap = box.wrap(worktree=ws.top_of(ewt), cwd=ewt, rd=rd, env=eval_env, evaluation=True,
                                     readable=hidden + data)
                on_evaluate()
                _evaluate(cfg, m, ewt, eval_env, eval_wrap, log_path, marker, should_stop)
        elif m.status == OK:
            m.metric = parse_metric(text, cfg.metric.name, cfg.metric.pattern)
            m.status, m.reason = _metric_status(cfg, m.metric, "the log")
        changed = integrity.changed_files(box.data_prints, integrity.fingerprint(hidden + data))
        if changed:
            m.status, m.reason = Status.VIOLATION, f"data changed during the run: {', '.join(changed[:3])}"
    finally:
        rd.cleanup()
    tampered = _differences(protected_digests, ws.digests(wt, cfg.experiment.protected))
    if tampered:
        ws.restore(wt, tampered, restore_from)
        m.status, m.reason = Status.VIOLATION, f"the run changed protected file(s): {', '.join(tampered)} (restored)"
    if m.status != OK:
        m.metric = None  # a crashed, killed or tampered run has no trustworthy metric
    return m


VERIFY_ARTIFACTS = True  # tests switch it off to show the attack it stops
# Interpreter settings the evaluation keeps; every other PYTHON* variable (PYTHONPATH, PYTHONSTARTUP,
# PYTHONHOME, PYTHONUSERBASE, PYTHONINSPECT, ...) could put code of someone else's in its process.
EVAL_PYTHON_KEEP = ("PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONIOENCODING", "PYTHONUTF8",
                    "PYTHONHASHSEED", "PYTHONFAULTHANDLER")


def evaluation_env(run_env: dict[str, str], secret: str) -> dict[str, str]:
    """The evaluation's environment: the run's, with an isolated interpreter and the secret.

    PYTHONSAFEPATH keeps the script's folder off sys.path, so nothing there can shadow the stdlib or
    site-packages; an evaluator that imports its siblings loads them by path (the GPT template's
    prepare.py does) or appends its own folder at the *end* of sys.path. PYTHONNOUSERSITE keeps the
    user's site-packages out."""
    env = {k: v for k, v in run_env.items()
           if k != "AUTORESEARCH_EXTERNAL_EVAL" and (not k.startswith("PYTHON") or k in EVAL_PYTHON_KEEP)}
    env |= {"PYTHONSAFEPATH": "1", "PYTHONNOUSERSITE": "1", "AUTORESEARCH_EVAL_SECRET": secret}
    return env


def evaluation_checkout(ws: Workspace, wt: Path, commit: str) -> Path:
    """The evaluation's own fresh checkout of `commit`, beside run worktree `wt` (a seam for the tests)."""
    return ws.evaluation_worktree(wt, commit)


ARTIFACT_MAX_DEPTH = 64  # folders below the artefact folder; deeper is refused (a checkpoint needs a few)


class ArtifactTooDeep(Exception):
    """The run nested its artefact folder deeper than ARTIFACT_MAX_DEPTH: not hashed, not evaluated."""


def artifact_digest(folder: Path) -> str:
    """sha256 over the sorted manifest of everything under `folder`: relative path, mode, and content
    (a file's sha256, a symlink's target), so any change to what the run handed over shows. Walked
    with an explicit stack (a run can nest folders thousands deep for free: os.walk recursed into a
    RecursionError); deeper than ARTIFACT_MAX_DEPTH raises ArtifactTooDeep."""
    entries = []
    stack = [(Path(folder), 0)]
    while stack:
        here, depth = stack.pop()
        for entry in sorted(os.scandir(here), key=lambda e: e.name):
            path = Path(entry.path)
            st = entry.stat(follow_symlinks=False)
            rel = path.relative_to(folder).as_posix()
            if stat.S_ISLNK(st.st_mode):
                content = "link:" + os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                content = h.hexdigest()
            elif stat.S_ISDIR(st.st_mode):
                if depth >= ARTIFACT_MAX_DEPTH:
                    raise ArtifactTooDeep(f"the artefact folder is nested deeper than {ARTIFACT_MAX_DEPTH} "
                                          f"folders ({rel[:200]}...)")
                stack.append((path, depth + 1))
                content = "dir"
            else:
                content = f"special:{stat.S_IFMT(st.st_mode)}"
            entries.append(f"{rel}\0{st.st_mode:o}\0{content}")
    return hashlib.sha256("\n".join(sorted(entries)).encode("utf-8", "surrogateescape")).hexdigest()


def log_cap(cfg: Config) -> int:
    """experiment.log_max_mb in bytes."""
    return int(cfg.experiment.log_max_mb * 2**20)


def _run_status(cfg: Config, res, hidden_hits: list[Path]) -> tuple[str, str]:
    budget, overhead = cfg.experiment.budget_s, cfg.experiment.overhead_s
    if hidden_hits:
        return Status.VIOLATION, f"the run opened hidden data: {', '.join(map(str, hidden_hits[:3]))}"
    if res.interrupted:
        return Status.INTERRUPTED, "stopped by the user"
    if res.timed_out:
        return Status.TIMEOUT, f"killed after {cfg.timeout_s:g}s (experiment.timeout_s)"
    if overhead is not None and res.wall_s > budget + overhead:
        return Status.VIOLATION, (f"ran {res.wall_s:.1f}s, past budget_s {budget:g} + overhead_s {overhead:g}: "
                                  "it trained beyond its budget (a stretched or ignored clock)")
    if res.exit_code != 0:
        return Status.CRASH, f"exit code {res.exit_code}"
    return OK, ""


def _metric_status(cfg: Config, metric: Optional[float], where: str) -> tuple[str, str]:
    if metric is None:
        return Status.CRASH, f"no `{cfg.metric.name}:` line in {where}"
    if not math.isfinite(metric):
        return Status.CRASH, f"{cfg.metric.name} is {metric}"
    return OK, ""


def _evaluate(cfg: Config, m: Measurement, wt: Path, env: dict[str, str], wrap: Optional[list[str]],
              log_path: Path, marker: str, should_stop: Callable[[], bool]) -> None:
    """The judge's channel: the protected evaluation command, its own process tree, log and timeout."""
    log = log_path.with_name(log_path.name[:-len(log_path.suffix)] + ".eval.log" if log_path.suffix else
                             log_path.name + ".eval")
    log.unlink(missing_ok=True)
    m.eval_log = str(log)
    res = run_tree(cfg.metric.command, cwd=wt, env=env, log_path=log, timeout_s=cfg.metric.timeout_s,
                   grace_s=cfg.experiment.grace_s, marker=f"{marker}:eval", should_stop=should_stop, wrap=wrap,
                   log_max_bytes=log_cap(cfg))
    text = read_end(log)
    m.log_tail = (m.log_tail + f"\n--- evaluation ({log.name}) ---\n" + read_tail(log, 20)).strip()
    m.metrics.update({n: v for n in _secondary(cfg) if (v := parse_metric(text, n)) is not None})
    flagged = re.findall(r"^\s*violation:\s*(.+)$", text, re.MULTILINE | re.IGNORECASE)
    if flagged:
        m.status, m.reason = Status.VIOLATION, f"the evaluation found: {flagged[-1].strip()[:300]}"
    elif res.interrupted:
        m.status, m.reason = Status.INTERRUPTED, "stopped by the user during the evaluation"
    elif res.timed_out:
        m.status, m.reason = (Status.TIMEOUT,
                              f"the evaluation was killed after {cfg.metric.timeout_s:g}s (metric.timeout_s)")
    elif res.exit_code != 0:
        m.status, m.reason = Status.CRASH, f"the evaluation exited {res.exit_code} (see {log.name})"
    else:
        m.metric = parse_metric(text, cfg.metric.name, cfg.metric.pattern)
        m.status, m.reason = _metric_status(cfg, m.metric, f"the evaluation's output ({log.name})")


def run_setup(cfg: Config, box: Sandbox, wt: Path, env: dict[str, str], log: Path, marker: str) -> None:
    """`experiment.setup` (protected code, just verified) once per session, before the first run."""
    if not cfg.experiment.setup or box.setup_done:
        return
    log.unlink(missing_ok=True)
    res = run_tree(cfg.experiment.setup, cwd=wt, env=env, log_path=log, timeout_s=cfg.experiment.setup_timeout_s,
                   grace_s=cfg.experiment.grace_s, marker=f"{marker}:setup", log_max_bytes=log_cap(cfg))
    if res.exit_code != 0 or res.timed_out:
        raise AutoresearchError(f"`experiment.setup` ({cfg.experiment.setup}) failed "
                                f"({'timed out' if res.timed_out else f'exit code {res.exit_code}'}): see {log}")
    box.setup_done = True


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
    found = rx.findall(text.replace("\r", "\n"))  # a progress bar drawn with \r ends a line too
    if not found:
        return None
    last = found[-1]
    if isinstance(last, tuple):
        last = last[0]
    try:
        return float(last)
    except ValueError:
        return None


def read_end(path: Path, limit: int = 1 << 20) -> str:
    """The last `limit` bytes of a log as text (a log can be huge; metrics are at its end)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def read_tail(path: Path, lines: int = TAIL_LINES, max_chars: int = 8000) -> str:
    tail = "\n".join(read_end(path, 256 * 1024).splitlines()[-lines:])
    return tail[-max_chars:]
