"""`mutate`: a non-LLM researcher that perturbs numeric constants. Needs nothing.

It is the honest baseline and the offline default. Each proposal changes one
hyper-parameter-like constant of the editable files, multiplicatively in log space:
in a Python file, a module-level `NAME = number` (or `NAME: type = number`) statement,
found by parsing the file, so a variable inside a function or class, or a `x = 1` in a
docstring, is never touched; in any other file (a config), a `key = number` or
`key: number` line.

- greedy around the best: the worktree it edits is always at the incumbent;
- adaptive step (the 1/5 success rule): the step grows when recent proposals were kept
  and shrinks when they were not;
- random restart: after `RESTART_AFTER` proposals in a row without a keep, one bold
  proposal changes several constants at once with a large step; also when every nearby
  change was already tried.

It is stateless between proposals: its state (step, streak) is recomputed from the
history in the context, so it behaves the same after a resume. Names containing "seed"
are never touched (a seed change is noise, not research). It never repeats a change
already in the history. When it has nothing left to propose (no constants, or every
nearby change and every bold restart it draws was tried) it says so as a stop reason
(`Proposal.stop`): the loop stops there; it is not recorded as a failed experiment.
"""

from __future__ import annotations

import ast
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

from ..integrity import parse_python
from ..states import Kind, Status
from .base import Proposal
from .context import Context
from .edits import write_text

ASSIGN = re.compile(
    r"^(?P<indent>[ \t]*)(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<sep>[ \t]*(?::[ \t]*[A-Za-z_][\w\[\], ]*[ \t]*)?[=:][ \t]*)"
    r"(?P<value>[-+]?(?:\d[\d_]*\.\d*|\.\d+|\d[\d_]*)(?:[eE][-+]?\d+)?)(?P<rest>[ \t]*(?:#.*)?)$"
)
BASE_STEP = 0.35
RESTART_AFTER = 8
SKIP_NAMES = re.compile(r"seed|version|port|year|verbose|debug", re.IGNORECASE)


@dataclass
class Constant:
    path: str
    line: int
    name: str
    text: str  # the number as written
    is_int: bool

    @property
    def value(self) -> float:
        return float(self.text.replace("_", ""))


class MutateAgent:
    name = "mutate"

    def __init__(self, cfg, ledger=None):
        self.cfg = cfg

    def propose(self, ctx: Context, workdir: Path) -> Proposal:
        constants = find_constants(workdir, ctx.files)
        if not constants:
            return Proposal("", stop="mutate found no constant to change: no module-level `NAME = number` line "
                                     f"in the editable files ({', '.join(sorted(ctx.files)) or 'none'}); add such "
                                     "constants, or use an LLM agent (--agent)")
        n = len(ctx.history)
        rng = random.Random(f"{self.cfg.agent.seed}:{ctx.tag}:{n}")
        streak = _misses_since_keep(ctx)
        step = adaptive_step(ctx)
        restart = streak >= RESTART_AFTER and streak % RESTART_AFTER == 0
        tried = ctx.tried_descriptions()
        bold = restart
        changes = _draw(constants, rng, tried, bold=bold, step=step)
        why = (f"random restart after {streak} proposals without a keep" if restart
               else f"step {step:.2f} in log space (adaptive: {streak} misses since the last keep)")
        if changes is None and not restart:  # every nearby change was tried: a bold restart instead
            bold = True
            changes = _draw(constants, rng, tried, bold=bold, step=step)
            why = f"random restart: every nearby change (step {step:.2f}) was already tried"
        if changes is None:
            return Proposal("", stop=f"mutate has run out of new changes: every nearby change of the "
                                     f"{len(constants)} constant(s) and every bold restart it drew was already tried")
        apply(workdir, changes)
        return Proposal(describe(changes, bold), rationale=why, tokens_in=0, tokens_out=0, cost_usd=0.0)


def describe(changes: list[tuple["Constant", str]], bold: bool) -> str:
    return ("restart: " if bold else "") + ", ".join(f"{c.name} {c.text} -> {new}" for c, new in changes)


def _draw(constants: list["Constant"], rng: random.Random, tried: set[str], *, bold: bool, step: float,
          tries: int = 50) -> "list[tuple[Constant, str]] | None":
    """A change not in `tried`: one constant at `step`, or (bold) two or three at a large step; None if
    `tries` draws all came up with changes already tried."""
    for _ in range(tries):
        if bold:
            picks = rng.sample(constants, k=min(len(constants), rng.randint(2, 3)))
            changes = [(c, perturb(c, rng, 1.0)) for c in picks]
        else:
            c = rng.choice(constants)
            changes = [(c, perturb(c, rng, step))]
        changes = [(c, new) for c, new in changes if new != c.text]
        if changes and " ".join(describe(changes, bold).lower().split()) not in tried:
            return changes
    return None


