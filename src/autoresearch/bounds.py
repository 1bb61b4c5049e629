"""A bound on a secondary metric (`[metric] bounds`): its text forms, parsing, and the limit it sets.

Owns the meaning of a bound's text ("+10%", "<= 900", ...: see guards.py for what each
form bounds) and the validation of `metric.bounds` and the checks settings that config
validation calls. Depends on nothing but errors.py, so config can validate bounds without
importing the guards (which run experiments). Not covered: applying the bounds to a
candidate (guards.check_bounds).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from .errors import ConfigError

MAX_CHECKS_RETRIES = 10

_NUM = r"(\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)"
_RELATIVE = re.compile(rf"^\s*([+-])\s*{_NUM}\s*(%?)\s*$")
_ABSOLUTE = re.compile(rf"^\s*(<=|<|>=|>)\s*(-?\s*{_NUM})\s*$")
FORMS = '"+10%", "-5%", "+64", "-0.5", "<= 900", "< 900", ">= 0.9" or "> 0.9"'
MAX_CHECKS_RETRIES = 10


@dataclass(frozen=True)
class Bound:
    metric: str
    text: str
    op: str  # <=, <, >=, >
    amount: float
    relative: bool  # True: amount is added to (or taken from) the incumbent's value
    percent: bool

    def limit(self, incumbent: Optional[float]) -> Optional[float]:
        """The value the metric must stay within, or None when there is nothing to compare with."""
        if not self.relative:
            return self.amount
        if incumbent is None:
            return None
        step = abs(incumbent) * self.amount / 100 if self.percent else self.amount
        return incumbent + step if self.op == "<=" else incumbent - step

    def holds(self, value: float, limit: float) -> bool:
        return {"<=": value <= limit, "<": value < limit, ">=": value >= limit, ">": value > limit}[self.op]


def parse_bound(metric: str, text: str) -> Bound:
    """One bound of `metric.bounds.<metric>`; raises ConfigError naming the key and the forms."""
    key = f"metric.bounds.{metric}"
    m = _RELATIVE.match(text)
    if m:
        return Bound(metric, text.strip(), "<=" if m.group(1) == "+" else ">=", float(m.group(2)), True,
                     bool(m.group(3)))
    m = _ABSOLUTE.match(text)
    if m:
        return Bound(metric, text.strip(), m.group(1), float(m.group(2).replace(" ", "")), False, False)
    raise ConfigError(f"`{key}` has a bound {text!r} that is not understood: write one of {FORMS}")


def check(cfg) -> None:
    """Validate `metric.bounds` (every bound parses and bounds a recorded secondary metric) and the
    checks settings; raises ConfigError naming the key and the fix. Called by config validation."""
    m, e = cfg.metric, cfg.experiment
    recorded = set(m.record) | ({m.memory} if m.memory else set())
    for name, texts in m.bounds.items():
        key = f"metric.bounds.{name}"
        if name == m.name:
            raise ConfigError(f"`{key}` bounds the primary metric, which the policy already judges: "
                              "bound secondary metrics only (use stop.target for a goal)")
        if name not in recorded:
            raise ConfigError(f"`{key}`: {name} is not recorded, so it is never read from the log: "
                              f"add it to `metric.record`, e.g. record = [\"{name}\"]")
        if not texts:
            raise ConfigError(f"`{key}` is empty: give at least one bound, e.g. {name} = \"+10%\"")
        for text in texts:
            parse_bound(name, text)
    if e.checks_timeout_s <= 0:
        raise ConfigError(f"`experiment.checks_timeout_s` must be positive (got {e.checks_timeout_s:g}): "
                          "e.g. checks_timeout_s = 600")
    if not 0 <= e.checks_retries <= MAX_CHECKS_RETRIES:
        raise ConfigError(f"`experiment.checks_retries` must be between 0 and {MAX_CHECKS_RETRIES} (got "
                          f"{e.checks_retries}): the times a failing check is run again, e.g. checks_retries = 1")


