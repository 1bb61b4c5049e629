"""`autoresearch init --here`: make the git repository you are in a research project.

Guarantees:
- Never overwrites: an existing autoresearch.toml is refused; program.md is written only
  when missing. Nothing is written until every answer has passed its check.
- Each answer is checked: each pattern must match files committed at HEAD (the loop runs
  experiments in worktrees of commits, so an uncommitted file would not be there; a
  pattern matching nothing is refused naming it and, when there is one, the pattern
  probably meant), and the files each pattern matches are shown; the
  editable and protected sets must not overlap, the direction is min or max, the budget
  is positive, and the resulting autoresearch.toml passes the real config loader.
- The run command is run once the way the loop will run it (judge.py): in a worktree of
  HEAD under `.autoresearch/`, as its own process tree, in the sandbox, with the scrubbed
  environment and AUTORESEARCH_BUDGET_S. It must exit 0 and print the metric; otherwise
  the error quotes the end of its output and names the metrics it did print. A `--checks`
  command must pass there too (a failure is run again, as the loop does: checks_retries).
- A metric named as a time to make smaller (`time_ms`, `latency_us`: is_timing) gets
  `metric.noise = "relative"`, so the default policy pairs its would-be keeps (pairing.py);
  the run says so.
- Only the new files are committed (`git commit -- <them>`); anything else staged or
  modified stays as it was.
- With stdin a terminal, a missing answer is asked for, and a failed one asked again;
  otherwise every missing required flag is named in one error.

Not covered: a run that needs files git does not have (downloaded data, a local venv)
fails here exactly as it would in the loop: the error says so.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .config import CONFIG_NAME, describe_patterns, load, matching_files, unmatched_hint
from .errors import AutoresearchError, ConfigError
from .globs import matches
from .layout import Layout
from .states import OK
from .workspace import Git, Workspace, find_root

Ask = Callable[[str, str], str]  # (question, default) -> answer
TAG = "init-here"
TRIES = 5


@dataclass
class Answers:
    run: Optional[str] = None
    editable: list[str] = field(default_factory=list)
    protected: list[str] = field(default_factory=list)
    metric: Optional[str] = None
    direction: Optional[str] = None
    budget: Optional[float] = None
    checks: Optional[str] = None


@dataclass
class Done:
    files: list[str]
    commit: str
    metric_value: float
    wall_s: float


def tty_ask(question: str, default: str) -> str:
    answer = input(f"{question}{f' [{default}]' if default else ''}: ").strip()
    return answer or default


def init_here(root: Path, answers: Answers, ask: Optional[Ask] = None, say: Callable[[str], None] = print) -> Done:
    """Write, validate by running, and commit autoresearch.toml (+ program.md) in `root`."""
    root = Path(root).resolve()
    top = find_root(root)
    git = Git(top)
    if not git.ok("rev-parse", "--verify", "HEAD"):
        raise AutoresearchError(f"{top} has no commit yet: commit your project first (git add -A && git commit -m start)")
    if (root / CONFIG_NAME).exists():
        raise AutoresearchError(f"{root / CONFIG_NAME} already exists: refusing to overwrite it; edit it by hand, "
                                f"or delete it and run `autoresearch init --here` again")
    ws = Workspace(root, TAG)
    committed = _committed_files(git, ws.prefix)
    a = _complete(answers, committed, ask)
    for line in describe_patterns(a.editable, a.protected, committed):
        say(f"autoresearch: {line}")
    if is_timing(a.metric, a.direction):
        say(f"autoresearch: {a.metric} reads as a timing: metric.noise = \"relative\", so each would-be keep is "
            "judged against the best re-run side by side (a machine's load drifts); remove that line from "
            "autoresearch.toml if it is not a time")
    head = git("rev-parse", "HEAD")
    dirty = ws.dirty_tracked()
    if dirty:
        say(f"autoresearch: note: uncommitted changes to {', '.join(dirty[:3])} are not part of the check (it runs "
            "HEAD, as the loop will): commit them before `autoresearch run`")
    for attempt in range(1, TRIES + 1):
        say(f"autoresearch: running `{a.run}` once at {head[:7]} to check it (budget {a.budget:g}s) ...")
        try:
            value, wall = _validate(ws, head, a, _toml(a), _program(a), say)
            break
        except _RunFailed as e:
            if ask is None or attempt == TRIES:
                raise AutoresearchError(str(e)) from None
            say(f"autoresearch: {e}")
            if e.what == "checks":
                a.checks = _ask_until(ask, "A guard command that must pass (Enter for none)", "", lambda v: "")
                continue
            a.run = _ask_until(ask, "Command that runs one experiment", a.run, _nonempty)
            a.metric = _ask_until(ask, "Name of the metric it prints as `name: value`", a.metric, _metric_name)
    written = [CONFIG_NAME] + ([] if (root / "program.md").exists() else ["program.md"])
    (root / CONFIG_NAME).write_text(_toml(a), encoding="utf-8")
    if "program.md" in written:
        (root / "program.md").write_text(_program(a), encoding="utf-8")
    try:
        load(root)
    except ConfigError:  # pragma: no cover - the same file already loaded in the worktree
        for rel in written:
            (root / rel).unlink(missing_ok=True)
        raise
    full = [ws.repo_path(rel) for rel in written]
    git("add", "--", *full)
    git("commit", "-q", "-m", f"autoresearch: init --here ({', '.join(written)})", "--", *full)
    return Done(written, git("rev-parse", "HEAD"), value, wall)


# -- the answers ------------------------------------------------------------------------
def _complete(a: Answers, committed: list[str], ask: Optional[Ask]) -> Answers:
    """Fill in missing answers (asking, or refusing) and check every one."""
    required = {"run": "--run", "editable": "--editable", "metric": "--metric", "direction": "--direction"}
    if ask is None:
        missing = [flag for key, flag in required.items() if not getattr(a, key)]
        if missing:
            raise AutoresearchError(f"init --here needs {', '.join(missing)} (stdin is not a terminal, so it cannot ask): "
                                    "e.g. autoresearch init --here --run 'python train.py' --editable train.py "
                                    "--metric val_loss --direction min")
        _check_or_raise(_nonempty, a.run, "--run")
        _check_or_raise(lambda v: _unmatched(v, committed) or _globs(v, committed), a.editable, "--editable")
        _check_or_raise(lambda v: _unmatched(v, committed) or _globs(v, committed, a.editable), a.protected,
                        "--protected")
        _check_or_raise(_metric_name, a.metric, "--metric")
        _check_or_raise(_direction, a.direction, "--direction")
        a.budget = 300.0 if a.budget is None else a.budget
        _check_or_raise(_budget, a.budget, "--budget")
        return a
    say_files = ", ".join(committed[:12]) + (" ..." if len(committed) > 12 else "")
    if not a.run or _nonempty(a.run):
        a.run = _ask_until(ask, "Command that runs one experiment (it must print the metric)", a.run or "", _nonempty)
    if not a.editable or _unmatched(a.editable, committed) or _globs(a.editable, committed):
        a.editable = _split(_ask_until(ask, f"Files the agent may change, as globs (committed: {say_files})",
                                       " ".join(a.editable),
                                       lambda v: _unmatched(_split(v), committed) or _globs(_split(v), committed)))
    if a.protected and _globs(a.protected, committed, a.editable):
        a.protected = []
    if not a.protected:
        a.protected = _split(_ask_until(ask, "Files that must never change: the evaluation, the data (globs; "
                                             "Enter for none)", "",
                                        lambda v: _unmatched(_split(v), committed)
                                        or _globs(_split(v), committed, a.editable)))
    if not a.metric or _metric_name(a.metric):
        a.metric = _ask_until(ask, "Name of the metric the run prints as `name: value`", a.metric or "", _metric_name)
    if not a.direction or _direction(a.direction):
        a.direction = _ask_until(ask, "Is lower or higher better? (min or max)", a.direction or "", _direction)
    if a.budget is None or _budget(a.budget):
        a.budget = float(_ask_until(ask, "Time budget of one experiment, in seconds", "300",
                                    lambda v: _budget(_number(v))))
    if a.checks is None:
        a.checks = _ask_until(ask, "A guard command that must pass before a change is kept, e.g. the tests "
                                   "(Enter for none)", "", lambda v: "")
    return a


def _ask_until(ask: Ask, question: str, default: str, check: Callable[[str], str]) -> str:
    for _ in range(TRIES):
        answer = ask(question, default)
        problem = check(answer)
        if not problem:
            return answer
        print(f"  {problem}")  # to the terminal that asked
    raise AutoresearchError(f"no usable answer to {question!r} after {TRIES} tries")


def _check_or_raise(check: Callable, value, flag: str) -> None:
    problem = check(value)
    if problem:
        raise AutoresearchError(f"{flag}: {problem}")


def _nonempty(v: str) -> str:
    return "" if v and v.strip() else "the command is empty: give the shell command of one experiment"


def _metric_name(v: str) -> str:
    return "" if v and re.fullmatch(r"[A-Za-z_][\w.\-/]*", v) else \
        f"{v!r} is not a metric name: letters, digits and _ . - / (e.g. val_loss)"


def _direction(v: str) -> str:
    return "" if v in ("min", "max") else f"{v!r} is not a direction: min (lower is better) or max (higher is better)"


def _budget(v: Optional[float]) -> str:
    return "" if v is not None and v > 0 else "the budget must be a positive number of seconds, e.g. 300"


def _number(v: str) -> Optional[float]:
    try:
        return float(v)
    except ValueError:
        return None


def _split(v: str) -> list[str]:
    return [p for p in re.split(r"[\s,]+", v.strip()) if p]


def _globs(globs: list[str], committed: list[str], other: Optional[list[str]] = None) -> str:
    for g in globs:
        if not any(matches(f, [g]) for f in committed):
            return (f"{g!r} matches no file committed at HEAD: the loop runs commits, so commit the file first "
                    f"(git add {shlex.quote(g)} && git commit) or fix the glob")
    both = [f for f in committed if other and matches(f, globs) and matches(f, other)]
    return f"{both[0]} would be both editable and protected: leave it out of one of them" if both else ""


def _unmatched(patterns: list[str], committed: list[str]) -> str:
    """The problem with the first pattern that matches no committed file, with the fix; '' if none."""
    for g in patterns:
        if not matching_files(g, committed):
            return (f"{g!r} matches no file committed at HEAD{unmatched_hint(g, committed)}; fix the pattern, "
                    "or if the file is new, commit it first (the loop runs commits): git add <file> && git commit")
    return ""


def _committed_files(git: Git, prefix: str) -> list[str]:
    out = git("ls-tree", "-r", "--name-only", "HEAD", "--", prefix or ".", strip=False).splitlines()
    return [p[len(prefix) + 1:] if prefix else p for p in out if p]


# -- the files ---------------------------------------------------------------------------
def _toml(a: Answers) -> str:
    q = _toml_str
    lines = ["# Written by `autoresearch init --here`; every key is explained in the README.", "[experiment]",
             f"run = {q(a.run)}", f"budget_s = {a.budget:g}", f"editable = [{', '.join(map(q, a.editable))}]",
             f"protected = [{', '.join(map(q, a.protected))}]"]
    if a.checks:
        lines.append(f"checks = {q(a.checks)}")
    lines += ["", "[metric]", f"name = {q(a.metric)}", f"direction = {q(a.direction)}"]
    if is_timing(a.metric, a.direction):
        lines.append('noise = "relative"  # a timing: judged by ratio, against the incumbent re-run side by side')
    return "\n".join(lines + [""])


TIMING_WORDS = frozenset({"ms", "us", "ns", "s", "sec", "secs", "seconds", "time", "latency", "duration", "elapsed",
                          "runtime", "wall"})


def is_timing(metric: str, direction: str) -> bool:
    """Whether the metric reads as a time to make smaller (`time_ms`, `latency_us`, `wall_seconds`): then
    autoresearch.toml gets `metric.noise = "relative"`, which makes the default policy judge each would-be
    keep against the incumbent re-run side by side (a machine's load drifts; pairing.py), as the perf
    template does. A word of the name split at `_`, `-`, `.`; never for a metric to make larger."""
    return direction == "min" and bool(TIMING_WORDS & set(re.split(r"[_.\-]+", metric.lower())))


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _program(a: Answers) -> str:
    better = "lower" if a.direction == "min" else "higher"
    rules = [f"- Change only {', '.join(f'`{g}`' for g in a.editable)}."]
    if a.protected:
        rules.append(f"- Never change {', '.join(f'`{g}`' for g in a.protected)} (the harness refuses it anyway).")
    rules.append(f"- Each experiment gets {a.budget:g} s (AUTORESEARCH_BUDGET_S); the run must stop itself.")
    if a.checks:
        rules.append(f"- A change is kept only if `{a.checks}` passes.")
    rules.append("- Simpler is better: an equal result with less code is an improvement.")
    return (f"# Research program\n\nGoal: a {better} `{a.metric}`, printed by `{a.run}` as `{a.metric}: <value>`.\n\n"
            + "\n".join(rules) + "\n\nSay here, in plain English, what to try, what to avoid and why.\n")


# -- the validation run ------------------------------------------------------------------
class _RunFailed(Exception):
    def __init__(self, message: str, what: str = "run"):
        super().__init__(message)
        self.what = what  # "run" or "checks": which answer to ask again


def _validate(ws: Workspace, head: str, a: Answers, toml: str, program: str,
              say: Callable[[str], None]) -> tuple[float, float]:
    """Run the command (and the checks) once in a worktree of HEAD; (metric value, wall s)."""
    from .guards import run_checks
    from .judge import judge
    from .session import marker_prefix

    ws.ignore_outputs()
    wt = ws.worktree("validate", at=head)
    logs = Layout(ws.root).logs(TAG)
    try:
        (wt / CONFIG_NAME).write_text(toml, encoding="utf-8")
        if not (wt / "program.md").exists():
            (wt / "program.md").write_text(program, encoding="utf-8")
        cfg = load(wt)
        cfg.root = ws.root  # logs, the sandbox and markers belong to the project, not the worktree
        marker = marker_prefix(ws.root, TAG)
        m = judge(cfg, ws, wt, seed=cfg.experiment.seed, log_path=logs / "run.log", marker=f"{marker}run",
                  protected_digests=ws.digests(wt, cfg.experiment.protected), restore_from=head)
        if m.status != OK:
            seen = _printed_metrics(m.log_tail)
            hint = (f" (it printed {', '.join(seen[:6])}: is one of these the metric?)" if seen and m.metric is None
                    else "")
            raise _RunFailed(f"the check run of `{a.run}` ended `{m.status}`: {m.reason}{hint}. Its last lines:\n"
                             + _indent(m.log_tail) + f"\n(whole log: {logs / 'run.log'}; a file git does not track "
                             "is missing in the loop's worktrees too)")
        say(f"autoresearch: it printed {a.metric}: {m.metric:g} in {m.wall_s:.1f}s")
        if a.checks:
            wt = ws.worktree("validate", at=head)
            say(f"autoresearch: running the checks `{a.checks}` once ...")
            res = run_checks(cfg, ws, wt, log_path=logs / "checks.log", marker=f"{marker}checks")
            for retry in range(1, cfg.experiment.checks_retries + 1):  # as the loop does: a flaky test is re-run
                if res.status != "failed":
                    break
                say(f"autoresearch: the checks failed (exit {res.exit_code}); running them again "
                    f"(experiment.checks_retries) ...")
                res = run_checks(cfg, ws, ws.worktree("validate", at=head), log_path=logs / f"checks.retry{retry}.log",
                                 marker=f"{marker}checks{retry}")
            if not res.ok:
                raise _RunFailed(f"the checks `{a.checks}` do not pass at HEAD ({res.status}, exit {res.exit_code}): "
                                 "a guard that fails before any change would reject every change. Its last lines:\n"
                                 + _indent(res.tail), what="checks")
        return m.metric, m.wall_s
    finally:
        ws.remove_worktrees()


def _printed_metrics(text: str) -> list[str]:
    names = re.findall(r"^\s*([A-Za-z_][\w.\-/]*)\s*[:=]\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*$", text, re.M)
    return list(dict.fromkeys(names))


def _indent(text: str, lines: int = 15) -> str:
    return "\n".join("    " + ln for ln in text.splitlines()[-lines:])
