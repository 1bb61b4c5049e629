"""Integrity checks around a run: what the sandbox cannot prevent, the judge detects.

- `review()`: a static look at a candidate's patch before it runs. Hacks with a clear
  signature are a `violation` (patching the clock, setting the harness's variables,
  naming hidden data or the evaluation's secret, reaching for the ledger, results.tsv or
  git, monkeypatching or introspecting the protected modules, replacing builtins, exiting
  with os._exit, printing the metric itself when an evaluation command owns it). A
  change that cannot change the result — only comments, docstrings or formatting — or
  that only changes a seed is a `discard`, not run: neither is research.
  `change_kind()` is the one no-op/seed-only detector (syntax trees); `seed_only_change()`
  runs it on a patch's hunks for the policies, which hold a patch and not the files.
- `Tripwire`: inotify watches on hidden data (or the decoys the sandbox mounts in its
  place) and on the evaluation's secret; any open or read during a run is a `violation`.
- `fingerprint()`: (size, mtime, ctime, inode) of data outside the worktree; the judge
  compares them with the session's first run, so a change by a run or by an agent between
  runs is a `violation` (cheap enough for gigabytes; ctime cannot be set by a process).
- `secret()`: the project's evaluation secret, given only to the evaluation command.
  (The harness's own state — branch, pins, ledger, results.tsv — is guarded by
  stateguard.py.)

Not covered: a patch that hides a hack behind indirection (getattr with computed names,
exec of an encoded string) passes `review()`; the sandbox and the separate evaluation
process are the defence there. The tripwire sees opens, not `stat()`, and without bwrap
it cannot tell a run's open from another process's (e.g. a concurrent evaluation).
"""

from __future__ import annotations

import ast
import ctypes
import os
import re
import struct
import textwrap
import threading
from pathlib import Path
from typing import Iterable, Optional

from .layout import HOME, Layout
from .states import Status

# ------------------------------------------------------------------ static review of a patch

_CLOCK = r"(?:time|perf_counter|monotonic|process_time|thread_time)(?:_ns)?"
RULES: list[tuple[str, str]] = [
    (rf"\btime\s*\.\s*{_CLOCK}\s*=(?!=)|setattr\(\s*time\s*,|\b{_CLOCK}\s*=\s*lambda|sys\.modules\[\s*['\"]time",
     "patches the clock (time.time/perf_counter/monotonic): the budget is the harness's"),
    (r"\bdatetime\s*\.\s*(?:now|utcnow)\s*=(?!=)|faketime|LD_PRELOAD", "fakes the clock"),
    (r"environ\s*\[\s*['\"]AUTORESEARCH_\w+['\"]\s*\]\s*=(?!=)|(?:putenv|unsetenv|setdefault|environ\.update|"
     r"environ\.pop)\s*\(.*AUTORESEARCH_", "sets the harness's AUTORESEARCH_* variables (budget, seed, paths)"),
    (r"AUTORESEARCH_EVAL_SECRET|eval_secret", "reaches for the evaluation's secret"),
    (rf"{re.escape(HOME)}\b|ledger\.db|results\.tsv|refs/(?:heads/)?autoresearch",
     "reaches for the harness's state (ledger, logs, results.tsv, refs)"),
    (r"""["']git["']\s*[,\]]|["']git\s+\w|\bgit\s+(?:commit|reset|update-ref|push|checkout|switch|branch|rebase|"""
     r"""stash|tag|notes|gc|filter-branch)\b""", "runs git (the branch and history are the harness's)"),
    (r"sys\._getframe|inspect\.(?:stack|currentframe|getouterframes)|gc\.get_(?:objects|referrers)",
     "introspects the caller's frames or objects (a way into the evaluator)"),
    (r"\bos\._exit\b", "exits with os._exit (cuts an evaluation short)"),
    (r"\bbuiltins\s*\.\s*\w+\s*=(?!=)|__builtins__\s*[\[.]", "replaces builtins"),
]


