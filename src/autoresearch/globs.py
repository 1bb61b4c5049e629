"""The one meaning of `experiment.editable` / `experiment.protected` patterns: gitignore-style, anchored.

A pattern is matched against a project path (posix, relative to the project root) and is
always anchored at the project root: `train.py` is the root's train.py, never `sub/train.py`.

    *  ?       any characters / one character, never `/`
    [abc] [!a] a class (`!` or `^` negates), never `/`
    **/        zero or more folders: `**/train.py` is train.py anywhere, `src/**/*.py` includes src/a.py
    /**        everything below: `data/**`
    name/      a trailing `/`: the folder and everything below
    /name      a leading `/` is allowed (it anchors, as every pattern already is)
    \\x        a literal x

As in gitignore, a pattern that matches a folder covers everything below it (`lib` is lib/
and its files). Other runs of `*` (as in `a**b`) are plain `*`s.

Guarantees: `matches()` is pure and cached per pattern; `*`, `?` and classes never cross a
folder boundary. Not covered: gitignore's negation (`!pattern`) and its unanchored names:
a pattern lists what it names, from the project root.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterable

__all__ = ["matches", "compile_pattern"]


def matches(path: str, patterns: Iterable[str]) -> bool:
    """True when project path `path` (or a folder above it) matches one of `patterns`."""
    path = path.lstrip("/")
    if path.startswith("./"):
        path = path[2:]
    prefixes = _prefixes(path)
    return any(compile_pattern(p).fullmatch(q) for p in patterns for q in prefixes)


def _prefixes(path: str) -> list[str]:
    """The path and each folder above it: a folder's match covers what is below."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(len(parts), 0, -1)]


@lru_cache(maxsize=512)
def compile_pattern(pattern: str) -> "re.Pattern[str]":
    """The regular expression (for `fullmatch`) of one pattern."""
    p = pattern.strip()
    if p.startswith("./"):
        p = p[2:]
    p = p.lstrip("/")
    if p.endswith("/"):
        p = p.rstrip("/") + "/**"
    out = []
    i, n = 0, len(p)
    while i < n:
        c = p[i]
        if c == "\\" and i + 1 < n:
            out.append(re.escape(p[i + 1]))
            i += 2
            continue
        if c == "*":
            j = i
            while j < n and p[j] == "*":
                j += 1
            stars = j - i
            at_start = i == 0 or p[i - 1] == "/"
            at_end = j == n or p[j] == "/"
            if stars >= 2 and at_start and at_end:
                if j == n:  # `/**` or a lone `**`: everything below (one or more components)
                    out.append(".+" if i > 0 else ".*")
                    i = j
                else:  # `**/`: zero or more folders
                    out.append("(?:[^/]+/)*")
                    i = j + 1
                continue
            out.append("[^/]*")
            i = j
            continue
        if c == "?":
            out.append("[^/]")
            i += 1
            continue
        if c == "[":
            j = i + 1
            if j < n and p[j] in "!^":
                j += 1
            if j < n and p[j] == "]":
                j += 1
            while j < n and p[j] != "]":
                j += 1
            if j >= n:  # no closing bracket: a literal `[`
                out.append(re.escape(c))
                i += 1
                continue
            body = p[i + 1:j]
            neg = body[:1] in ("!", "^")
            if neg:
                body = body[1:]
            body = body.replace("\\", "\\\\")
            out.append(f"[^/{body}]" if neg else f"(?:(?!/)[{body}])")
            i = j + 1
            continue
        out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)
