"""The agent's notebook: what it wants to remember from one proposal to the next.

An LLM agent's reply (or a coding-agent CLI's final message) may end with a `NOTES:`
section: hypotheses, what to try next, what to avoid. The harness appends it, stamped
with the experiment number, to `.autoresearch/notes/<tag>.md`, and the context shows its
tail to every later proposal. It lives beside the ledger, not in the project, so it
never dirties the user's checkout or a worktree; the human's own `ideas.md` at the
project root stays theirs (the context shows it separately, read live).

Guarantees: appends are whole entries (written to a temp file and renamed); the file is
bounded (oldest entries dropped past MAX_CHARS); reading a missing notebook gives "".
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from ..layout import Layout

MAX_CHARS = 60_000
MAX_ENTRY = 2_000
_HEADER = re.compile(r"^## ", re.MULTILINE)


def path(root: Path, tag: str) -> Path:
    return Layout(root).notes(tag)


def read(root: Path, tag: str) -> str:
    try:
        return path(root, tag).read_text(encoding="utf-8")
    except OSError:
        return ""


def append(root: Path, tag: str, notes: str, *, experiment: int, description: str = "") -> None:
    notes = notes.strip()
    if not notes:
        return
    if len(notes) > MAX_ENTRY:
        notes = notes[:MAX_ENTRY] + " [...]"
    stamp = time.strftime("%Y-%m-%d %H:%M")
    title = f"## before experiment {experiment} ({stamp})" + (f": {' '.join(description.split())[:100]}"
                                                            if description else "")
    text = read(root, tag)
    text = (text.rstrip() + "\n\n" if text.strip() else "") + f"{title}\n{notes}\n"
    if len(text) > MAX_CHARS:
        starts = [m.start() for m in _HEADER.finditer(text)]
        keep_from = next((s for s in starts if len(text) - s <= MAX_CHARS), starts[-1] if starts else 0)
        text = text[keep_from:]
    p = path(root, tag)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, p)
