"""autoresearch: a research loop owned by the harness.

An agent proposes a change to the editable files; the harness commits it, runs the
experiment under a fixed budget, reads one metric, and keeps the commit only if the
acceptance policy says it improved. Every attempt is a row in a SQLite ledger.

The public Python API mirrors the CLI verbs; everything else is private.
"""

__version__ = "0.1.0"

from .errors import AutoresearchError, ConfigError  # noqa: E402

__all__ = ["AutoresearchError", "ConfigError", "__version__"]
