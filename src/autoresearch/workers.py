"""What each worker did, from the ledger alone: runs, busy time, utilisation, runs per hour, and
what it runs now. Read by `autoresearch status` and the scaling benchmark.

A run counts for the worker that ran it (the driver stores every measurement with its
worker and hardware class in the row's evidence `measurements`; a row without them (older versions)
counts as one run of worker `local`). The window is the tag's latest session: from its
start to its end, or to now while rows are running. Utilisation is busy time (the
experiment's own wall time) over the window.
"""

from __future__ import annotations

import time
from typing import Any

from .states import Status


def worker_stats(ledger, tag: str) -> list[dict[str, Any]]:
    """Per worker over the latest session: runs, busy seconds, utilisation, runs per hour, what runs now."""
    rows, sessions = ledger.experiments(tag), ledger.sessions(tag)
    t0 = sessions[-1]["started_at"] if sessions else min((e.started_at for e in rows), default=time.time())
    live = any(e.status == Status.RUNNING for e in rows)
    t1 = time.time() if live or not sessions or not sessions[-1]["ended_at"] else sessions[-1]["ended_at"]
    out: dict[str, dict[str, Any]] = {}

    def entry(worker: str, hardware: str = "") -> dict[str, Any]:
        s = out.setdefault(worker, {"worker": worker, "hardware": hardware, "runs": 0, "busy_s": 0.0, "now": []})
        s["hardware"] = s["hardware"] or hardware
        return s

    for e in rows:
        runs = e.evidence.get("measurements") if isinstance(e.evidence, dict) else None
        if not isinstance(runs, list) and e.wall_s is not None and e.status != Status.RUNNING:
            runs = [{"worker": e.worker or "local", "hardware": e.hardware, "wall_s": e.wall_s, "end": e.ended_at}]
        for r in runs if isinstance(runs, list) else []:
            if (r.get("end") or 0) >= t0:
                s = entry(r.get("worker") or "local", r.get("hardware", ""))
                s["runs"] += 1
                s["busy_s"] += r.get("wall_s") or 0.0
        if e.status == Status.RUNNING and e.worker:
            entry(e.worker, e.hardware)["now"].append(f"#{e.id} {e.description[:60]}")
    span = max(t1 - t0, 1e-9)
    for s in out.values():
        s["utilisation"] = round(min(1.0, s["busy_s"] / span), 4)
        s["per_hour"] = round(s["runs"] / span * 3600, 2)
        s["busy_s"] = round(s["busy_s"], 2)
    return sorted(out.values(), key=lambda s: s["worker"])
