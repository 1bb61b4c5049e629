"""What a policy answers: `Verdict` (keep or not, the reason, the evidence, and the (commit, seed)
runs still wanted).

Every policy module imports it; policy.py makes the policies by name, so no policy module needs
policy.py and the imports run one way. The one rule every policy shares — a patch that only
changes a seed is discarded — is integrity.seed_only_change.
Not covered: how a verdict is reached (policy.py, policy_confirm.py) or recorded (winners.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Verdict:
    keep: bool
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)
    more_runs: list[tuple[str, int]] = field(default_factory=list)
