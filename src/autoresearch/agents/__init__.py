"""Agent backends: the researcher that proposes the next change.

Protocol (see base.py): `propose(ctx, workdir) -> Proposal`. The agent edits files in
`workdir` (a clean worktree at the incumbent) and returns a one-line description; the
harness — not the agent — checks, commits and judges what changed. An agent failing to
propose is data (`Proposal.error`), never an exception out of the loop.

Backends are plugins: every built-in is registered under the entry-point group
`autoresearch.agents` exactly as a third-party package would register its own.
"""

from __future__ import annotations

from .. import plugins
from ..errors import AgentError
from .base import Agent, Proposal
from .select import Choice, choose

GROUP = "autoresearch.agents"

# Used only when the package runs from a source tree without installed metadata.
_BUILTIN = {
    "mutate": "autoresearch.agents.mutate:MutateAgent",
    "command": "autoresearch.agents.command:CommandAgent",
    "openai": "autoresearch.agents.openai_api:OpenAIAgent",
    "anthropic": "autoresearch.agents.anthropic_api:AnthropicAgent",
    "claude-code": "autoresearch.agents.cli_agents:ClaudeCodeAgent",
    "codex": "autoresearch.agents.cli_agents:CodexAgent",
    "aider": "autoresearch.agents.cli_agents:AiderAgent",
    "opencode": "autoresearch.agents.cli_agents:OpenCodeAgent",
    "gemini": "autoresearch.agents.cli_agents:GeminiAgent",
}


def available() -> dict[str, str]:
    return plugins.available(GROUP, _BUILTIN)


def create(name: str, cfg, ledger=None) -> Agent:
    """The agent registered as `name` (`auto`: the one select.choose() picks)."""
    if name == "auto":
        name = choose(cfg).name
    return plugins.load(GROUP, _BUILTIN, name, AgentError, "agent.name")(cfg, ledger)


__all__ = ["Agent", "Choice", "Proposal", "available", "choose", "create"]
