"""A session: the one process that owns a tag, and how it takes over after any interruption.

Guarantees:
- At most one process works on a tag at a time: an exclusive `flock` on
  `.autoresearch/locks/<tag>.lock`, released by the kernel however the process dies.
- `reconcile()` makes the world agree with the ledger, which is the truth:
  0. it first checks the ledger's seal chain and refuses (LedgerIntegrityError, naming the rows
     and `autoresearch ledger accept`) when the tag's record was changed outside the harness:
     the steps below would otherwise move the branch to a forged keep;
  1. processes left by a dead session (found by their marker) are killed;
  2. `running` rows become `interrupted` (only the lock holder can do this, so no live
     process owns them);
  3. lock files a killed git command left on the tag's refs are removed; the branch tip is
     moved (compare-and-swap) to the incumbent's commit — a commit with no `keep` row
     (killed between commit and record) is thereby reset;
  4. results.tsv is regenerated.
  Running it twice is the same as running it once.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path
from typing import Optional

from .errors import BusyError
from .layout import Layout
from .ledger import Ledger, write_tsv
from .procs import kill_marked_prefix
from .workspace import Workspace


class TagLock:
    def __init__(self, root: Path, tag: str):
        self.path = Layout(root).lock(tag)
        self.tag = tag
        self._fd: Optional[int] = None

    def __enter__(self) -> "TagLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise BusyError(
                f"another autoresearch process (pid {holder}) is working on tag `{self.tag}`: "
                f"wait for it, stop it, or use another --tag"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def marker_prefix(root: Path, tag: str) -> str:
    """Markers are unique per project and tag, so a restart never kills another project's runs."""
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:10]
    return f"ar:{digest}:{tag}:"


def reconcile(ledger: Ledger, ws: Workspace, metric_name: str, tsv_path: Optional[Path]) -> list[str]:
    """Bring processes, ledger and git in line with the ledger; returns what was done."""
    ledger.require_intact(ws.tag)  # `run`, tool mode and `confirm` all start here
    notes = []
    killed = kill_marked_prefix(marker_prefix(ws.root, ws.tag))
    if killed:
        notes.append(f"killed {killed} leftover process(es) of an earlier session")
    for exp in ledger.interrupt_stale(ws.tag):
        notes.append(f"#{exp.id} was still running when its session died: marked interrupted")
    for lock in ws.clear_stale_locks():
        notes.append(f"removed {lock}, left by a git command killed with its session")
    incumbent = ledger.incumbent(ws.tag)
    if incumbent is not None and incumbent.commit:
        tip = ws.tip()
        if tip != incumbent.commit:
            ws.advance(incumbent.commit, tip)
            notes.append(f"branch tip {tip[:7]} had no keep record: moved back to #{incumbent.id} {incumbent.commit[:7]}")
    if tsv_path is not None:
        write_tsv(tsv_path, ledger.experiments(ws.tag), metric_name)
    for n in notes:
        ledger.event(ws.tag, "reconcile", n)
    return notes
