"""Edits an LLM writes in its reply: parse them, check them, apply them all or none.

Two forms, each introduced by the file's path on the line before it:

    train.py
    <<<<<<< SEARCH
    LEARNING_RATE = 0.02
    =======
    LEARNING_RATE = 0.03
    >>>>>>> REPLACE

    notes/new_file.py
    <<<<<<< FILE
    (the whole new content)
    >>>>>>> END

A SEARCH block replaces one occurrence of its text; an empty SEARCH means the whole
file (create or replace). Several blocks may touch one file; they apply in order.

Guarantees:
- `parse_edits()` raises EditError (with a message meant for the model) on a block it
  cannot read; text outside blocks is ignored.
- `apply_edits()` is atomic: every block is matched in memory first; if any fails
  (text not found, found more than once, a path outside the folder, through a symlink or
  inside .git),
  nothing is written and EditError says which block and why, with the closest lines
  as a hint. Otherwise each file is written to a temp file and renamed into place;
  should a write fail midway, the files already written are restored.
- Matching is exact first, then tolerant of trailing whitespace, then of a uniform
  change of indentation (the replacement is re-indented to match).
- The returned `Applied` can `undo()` the change (used when the change repeats one
  tried before).

Not covered: whether a path is editable or protected. That is the harness's check
after the agent returns (a protected file changed is a `violation`, recorded).
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import AutoresearchError
from ..layout import HOME

_OPEN = re.compile(r"^\s*<{5,9}\s*(SEARCH|FILE)\s*$")
_MID = re.compile(r"^\s*={5,9}\s*$")
_CLOSE = re.compile(r"^\s*>{5,9}\s*(REPLACE|END|FILE)?\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


class EditError(AutoresearchError):
    """An edit that cannot be parsed or applied; the message is for the model."""


@dataclass
class Edit:
    path: str
    search: Optional[str]  # None: whole-file content in `replace`
    replace: str


@dataclass
class Applied:
    root: Path
    originals: dict[str, Optional[str]] = field(default_factory=dict)  # path -> old text (None: did not exist)

    @property
    def paths(self) -> list[str]:
        return sorted(self.originals)

    def undo(self) -> None:
        for rel, old in self.originals.items():
            p = self.root / rel
            if old is None:
                p.unlink(missing_ok=True)
            else:
                _write_atomic(p, old)


def parse_edits(text: str) -> list[Edit]:
    return split_reply(text)[0]


def split_reply(text: str) -> tuple[list[Edit], str]:
    """The edit blocks of a reply, and its prose with the blocks (and their path lines) taken out."""
    lines = text.splitlines()
    edits: list[Edit] = []
    used: set[int] = set()
    i = 0
    while i < len(lines):
        m = _OPEN.match(lines[i])
        if not m:
            i += 1
            continue
        path, at = _path_before(lines, i)
        if not path:
            raise EditError(f"the edit block at line {i + 1} has no file path on the line before `<<<<<<< {m.group(1)}`")
        kind = m.group(1)
        body: list[str] = []
        j = i + 1
        if kind == "SEARCH":
            while j < len(lines) and not _MID.match(lines[j]):
                if _OPEN.match(lines[j]) or _CLOSE.match(lines[j]):
                    raise EditError(f"the SEARCH block for {path} (line {i + 1}) has no `=======` line")
                body.append(lines[j])
                j += 1
            if j >= len(lines):
                raise EditError(f"the SEARCH block for {path} (line {i + 1}) has no `=======` line")
            search = body
            body = []
            j += 1
            while j < len(lines) and not _CLOSE.match(lines[j]):
                if _OPEN.match(lines[j]) or _MID.match(lines[j]):
                    raise EditError(f"the block for {path} (line {i + 1}) is not closed by `>>>>>>> REPLACE`")
                body.append(lines[j])
                j += 1
            if j >= len(lines):
                raise EditError(f"the block for {path} (line {i + 1}) is not closed by `>>>>>>> REPLACE`")
            s = "\n".join(search)
            edits.append(Edit(path, s + "\n" if s.strip() else None, _text(body)))
        else:
            while j < len(lines) and not _CLOSE.match(lines[j]):
                body.append(lines[j])
                j += 1
            if j >= len(lines):
                raise EditError(f"the FILE block for {path} (line {i + 1}) is not closed by `>>>>>>> END`")
            edits.append(Edit(path, None, _text(body)))
        used.update(range(at, j + 1))
        i = j + 1
    prose = "\n".join(ln for k, ln in enumerate(lines) if k not in used and not _FENCE.match(ln))
    return edits, prose


def apply_edits(root: Path, edits: list[Edit]) -> Applied:
    root = Path(root)
    new: dict[str, Optional[str]] = {}
    old: dict[str, Optional[str]] = {}
    for n, e in enumerate(edits, 1):
        rel = _safe_path(root, e.path)
        if rel not in new:
            p = root / rel
            if p.is_dir():
                raise EditError(f"block {n}: {rel} is a folder, not a file")
            try:
                old[rel] = p.read_text(encoding="utf-8") if p.is_file() else None
            except UnicodeDecodeError:
                raise EditError(f"block {n}: {rel} is not a text file") from None
            new[rel] = old[rel]
        if e.search is None:
            new[rel] = e.replace
            continue
        if new[rel] is None:
            raise EditError(f"block {n}: {rel} does not exist; to create it, give its whole content with an "
                            "empty SEARCH section")
        new[rel] = _replace_once(new[rel], e.search, e.replace, rel, n)
    applied = Applied(root)
    try:
        for rel, text in new.items():
            if text == old[rel]:
                continue
            applied.originals[rel] = old[rel]
            _write_atomic(root / rel, text)
    except OSError as err:
        applied.undo()
        raise EditError(f"could not write {rel}: {err}") from None
    return applied


def _replace_once(text: str, search: str, replace: str, rel: str, n: int) -> str:
    count = text.count(search)
    if count == 1:
        return text.replace(search, replace, 1)
    if count > 1:
        raise EditError(f"block {n}: the SEARCH text matches {count} places in {rel}; include more surrounding "
                        "lines so it matches exactly one")
    lines = text.splitlines(keepends=True)
    want = search.splitlines()
    for strip in (str.rstrip, str.strip):
        hits = [i for i in range(len(lines) - len(want) + 1)
                if all(strip(lines[i + k]) == strip(want[k]) for k in range(len(want)))]
        if len(hits) > 1:
            raise EditError(f"block {n}: the SEARCH text matches {len(hits)} places in {rel} (ignoring whitespace); "
                            "include more surrounding lines")
        if hits:
            i = hits[0]
            got = lines[i:i + len(want)]
            repl = replace if strip is str.rstrip else _reindent(replace, want, got)
            if repl and not repl.endswith("\n") and (i + len(want)) < len(lines):
                repl += "\n"
            return "".join(lines[:i]) + repl + "".join(lines[i + len(want):])
    hint = _closest(lines, want)
    raise EditError(f"block {n}: the SEARCH text was not found in {rel}. It must match the current file exactly, "
                    f"character for character.{hint}")


def _reindent(replace: str, want: list[str], got: list[str]) -> str:
    def indent(s: str) -> str:
        return s[:len(s) - len(s.lstrip())]

    first = next((k for k, w in enumerate(want) if w.strip()), None)
    if first is None:
        return replace
    have, wrote = indent(got[first]), indent(want[first])
    out = []
    for ln in replace.splitlines(keepends=True):
        if ln.strip() and ln.startswith(wrote):
            ln = have + ln[len(wrote):]
        elif ln.strip() and not wrote:
            ln = have + ln
        out.append(ln)
    return "".join(out)


def _closest(lines: list[str], want: list[str]) -> str:
    if not want or not lines:
        return ""
    head = want[0].strip() or (want[1].strip() if len(want) > 1 else "")
    best = difflib.get_close_matches(head, [ln.strip() for ln in lines], n=1, cutoff=0.5)
    if not best:
        return ""
    idx = [ln.strip() for ln in lines].index(best[0])
    snippet = "".join(lines[max(0, idx - 1):idx + max(2, len(want)) + 1]).rstrip("\n")
    return f" The closest lines in the file are (line {idx + 1}):\n{snippet}"


def _path_before(lines: list[str], i: int) -> tuple[str, int]:
    for k in range(i - 1, max(-1, i - 4), -1):
        s = lines[k].strip()
        if not s or _FENCE.match(s):
            continue
        s = re.sub(r"^(#+\s*|FILE:\s*|EDIT:?\s*|File:\s*|Path:\s*)", "", s).strip()
        s = s.strip("`*'\" ").rstrip(":").strip()
        return (s, k) if s and " " not in s else ("", k)
    return "", i


def _safe_path(root: Path, path: str) -> str:
    p = Path(path)
    if p.is_absolute():
        try:
            p = p.resolve().relative_to(root.resolve())
        except ValueError:
            raise EditError(f"{path} is outside the project: use paths relative to the project folder") from None
    rel = p.as_posix()
    if rel.startswith("./"):
        rel = rel[2:]
    parts = Path(rel).parts
    if not parts or ".." in parts or parts[0] in (".git", HOME):
        raise EditError(f"{path} is not a path the agent may write (outside the project, or in .git/.autoresearch)")
    full = (root / rel).resolve()
    if root.resolve() not in full.parents:
        raise EditError(f"{path} resolves outside the project")
    cur = root
    for part in Path(rel).parts:  # no link anywhere on the way: a write never leaves the folder
        cur = cur / part
        if cur.is_symlink():
            raise EditError(f"{path} goes through a symlink ({cur.relative_to(root).as_posix()}): edit real files only")
    return rel


def write_text(root: Path, path: str, text: str) -> str:
    """Write `text` to `path` inside `root` (atomically), refusing a path that leaves `root`: `..`,
    an absolute path elsewhere, a symlink on the way, or .git/.autoresearch. Returns the relative path."""
    rel = _safe_path(Path(root), path)
    _write_atomic(Path(root) / rel, text)
    return rel


def _text(lines: list[str]) -> str:
    return "\n".join(lines) + "\n" if lines else ""


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.autoresearch-tmp")
    mode = path.stat().st_mode if path.exists() else None
    tmp.write_text(text, encoding="utf-8")
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)
