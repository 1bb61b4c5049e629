"""What a policy answers, and the one rule every policy shares.

Owns: `Verdict` (keep or not, the reason, the evidence, and the (commit, seed) runs still wanted)
and `seed_only_change` (a patch that only changes a seed is a new draw of the noise, never an
improvement). Every policy module imports these; policy.py makes the policies by name, so no
policy module needs policy.py and the imports run one way.
Not covered: how a verdict is reached (policy.py, policy_confirm.py) or recorded (loop.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Verdict:
    keep: bool
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)
    more_runs: list[tuple[str, int]] = field(default_factory=list)


_NUMBER = re.compile(r"(?<![A-Za-z_])[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_SEED = re.compile(r"seed", re.IGNORECASE)


def seed_only_change(patch: str) -> bool:
    """True when a unified diff only changes a seed: every removed line is replaced by an added
    line that mentions a seed and differs from it only in numbers (comments and spacing aside).

    Such a change draws the noise again; it is never research. Pure additions or removals,
    new or deleted files and binary changes are not seed-only (the policy judges them).
    """
    groups: list[tuple[list[str], list[str]]] = []
    minus: list[str] = []
    plus: list[str] = []
    for line in patch.splitlines():
        if line.startswith(("---", "+++")):
            continue
        if line.startswith(("new file", "deleted file", "Binary files", "rename ", "similarity ")):
            return False
        if line.startswith("-"):
            if plus:
                groups.append((minus, plus))
                minus, plus = [], []
            minus.append(line[1:])
        elif line.startswith("+"):
            plus.append(line[1:])
        elif minus or plus:
            groups.append((minus, plus))
            minus, plus = [], []
    if minus or plus:
        groups.append((minus, plus))
    if not groups:
        return False
    for old, new in groups:
        if len(old) != len(new):
            return False
        for a, b in zip(old, new):
            if not (_SEED.search(a) and _SEED.search(b)) or _shape(a) != _shape(b) or a.strip() == b.strip():
                return False
    return True


def _shape(line: str) -> str:
    code = line.split("#", 1)[0]
    return " ".join(_NUMBER.sub("#", code).split())
