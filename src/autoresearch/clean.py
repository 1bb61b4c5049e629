"""Text an agent controls, made safe to store and show: descriptions, rationales, agent errors.

An agent's words reach results.tsv (one row per line, tab-separated), the console (a
terminal that obeys escape sequences), commit messages (git refuses a NUL) and the
reports. So the harness cleans them once, where it builds the row (loop.new_experiment,
tool mode's `-m`), and every view gets the same plain text.

Guarantees of `one_line()` (and `paragraphs()`, which keeps line breaks):
- no terminal escape sequence survives: CSI (`ESC [ ... m`, colours, cursor moves), OSC
  (`ESC ] ... BEL` or `ESC ] ... ESC \\`, hyperlinks and window titles), other two-byte
  ESC sequences and their 8-bit C1 forms;
- no control character: C0 (NUL included), DEL, C1, Unicode line/paragraph separators,
  lone surrogates (not encodable as UTF-8), and the bidirectional overrides and isolates
  that make text display in an order other than the stored one;
- whitespace runs become one space (line breaks kept by `paragraphs()`), ends stripped;
- at most `limit` characters, a cut marked with "…".

Not covered: look-alike characters (homoglyphs) and zero-width joiners pass: they cannot
move the cursor or break a row, only mislead a reader.
"""

from __future__ import annotations

import re

DESCRIPTION_CHARS = 500  # a results.tsv row and a commit subject stay readable
RATIONALE_CHARS = 4000
REASON_CHARS = 2000
_READ_AT_MOST = 1 << 16  # longer input is cut first: cleaning costs linear time in what is read

_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"  # CSI: ESC [ or 8-bit CSI, params, intermediates, final byte
    r"|(?:\x1b\]|\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # OSC up to BEL or ST (or the end)
    r"|(?:\x1b[PX^_]|[\x90\x98\x9e\x9f])[^\x1b\x9c]*(?:\x1b\\|\x9c)?"  # DCS, SOS, PM, APC strings
    r"|\x1b[ -/]*[0-~]?"  # any other escape: ESC, intermediates, final byte
)
_BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_CONTROLS = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029{_BIDI}\ud800-\udfff]")


def one_line(text: object, limit: int = DESCRIPTION_CHARS) -> str:
    """`text` as one plain line of at most `limit` characters (see the module docstring)."""
    return _cap(" ".join(_plain(text).split()), limit)


def paragraphs(text: object, limit: int = RATIONALE_CHARS) -> str:
    """Like one_line() but line breaks are kept (at most one blank line in a row)."""
    lines = [" ".join(ln.split()) for ln in _plain(text).split("\n")]
    out = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return _cap(out, limit)


def _plain(text: object) -> str:
    s = str(text or "")[:_READ_AT_MOST]
    s = _ESCAPES.sub("", s).replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    return _CONTROLS.sub(" ", s)


def _cap(s: str, limit: int) -> str:
    return s if len(s) <= limit else s[:max(limit - 1, 0)].rstrip() + "…"
