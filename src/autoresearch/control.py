"""Steering a running loop from outside: pause, resume, and the human's notes changing mid-run.

Pause and resume:
- `pause(root, tag)` writes `.autoresearch/control/<tag>.pause`; `resume()` removes it. Any
  process may do either; neither touches the ledger or git, so they are safe while a loop runs.
- The driver checks the flag between events (`Control.watch()`, never inside an experiment): no
  new proposal or experiment starts (the baseline excepted); the experiments in flight, their
  confirmation runs and their records finish as usual; then the pause is in effect: it reports
  `paused` and records `pause` and `resume` events in the ledger (so `watch` and the report can
  tell "requested" from "in effect"). A stop (Ctrl-C, SIGTERM) ends the wait at once. Time spent
  paused does not count towards --max-hours.
- The pause file outlives the loop: a run started on a paused tag waits until `resume`.

Steering notes:
- program.md and ideas.md are read live for every proposal (Researcher.context()). `Control.note_steering()`,
  called just before, records a `steering` event whenever one of them differs from the last
  version the ledger knows (digest, line counts, and the first changed line when the old text
  was seen by this process). The first time a tag sees a file its digest is recorded too, so
  every proposal's program can be traced to a digest. Digests are parsed back from the events,
  so a restarted loop still notices an edit made while it was down.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from .layout import Layout
from .ledger import Ledger

STEERING = ("program.md", "ideas.md")
POLL_S = 0.25
_DIGEST = re.compile(r"sha256:([0-9a-f]+|none)")


# -- the pause flag ------------------------------------------------------------------------------
def pause_path(root: Path, tag: str) -> Path:
    return Layout(root).pause(tag)


def pause(root: Path, tag: str, note: str = "") -> Path:
    """Ask the loop on `tag` to wait after the experiment in flight; returns the flag file."""
    path = pause_path(root, tag)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"since": time.time(), "pid": os.getpid(), "note": note}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info), encoding="utf-8")
    os.replace(tmp, path)
    return path


def resume(root: Path, tag: str) -> bool:
    """Let the loop on `tag` go on; False if it was not paused."""
    try:
        pause_path(root, tag).unlink()
        return True
    except FileNotFoundError:
        return False


def paused_since(root: Path, tag: str) -> Optional[float]:
    """When the pause was asked for (epoch seconds), or None if the tag is not paused."""
    path = pause_path(root, tag)
    try:
        return float(json.loads(path.read_text(encoding="utf-8")).get("since") or path.stat().st_mtime)
    except FileNotFoundError:
        return None
    except (ValueError, OSError, AttributeError):  # half-written or hand-made: still a pause
        return path.stat().st_mtime if path.exists() else None


# -- what the loop calls ----------------------------------------------------------------------------
class Control:
    def __init__(self, root: Path, tag: str, ledger: Ledger, report: Callable[..., None]):
        self.root, self.tag, self.ledger, self.report = Path(root), tag, ledger, report
        self._digests: Optional[dict[str, str]] = None  # file -> last digest the ledger knows
        self._texts: dict[str, str] = {}
        self._seen = False  # note_steering() ran once in this process
        self._steering = threading.Lock()  # researchers call note_steering() from their own threads
        self.holding, self.held_since, self.held_after = False, 0.0, None  # a pause in effect (watch())

    def watch(self, idle: bool, stopped: bool) -> float:
        """Called by the driver between events. Returns 0.0 while not paused (or not yet in effect: something
        is still in flight, `idle` False); the seconds waited when a pause ends (resumed or `stopped`), so they
        do not count towards --max-hours. True while the pause holds is `self.holding`."""
        requested = paused_since(self.root, self.tag) is not None
        if requested and not self.holding and idle and not stopped:
            self.holding, self.held_since, self.held_after = True, time.monotonic(), self._last_experiment()
            last = self.held_after
            self.ledger.event(self.tag, "pause", f"paused after #{last}: waiting for `autoresearch resume`"
                              if last else "paused: waiting for `autoresearch resume`", last)
            self.report("note", message=f"paused (after #{last}); `autoresearch resume --tag {self.tag}` continues")
            return 0.0
        if self.holding and (not requested or stopped):
            waited, self.holding = time.monotonic() - self.held_since, False
            how = "stopped while paused" if stopped else "resumed"
            self.ledger.event(self.tag, "resume", f"{how} after {waited:.0f}s paused", self.held_after)
            self.report("note", message=f"{how} after {waited:.0f}s")
            return max(waited, 1e-6)
        return 0.0

    def requested(self) -> bool:
        """The pause flag is set (whether or not the pause is in effect yet)."""
        return paused_since(self.root, self.tag) is not None

    def _last_experiment(self) -> Optional[int]:
        rows = self.ledger.experiments(self.tag)
        return rows[-1].id if rows else None

    def note_steering(self) -> list[str]:
        """Record a `steering` event for each steering file that changed; returns the messages. Safe from
        several researchers' threads at once: each change is recorded once."""
        with self._steering:
            return self._note_steering()

    def _note_steering(self) -> list[str]:
        if self._digests is None:
            self._digests = known_digests(self.ledger, self.tag)
        notes = []
        for name in STEERING:
            path = self.root / name
            text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else None
            new = digest(text)
            old = self._digests.get(name, "none")
            if new != old:
                message = describe_change(name, self._texts.get(name), text, old, new, first=not self._seen)
                self.ledger.event(self.tag, "steering", message)
                self.report("note", message=message)
                notes.append(message)
                self._digests[name] = new
            if text is not None:
                self._texts[name] = text
        self._seen = True
        return notes


