"""The harness's error classes.

These are raised for failures of the *harness* or of the user's input (a broken config,
a dirty checkout, a missing file). An experiment or an agent failing is never an
exception: it is data, recorded in the ledger. Each message names the thing and the fix;
the CLI turns these into one-line messages at its edge and nowhere else.
"""


class AutoresearchError(Exception):
    """Base class: a problem the user can fix; the message says how."""


class ConfigError(AutoresearchError):
    """autoresearch.toml is missing, malformed, or inconsistent."""


class WorkspaceError(AutoresearchError):
    """The git repository is not in a state the harness can work from."""


class LedgerError(AutoresearchError):
    """The ledger database cannot be opened or is from a newer version."""


class AgentError(AutoresearchError):
    """An agent backend cannot be created (unknown name, missing extra, no key)."""


class BusyError(AutoresearchError):
    """Another autoresearch process holds the lock for this tag."""
