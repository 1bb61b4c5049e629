"""Rates over sessions, with their uncertainty, as the policy benchmarks print them (noise_gate.py, drift.py).

`ratio(ys, xs)`: a ratio of sums (e.g. null changes kept / null changes proposed, summed over
sessions) and its cluster-robust standard error, the sessions being the clusters. `rounded(x)`:
four decimals, None for NaN (JSON has none). `pct(r, key)`: "12.3% ± 1.4" from r[key], r[key_se].
"""

from __future__ import annotations

import math
from typing import Any, Optional


def rounded(x: float) -> Optional[float]:
    return round(x, 4) if math.isfinite(x) else None  # JSON has no NaN: none proposed, no rate


def ratio(ys, xs) -> tuple[float, float]:
    """A ratio of sums and its cluster-robust standard error (clusters: sessions)."""
    n, sx = len(xs), sum(xs)
    if not n or not sx:
        return float("nan"), float("nan")
    r = sum(ys) / sx
    if n < 2:
        return r, float("nan")
    resid = sum((y - r * x) ** 2 for x, y in zip(xs, ys))
    return r, math.sqrt(resid / (n * (n - 1))) / (sx / n)


def pct(r: dict[str, Any], key: str) -> str:
    if r[key] is None:
        return "-"
    return f"{r[key] * 100:.1f}% ± {(r[key + '_se'] or 0) * 100:.1f}"
