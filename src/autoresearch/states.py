"""What an experiment row can be: its status and its kind, as types (the ledger's nouns).

`Status` is the life of a row: written `running` before the work, then moved once to exactly
one terminal status (ledger.py's contract). `Kind` says why the row exists. Both are
`StrEnum`s: a member equals its text (`Status.KEEP == "keep"`), so the database keeps its text
values, rows read back from it compare equal to the members, and JSON shows the text.

Guarantees: "which statuses are terminal" and "which carry no usable metric" are answered
here and nowhere else; a misspelt member is an AttributeError, not a silent mismatch.
Not covered: measurements' statuses (the same set, stored per run) are plain text in the
ledger's rows; the driver's event names (live.py) are not statuses.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    RUNNING = "running"
    KEEP = "keep"
    DISCARD = "discard"
    CRASH = "crash"
    TIMEOUT = "timeout"
    VIOLATION = "violation"
    INTERRUPTED = "interrupted"
    CHECKS_FAILED = "checks_failed"

    def is_finished(self) -> bool:
        """A terminal status: the row never changes again."""
        return self is not Status.RUNNING

    def is_failed(self) -> bool:
        """The run gave no usable metric (an interruption is not a failure of the change)."""
        return self in FAILED


class Kind(StrEnum):
    BASELINE = "baseline"  # the starting point, measured before any change
    CANDIDATE = "candidate"  # an agent's proposal (or a swarm peer's, adopted)
    REPAIR = "repair"  # a fix of a candidate that crashed (`repair_of` names it)
    REBASE = "rebase"  # a candidate that beat its parent, replayed onto a best that moved while it ran


TERMINAL = tuple(s for s in Status if s is not Status.RUNNING)
FAILED = (Status.CRASH, Status.TIMEOUT, Status.VIOLATION, Status.CHECKS_FAILED)  # no usable metric

# A measurement (one run of a commit on one seed: judge.Measurement, the ledger's measurements) ends
# `ok` (its metric was read) or with one of the failed statuses above, or `interrupted`. `ok` is not a
# row status: the policy turns an ok run into `keep` or `discard`.
OK = "ok"