def digest(text: Optional[str]) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12] if text is not None else "none"


def known_digests(ledger: Ledger, tag: str) -> dict[str, str]:
    """The last digest of each steering file recorded in the tag's `steering` events."""
    out: dict[str, str] = {}
    for ev in ledger.events(tag):
        if ev["kind"] != "steering":
            continue
        name = (ev["message"] or "").split(" ", 1)[0]
        found = _DIGEST.search(ev["message"] or "")
        if name in STEERING and found:
            out[name] = found.group(1)
    return out


def describe_change(name: str, old_text: Optional[str], new_text: Optional[str], old: str, new: str,
                    first: bool = False) -> str:
    """One line: `<file> <what> (sha256:<new>, was sha256:<old>)[: line N now "..."]` (the digest first)."""
    if new_text is None:
        return f"{name} removed (sha256:none, was sha256:{old})"
    lines = new_text.splitlines()
    if old == "none":
        what = "read" if first else "added"
        return f"{name} {what} (sha256:{new}, {len(lines)} lines): {_quote(next(iter(lines), '').strip())}"
    if old_text is None:
        return f"{name} changed since it was last read (sha256:{new}, was sha256:{old}), {len(lines)} lines now"
    old_lines = old_text.splitlines()
    ops = [op for op in difflib.SequenceMatcher(None, old_lines, lines, autojunk=False).get_opcodes()
           if op[0] != "equal"]
    if ops:
        added, removed = sum(j2 - j1 for _, _, _, j1, j2 in ops), sum(i2 - i1 for _, i1, i2, _, _ in ops)
        _, i1, _, j1, j2 = ops[0]
        where = (f"line {j1 + 1} now {_quote(lines[j1])}" if j1 < j2
                 else f"line {i1 + 1} removed (was {_quote(old_lines[i1])})")
        return f"{name} changed (sha256:{new}, was sha256:{old}), +{added} -{removed} lines: {where}"
    return f"{name} changed (sha256:{new}, was sha256:{old}): whitespace or line endings only"


def _quote(line: str, limit: int = 100) -> str:
    line = " ".join(line.split())
    return '"' + (line if len(line) <= limit else line[: limit - 3] + "...") + '"'
