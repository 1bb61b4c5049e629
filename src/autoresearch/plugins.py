"""Backends as plugins: one lookup for agents and engines alike.

A backend is a class registered under an entry-point group (`autoresearch.agents`,
`autoresearch.engines`). The built-ins register exactly as a third-party package would;
the `builtin` map is used only when the package runs from a source tree without installed
metadata. An unknown name raises the given error class with a close-match suggestion.
"""

from __future__ import annotations

import difflib
import importlib
from importlib import metadata


def available(group: str, builtin: dict[str, str]) -> dict[str, str]:
    found = dict(builtin)
    for ep in metadata.entry_points(group=group):
        found[ep.name] = ep.value
    return found


def load(group: str, builtin: dict[str, str], name: str, error: type[Exception], key: str) -> type:
    """The class registered as `name`; `key` is the config key named in the error (e.g. agent.name)."""
    registry = available(group, builtin)
    if name not in registry:
        close = difflib.get_close_matches(name, list(registry), n=1)
        hint = f"did you mean `{close[0]}`?" if close else f"available: {', '.join(sorted(registry))}"
        raise error(f"unknown {key.split('.')[0]} `{name}` ({key}): {hint}")
    for ep in metadata.entry_points(group=group):
        if ep.name == name:
            return ep.load()
    module, _, attr = registry[name].partition(":")
    return getattr(importlib.import_module(module), attr)