def find_constants(workdir: Path, files: dict[str, str]) -> list[Constant]:
    """The constants mutate may change: module-level numeric assignments of Python files, `key = number`
    lines of other files; never a name like a seed, never a zero."""
    found: list[Constant] = []
    for path, text in files.items():
        lines = text.splitlines()
        if path.endswith(".py"):
            candidates = module_level_lines(text)
        else:
            top = [i for i, ln in enumerate(lines) if ASSIGN.match(ln) and not ASSIGN.match(ln).group("indent")]
            candidates = top or [i for i, ln in enumerate(lines) if ASSIGN.match(ln)]  # nested config keys
        for i in candidates:
            m = ASSIGN.match(lines[i])
            if m is None:
                continue
            name, value = m.group("name"), m.group("value")
            if SKIP_NAMES.search(name):
                continue
            is_int = not any(ch in value for ch in ".eE")
            if float(value.replace("_", "")) == 0:
                continue  # no scale to perturb multiplicatively
            found.append(Constant(path, i, name, value, is_int))
    return found


def module_level_lines(source: str) -> list[int]:
    """0-based line numbers of a Python module's top-level `NAME = number` statements (one line each).

    A file that does not parse (the agent may have broken it; a repair follows) falls back to its
    unindented `NAME = number` lines."""
    try:
        tree = parse_python(source)
    except (SyntaxError, ValueError):
        return [i for i, ln in enumerate(source.splitlines()) if (m := ASSIGN.match(ln)) and not m.group("indent")]
    out = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(value, ast.UnaryOp) and isinstance(value.op, (ast.USub, ast.UAdd)):
            value = value.operand
        numeric = (isinstance(value, ast.Constant) and isinstance(value.value, (int, float))
                   and not isinstance(value.value, bool))
        if isinstance(target, ast.Name) and numeric and node.lineno == node.end_lineno:
            out.append(node.lineno - 1)
    return out


def perturb(c: Constant, rng: random.Random, step: float) -> str:
    v = c.value
    factor = math.exp(rng.gauss(0.0, step))
    if c.is_int:
        new = int(round(v * factor))
        if new == int(v):
            new = int(v) + (1 if factor >= 1 else -1)
        if v >= 1 and new < 1:
            new = 1
        return str(new)
    if 0.5 < v < 1:  # momentum-like: perturb the distance to 1 so it never crosses 1 (nor 0)
        new = 1 - min((1 - v) * factor, 0.99)
    elif 0 < v <= 0.5:
        new = min(v * factor, 0.99)
    else:
        new = v * factor
    return _fmt(new, c.text)


def _fmt(x: float, like: str) -> str:
    if "e" in like.lower() or (x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5)):
        return f"{x:.2e}"
    for digits in (4, 6, 9, 12):  # enough digits that rounding never moves it across 1 or 0 (0.99996 -> "1")
        text = f"{x:.{digits}g}"
        if (float(text) < 1) == (x < 1) and (float(text) > 0) == (x > 0):
            break
    return text if "." in text or "e" in text else text + ".0"


def apply(workdir: Path, changes: list[tuple[Constant, str]]) -> None:
    by_file: dict[str, list[tuple[Constant, str]]] = {}
    for c, new in changes:
        by_file.setdefault(c.path, []).append((c, new))
    for path, items in by_file.items():
        p = workdir / path
        text = p.read_text(encoding="utf-8")
        lines = text.splitlines(keepends=True)
        for c, new in items:
            raw = lines[c.line]
            ending = raw[len(raw.rstrip("\r\n")):]
            m = ASSIGN.match(raw.rstrip("\r\n"))
            lines[c.line] = m.group("indent") + m.group("name") + m.group("sep") + new + m.group("rest") + ending
        write_text(workdir, path, "".join(lines))  # never through a link, never outside the folder


def _misses_since_keep(ctx: Context) -> int:
    n = 0
    for e in reversed(ctx.history):
        if e.kind == Kind.BASELINE or e.status == Status.KEEP:
            break
        n += 1
    return n


def adaptive_step(ctx: Context, window: int = 10) -> float:
    recent = [e for e in ctx.history if e.kind != Kind.BASELINE and e.status != Status.RUNNING][-window:]
    if not recent:
        return BASE_STEP
    rate = sum(e.status == Status.KEEP for e in recent) / len(recent)
    # 1/5 rule: at a keep rate of 20% the step stays; above it grows, below it shrinks.
    return float(min(1.5, max(0.05, BASE_STEP * math.exp(2.0 * (rate - 0.2)) * (0.97 ** _misses_since_keep(ctx)))))
