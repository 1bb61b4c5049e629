"""tinydiff: line diffs — the shortest edit script between two lists of lines, unified diffs, patching.

    diff(a, b)                 -> [(tag, line), ...] with tag ' ' (kept), '-' (removed), '+' (added)
    unified_diff(a, b, ...)    -> the lines of a unified diff (`--- a`, `+++ b`, `@@ -1,3 +1,4 @@`, ...)
    patch(a, diff_lines)       -> b, from a and a unified diff (raises PatchError if it does not apply)
    stats(ops)                 -> (added, removed)

Lines are strings without their line terminators. The edit script is always a *shortest*
one: it keeps a longest common subsequence of the two lists. When several shortest
scripts exist any of them is correct; within a run of changes the removals come first.

This is the file the research loop may change: make `diff`/`unified_diff` faster without
changing what they return (the test suite in tests/ is the guard) and without using much
more memory (bench.py measures both).
"""

from __future__ import annotations

import re

__all__ = ["diff", "unified_diff", "patch", "stats", "PatchError"]


class PatchError(ValueError):
    """A unified diff that does not apply to the given lines."""


def diff(a: list[str], b: list[str]) -> list[tuple[str, str]]:
    """A shortest edit script turning `a` into `b`."""
    return _removals_first(_edit_script(list(a), list(b)))


def _edit_script(a: list[str], b: list[str]) -> list[tuple[str, str]]:
    # The textbook dynamic programme: table[i][j] is the length of a longest common
    # subsequence of a[i:] and b[j:]; walking it from the top left gives the script.
    n, m = len(a), len(b)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            if a[i] == b[j]:
                table[i][j] = table[i + 1][j + 1] + 1
            else:
                table[i][j] = max(table[i + 1][j], table[i][j + 1])
    ops = []
    i = j = 0
    while i < n and j < m:
        if a[i] == b[j]:
            ops.append((" ", a[i]))
            i += 1
            j += 1
        elif table[i + 1][j] >= table[i][j + 1]:
            ops.append(("-", a[i]))
            i += 1
        else:
            ops.append(("+", b[j]))
            j += 1
    ops.extend(("-", line) for line in a[i:])
    ops.extend(("+", line) for line in b[j:])
    return ops


def _removals_first(ops: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Within each run of changes, put the removals before the additions (as diff(1) does)."""
    out: list[tuple[str, str]] = []
    removed: list[tuple[str, str]] = []
    added: list[tuple[str, str]] = []
    for op in ops:
        if op[0] == "-":
            removed.append(op)
        elif op[0] == "+":
            added.append(op)
        else:
            out += removed
            out += added
            removed, added = [], []
            out.append(op)
    return out + removed + added


def stats(ops: list[tuple[str, str]]) -> tuple[int, int]:
    """(lines added, lines removed)."""
    return sum(1 for t, _ in ops if t == "+"), sum(1 for t, _ in ops if t == "-")


def unified_diff(a: list[str], b: list[str], fromfile: str = "a", tofile: str = "b", n: int = 3) -> list[str]:
    """The unified diff of `a` and `b` with `n` lines of context; [] when they are equal."""
    ops = diff(a, b)
    if all(t == " " for t, _ in ops):
        return []
    out = [f"--- {fromfile}", f"+++ {tofile}"]
    for start, end in _hunks(ops, n):
        a_start = sum(1 for t, _ in ops[:start] if t != "+")
        b_start = sum(1 for t, _ in ops[:start] if t != "-")
        a_len = sum(1 for t, _ in ops[start:end] if t != "+")
        b_len = sum(1 for t, _ in ops[start:end] if t != "-")
        out.append(f"@@ -{_range(a_start, a_len)} +{_range(b_start, b_len)} @@")
        for t, line in ops[start:end]:
            out.append(t + line)
    return out


def _range(start: int, length: int) -> str:
    # diff(1)'s convention: 1-based start, ",length" omitted when it is 1, and an empty
    # range names the line *before* it.
    if length == 0:
        return f"{start},0"
    return f"{start + 1}" if length == 1 else f"{start + 1},{length}"


def _hunks(ops: list[tuple[str, str]], n: int) -> list[tuple[int, int]]:
    """[start, end) slices of `ops`: each change with `n` lines of context, overlapping ones merged."""
    changed = [k for k, (t, _) in enumerate(ops) if t != " "]
    hunks: list[tuple[int, int]] = []
    for k in changed:
        start, end = max(0, k - n), min(len(ops), k + n + 1)
        if hunks and start <= hunks[-1][1]:
            hunks[-1] = (hunks[-1][0], max(hunks[-1][1], end))
        else:
            hunks.append((start, end))
    return hunks


_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def patch(a: list[str], diff_lines: list[str]) -> list[str]:
    """Apply a unified diff (as returned by `unified_diff`) to `a`; raises PatchError on a mismatch."""
    out: list[str] = []
    pos = 0  # next line of `a` not yet copied
    lines = [ln for ln in diff_lines if not ln.startswith(("--- ", "+++ "))]
    k = 0
    while k < len(lines):
        m = _HUNK.match(lines[k])
        if not m:
            raise PatchError(f"expected a hunk header, got {lines[k]!r}")
        a_start, a_len = int(m.group(1)), int(m.group(2) or 1)
        first = a_start - 1 if a_len else a_start
        if first < pos or first > len(a):
            raise PatchError(f"hunk {lines[k]!r} is out of order or past the end")
        out += a[pos:first]
        pos = first
        k += 1
        while k < len(lines) and not lines[k].startswith("@@"):
            tag, text = lines[k][:1], lines[k][1:]
            if tag in (" ", "-"):
                if pos >= len(a) or a[pos] != text:
                    raise PatchError(f"line {pos + 1} is {a[pos] if pos < len(a) else 'past the end'!r}, "
                                     f"the diff expects {text!r}")
                if tag == " ":
                    out.append(text)
                pos += 1
            elif tag == "+":
                out.append(text)
            else:
                raise PatchError(f"unexpected diff line {lines[k]!r}")
            k += 1
    return out + a[pos:]
