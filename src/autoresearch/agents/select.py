"""Which agent a run uses when the config does not say: `agent.name = "auto"` (the default).

The first that is available, in this order, and why:
1. an agent named in autoresearch.toml or with --agent (anything but `auto`);
2. an API key in the environment whose SDK is installed: $ANTHROPIC_API_KEY -> `anthropic`,
   $OPENAI_API_KEY -> `openai` (a key whose SDK is missing is skipped, with the pip line);
3. a coding-agent CLI on PATH: claude -> `claude-code`, then codex, aider, opencode,
   gemini (the copy of claude bundled inside the claude-agent-sdk package is used when
   `claude-code` is named, but never picked automatically: installing a library is not
   choosing an agent);
4. `mutate`, the offline baseline that needs nothing.

`choose()` only looks (environment variables, PATH, importability); it starts nothing and
never reads a key's value beyond checking that it is set.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass

API_KEYS = (("ANTHROPIC_API_KEY", "anthropic", "anthropic"), ("OPENAI_API_KEY", "openai", "openai"))
CLIS = (("claude", "claude-code"), ("codex", "codex"), ("aider", "aider"), ("opencode", "opencode"),
        ("gemini", "gemini"))


@dataclass
class Choice:
    name: str
    reason: str


def choose(cfg) -> Choice:
    name = cfg.agent.name
    if name and name != "auto":
        return Choice(name, "named in the config or with --agent")
    skipped = []
    for env, agent, module in API_KEYS:
        if os.environ.get(env, "").strip():
            if importlib.util.find_spec(module) is None:
                skipped.append(f"${env} is set but the `{module}` package is missing "
                               f"(pip install 'autoresearch[{agent}]')")
                continue
            return Choice(agent, f"${env} is set" + _note(skipped))
    for program, agent in CLIS:
        found = shutil.which(program)
        if found:
            return Choice(agent, f"`{program}` found at {found}" + _note(skipped))
    return Choice("mutate", "no API key ($ANTHROPIC_API_KEY, $OPENAI_API_KEY) and no coding-agent CLI (claude, codex, "
                            "aider, opencode, gemini) found: the offline baseline" + _note(skipped))


def bundled_claude() -> str:
    """The Claude Code CLI that the `claude-agent-sdk` package ships, if installed."""
    spec = importlib.util.find_spec("claude_agent_sdk")
    if spec is None or not spec.submodule_search_locations:
        return ""
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, "_bundled", "claude")
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return ""


def _note(skipped: list[str]) -> str:
    return f" ({'; '.join(skipped)})" if skipped else ""