def review(cfg, ws, parent: str, commit: str) -> Optional[tuple[str, str]]:
    """(status, reason) if the change from `parent` to `commit` must not run, else None."""
    patch = ws.diff(parent, commit)
    added = [ln[1:] for ln in patch.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    code = [ln for ln in added if not ln.lstrip().startswith("#")]
    rules = RULES + _project_rules(cfg)
    for line in code:
        for pattern, why in rules:
            if re.search(pattern, line):
                return Status.VIOLATION, f"integrity: the patch {why}: `{line.strip()[:120]}`"
    changed = [p for p in _changed(ws, parent, commit) if cfg.is_editable(p)]
    if not changed:
        return None
    kinds = set()
    for path in changed:
        kind = change_kind(ws.file_at(parent, path), ws.file_at(commit, path), path)
        if kind is None:
            return None  # a real change somewhere: the policy judges it
        kinds.add(kind)
    if kinds == {"noop"}:
        return Status.DISCARD, "no-op change: only comments, docstrings or formatting differ (not run)"
    return Status.DISCARD, "seed-only change: a different random seed is noise, not an improvement (not run)"


def _project_rules(cfg) -> list[tuple[str, str]]:
    rules = []
    for pat in cfg.experiment.protected:
        if pat.endswith(".py") and not any(c in pat for c in "*?["):
            mod = re.escape(Path(pat).stem)
            rules.append((rf"\b{mod}\s*\.\s*\w+\s*=(?!=)|setattr\(\s*{mod}\b|sys\.modules\[\s*['\"]{mod}['\"]\s*\]\s*=",
                          f"monkeypatches the protected module `{Path(pat).stem}`"))
    if cfg.metric.command:  # the evaluation's output is the only channel for the metric
        name = re.escape(cfg.metric.name)
        rules.append((rf"""['"][^'"]*\b{name}\s*[:=]""",
                      f"prints `{cfg.metric.name}` itself (only the evaluation's counts)"))
    for pat in cfg.experiment.hidden:
        name = Path(pat.removeprefix("python:")).name
        if name and not any(c in name for c in "*?[$~"):
            rules.append((re.escape(name), f"names hidden data ({name})"))
    return rules


def _changed(ws, parent: str, commit: str) -> list[str]:
    out = ws.git("diff", "--name-only", parent, commit, "--", ws.prefix or ".")
    return [ws.project_path(p) for p in out.splitlines() if p]


_PARSE = threading.Lock()


def parse_python(source: str) -> ast.Module:
    """ast.parse, one call at a time in this process: CPython 3.11's parser can fail with "AST constructor
    recursion depth mismatch" (SystemError) when threads parse at once, and the driver's threads do
    (a researcher's agent, the integrity review of a run)."""
    with _PARSE:
        return ast.parse(source)


def change_kind(old: Optional[str], new: Optional[str], path: str) -> Optional[str]:
    """'noop', 'seed' or None (a real change) for one file, `old` -> `new` (None: absent).

    The one seed-only/no-op detector: Python is compared as syntax trees (docstrings, comments
    and formatting aside); a change is 'seed' when every constant that differs sits under a
    seed-like name or call (`SEED = 1`, `torch.manual_seed(1)`, `default_rng(seed + 1)`), or
    when statements that differ in shape both only set a seed. Other files: 'noop' if equal."""
    if old is None or new is None or not path.endswith(".py"):
        return "noop" if old == new else None
    try:
        a, b = _strip_docstrings(parse_python(old)), _strip_docstrings(parse_python(new))
    except SyntaxError:
        return None
    contexts = _constant_diffs(a, b, ())
    if contexts is None:
        return None
    if not contexts:
        return "noop"
    return "seed" if all(any(_SEEDY.search(c) for c in ctx) for ctx in contexts) else None


def seed_only_change(patch: str) -> bool:
    """True when a unified diff only changes a seed, judged by `change_kind` on each group of replaced
    lines (dedented: a hunk inside a function compares like the whole file would). For callers that
    hold a patch and not the files (the policies); review() compares whole files.

    Not seed-only: pure additions or removals, new, deleted, renamed or binary files, a group whose
    lines are not Python on their own (e.g. half a call, a JSON line: the policy judges those), and a
    patch whose groups are only no-ops (review() discards those as no-ops)."""
    groups: list[tuple[list[str], list[str]]] = []
    minus: list[str] = []
    plus: list[str] = []
    for line in patch.splitlines():
        if line.startswith(("---", "+++")):
            continue
        if line.startswith(("new file", "deleted file", "Binary files", "rename ", "similarity ")):
            return False
        if line.startswith("-"):
            if plus:
                groups.append((minus, plus))
                minus, plus = [], []
            minus.append(line[1:])
        elif line.startswith("+"):
            plus.append(line[1:])
        elif minus or plus:
            groups.append((minus, plus))
            minus, plus = [], []
    if minus or plus:
        groups.append((minus, plus))
    kinds = set()
    for old, new in groups:
        if not old or not new:
            return False
        kinds.add(change_kind(textwrap.dedent("\n".join(old)), textwrap.dedent("\n".join(new)), "hunk.py"))
    return "seed" in kinds and kinds <= {"seed", "noop"}


_SEEDY = re.compile(r"seed|default_rng|RandomState|PRNGKey|Generator|random\.Random", re.IGNORECASE)


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and \
                isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return tree


def _constant_diffs(a, b, ctx: tuple[str, ...]) -> Optional[list[tuple[str, ...]]]:
    """Contexts of the constants that differ when `a` and `b` have the same shape; None if not."""
    if type(a) is not type(b):
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return None
        out: list[tuple[str, ...]] = []
        for x, y in zip(a, b):
            sub = _constant_diffs(x, y, ctx)
            if sub is None:
                return None
            out += sub
        return out
    if not isinstance(a, ast.AST):
        return [] if a == b else None
    if isinstance(a, ast.Constant):
        return [] if (type(a.value), a.value) == (type(b.value), b.value) else [ctx]
    inner = ctx + _context(a)
    out = []
    for name in a._fields:
        sub = _constant_diffs(getattr(a, name, None), getattr(b, name, None), inner)
        if sub is None:
            # Two statements that both only set a seed (`rng = default_rng(seed + 1)`) differ as seeds do.
            return [("seed",)] if isinstance(a, ast.stmt) and _seedy_stmt(a) and _seedy_stmt(b) else None
        out += sub
    return out


def _seedy_stmt(node: ast.stmt) -> bool:
    """An assignment to a seed-like name or from a seeding call, or a bare seeding call."""
    if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        value = node.value
        return any(_SEEDY.search(ast.unparse(t)) for t in targets) or (
            isinstance(value, ast.Call) and bool(_SEEDY.search(ast.unparse(value.func))))
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and \
        bool(_SEEDY.search(ast.unparse(node.value.func)))


def _context(node: ast.AST) -> tuple[str, ...]:
    """Names that say what a constant below `node` is for (assignment targets, callee, keyword)."""
    if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return tuple(ast.unparse(t) for t in targets)
    if isinstance(node, ast.Call):
        strings = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        return (ast.unparse(node.func), *strings)
    if isinstance(node, ast.keyword):
        return (node.arg or "",)
    return ()


# ------------------------------------------------------------------ tripwire (inotify)

_IN_ACCESS, _IN_OPEN = 0x1, 0x20


class Tripwire:
    """Watch paths for any open or read while a run is in progress (Linux inotify)."""

    def __init__(self, paths: Iterable[Path]):
        self.paths = [Path(p) for p in paths]
        self.fd = -1
        self.wds: dict[int, Path] = {}
        self.hits: list[Path] = []

    def __enter__(self) -> "Tripwire":
        if not self.paths:
            return self
        try:
            self._libc = ctypes.CDLL("libc.so.6", use_errno=True)
            self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, AttributeError):
            self.fd = -1
        for p in self.paths if self.fd >= 0 else []:
            wd = self._libc.inotify_add_watch(self.fd, os.fsencode(p), _IN_OPEN | _IN_ACCESS)
            if wd >= 0:
                self.wds[wd] = p
        return self

    def tripped(self) -> bool:
        """Any hit so far (cheap: one non-blocking read); hits keep accumulating."""
        self.hits += [h for h in self._drain() if h not in self.hits]
        return bool(self.hits)

    def __exit__(self, *exc) -> None:
        if self.fd >= 0:
            self.hits += [h for h in self._drain() if h not in self.hits]
            os.close(self.fd)
            self.fd = -1

    @property
    def armed(self) -> bool:
        return bool(self.wds)

    def _drain(self) -> list[Path]:
        hits: list[Path] = []
        while self.fd >= 0:
            try:
                data = os.read(self.fd, 1 << 16)
            except (BlockingIOError, OSError):
                break
            i = 0
            while i + 16 <= len(data):
                wd, _mask, _cookie, n = struct.unpack_from("iIII", data, i)
                name = data[i + 16:i + 16 + n].rstrip(b"\0").decode(errors="replace")
                base = self.wds.get(wd)
                if base is not None:
                    hit = base / name if name else base
                    if hit not in hits:
                        hits.append(hit)
                i += 16 + n
        return hits


# ------------------------------------------------------------------ fingerprints of data


def fingerprint(paths: Iterable[Path]) -> dict[str, tuple[int, int, int, int]]:
    out = {}
    for root in paths:
        files = [root] if not root.is_dir() else [Path(d, f) for d, _, fs in os.walk(root) for f in fs]
        for f in files:
            try:
                st = f.stat()
            except OSError:
                continue
            out[str(f)] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    return out


def changed_files(before: dict, after: dict) -> list[str]:
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


def secret(root: Path) -> str:
    """The project's evaluation secret (created once, 0600, under .autoresearch/, which no run can see).

    AUTORESEARCH_EVAL_SECRET in the harness's own environment overrides it: machines that must
    agree on one validation set (workers of a cluster) get the head's secret that way. The
    experiment's environment is an allow-list, so a run never inherits it."""
    if os.environ.get("AUTORESEARCH_EVAL_SECRET"):
        return os.environ["AUTORESEARCH_EVAL_SECRET"]
    path = Layout(root).eval_secret
    if not path.exists():
        import secrets

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".eval_secret.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(16))
        try:
            os.link(tmp, path)  # atomic and never overwrites: racing sessions agree on one secret
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()
