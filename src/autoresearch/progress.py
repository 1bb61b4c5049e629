"""Progress lines: what a run prints while it trains, so a person watching sees it move.

Any run, in any language, may print progress lines to its output (flushed). The format:

    step <N> | <field> | <field> ...

- a line that starts with `step` and a whole number (leading zeros are fine: `step 00120`);
- then fields separated by `|`, each either `NAME VALUE` (`loss 3.2145`, `lr 0.02`,
  `loss=3.2`, `loss: 3.2`) or `VALUE UNIT` (`41,230 tok/s`, `40% of budget`); numbers may
  have `,` or `_` thousands separators.

The GPT template prints `step 00120 | loss 3.2145 | 41,230 tok/s | 40% of budget` every
ten seconds; the quickstart prints `step 1710 | loss 0.6837 | 25% of budget` every half
second.
Recognised for display: the step, the loss (`loss` or `train_loss`) and the throughput
(`tok/s`, `tokens/s` or `tokens_per_s`); other fields are kept as text. The live view
(live.py) and `autoresearch watch` (watch.py) show the last progress line of the log.

Guarantees: parsing never raises; a line that does not follow the format is not
progress (so a metric line like `val_bpb: 1.02` is never mistaken for one); reading a
log reads only its last `TAIL_BYTES`. Not covered: progress is display only; nothing the
harness decides rests on it, and a run may print whatever it likes there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

TAIL_BYTES = 16384
_NUM = r"[-+]?(?:\d[\d,_]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_LINE = re.compile(r"^\s*step\s+(\d+)\s*(?:\|(.*))?$")
_NAMED = re.compile(rf"^(?P<name>[A-Za-z_][\w./]*)\s*[:=]?\s*(?P<value>{_NUM})$")
_UNIT = re.compile(rf"^(?P<value>{_NUM})\s*(?P<unit>\S.*)$")
LOSS_NAMES = ("loss", "train_loss")
RATE_NAMES = ("tok/s", "tokens/s", "tokens_per_s", "tok_per_s")


@dataclass
class Progress:
    step: int
    loss: Optional[float] = None
    tokens_per_s: Optional[float] = None
    fields: dict[str, str] = field(default_factory=dict)  # every field as printed, by name or unit

    def text(self) -> str:
        """One line for a person: `step 120 · loss 3.2145 · 41,230 tok/s`."""
        parts = [f"step {self.step}"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4g}")
        if self.tokens_per_s is not None:
            parts.append(f"{self.tokens_per_s:,.0f} tok/s")
        return " · ".join(parts)


def _number(text: str) -> Optional[float]:
    try:
        return float(text.replace(",", "").replace("_", ""))
    except ValueError:
        return None


def parse_line(line: str) -> Optional[Progress]:
    """The progress a line reports, or None when it is not a progress line."""
    m = _LINE.match(line)
    if m is None:
        return None
    p = Progress(int(m.group(1)))
    for part in (m.group(2) or "").split("|"):
        part = part.strip()
        if not part:
            continue
        named, unit = _NAMED.match(part), _UNIT.match(part)
        if named:
            key, value = named.group("name").lower(), named.group("value")
        elif unit:
            key, value = unit.group("unit").strip().lower(), unit.group("value")
        else:
            continue
        p.fields[key] = value
        number = _number(value)
        if key in LOSS_NAMES and p.loss is None:
            p.loss = number
        elif key in RATE_NAMES and p.tokens_per_s is None:
            p.tokens_per_s = number
    return p


def last_progress(log: "str | Path | None") -> Optional[Progress]:
    """The last progress line of a log (its last TAIL_BYTES), or None (no log, no progress yet)."""
    if not log:
        return None
    try:
        with open(log, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - TAIL_BYTES))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    for line in reversed(text.replace("\r", "\n").splitlines()):
        p = parse_line(line)
        if p is not None:
            return p
    return None
