"""`command`: any shell command as the researcher — the generic way to plug in a tool.

The command runs in the experiment's worktree (cwd) as its own process tree, killed at
`agent.timeout_s`. It gets:
- AUTORESEARCH_CONTEXT: path of a Markdown file with everything the agent should see;
- AUTORESEARCH_DESCRIPTION_FILE: a path where it may write a one-line description
  (otherwise the last line it printed is used);
- AUTORESEARCH_WORKTREE, AUTORESEARCH_TAG, AUTORESEARCH_REPAIR (1 when asked to fix a crash).
Whatever it changed in the folder is the proposal; the harness checks and commits it.
A non-zero exit or a timeout is a failed proposal (recorded), not a harness error.
Unlike experiments, the agent keeps the user's environment: it may need API keys.

With bubblewrap it runs confined (Sandbox.wrap_agent): its folder writable, the context and
description files in a private scratch folder, a private HOME and /tmp, no view of the user's
checkout, `.git` or the ledger, no network unless `agent.network` says so, and nothing it
starts outlives it. Absolute paths named in the command are readable (its script); the
folders they are in, when inside /tmp or HOME, writable (its own state between proposals);
the repository stays hidden even inside them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..layout import Layout
from ..procs import run_tree
from ..sandbox import named_paths, state_folders
from ..session import marker_prefix
from .base import Proposal
from .context import Context


def protected_in(ctx: Context, workdir: Path) -> list[Path]:
    """The files of the proposal folder an agent may read but not write: the protected set, the config
    and program.md (the user's)."""
    from ..config import CONFIG_NAME
    from ..globs import matches

    return [workdir / p for p in sorted(ctx.tracked)
            if p in (CONFIG_NAME, "program.md") or matches(p, ctx.cfg.experiment.protected)]


class CommandAgent:
    name = "command"

    def __init__(self, cfg, ledger=None):
        self.cfg = cfg
        if not cfg.agent.command.strip():
            from ..errors import AgentError

            raise AgentError("agent `command` needs a command: set `agent.command` in autoresearch.toml "
                             "or pass --agent-command '<shell command>'")

    def propose(self, ctx: Context, workdir: Path) -> Proposal:
        logs = Layout(self.cfg.root).logs(ctx.tag)
        logs.mkdir(parents=True, exist_ok=True)
        call = ctx.call_id()
        log = logs / f"agent-{call}.log"
        log.unlink(missing_ok=True)
        with tempfile.TemporaryDirectory(prefix="autoresearch-agent-") as tmp:
            ctx_path = Path(tmp) / "context.md"
            ctx_path.write_text(ctx.render(), encoding="utf-8")
            desc_path = Path(tmp) / "description.txt"
            env = dict(os.environ) | {
                "AUTORESEARCH_CONTEXT": str(ctx_path),
                "AUTORESEARCH_DESCRIPTION_FILE": str(desc_path),
                "AUTORESEARCH_WORKTREE": str(workdir),
                "AUTORESEARCH_TAG": ctx.tag,
                "AUTORESEARCH_REPAIR": "1" if ctx.repair is not None else "0",
                "GIT_CEILING_DIRECTORIES": str(workdir.parent),  # git in the folder finds no repository
            }
            wrap = None
            if ctx.sandbox is not None:
                wrap = ctx.sandbox.wrap_agent(folder=workdir, scratch=[Path(tmp)], protected=protected_in(ctx, workdir),
                                              network=self.cfg.agent.network_for(False),
                                              readable=named_paths(self.cfg.agent.command),
                                              writable=state_folders(self.cfg.agent.command))
            res = run_tree(self.cfg.agent.command, cwd=workdir, env=env, log_path=log, wrap=wrap,
                           timeout_s=self.cfg.agent.timeout_s, grace_s=self.cfg.experiment.grace_s,
                           # under the tag's marker prefix: a restart after a SIGKILL finds what it left
                           marker=f"{marker_prefix(self.cfg.root, ctx.tag)}agent:{call}:{os.getpid()}")
            written = desc_path.read_text(encoding="utf-8").strip() if desc_path.exists() else ""
        output = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
        if res.timed_out:
            return Proposal("", error=f"agent command timed out after {self.cfg.agent.timeout_s:g}s (agent.timeout_s)",
                            latency_s=res.wall_s)
        if res.exit_code != 0:
            tail = "\n".join(output.splitlines()[-5:])
            return Proposal("", error=f"agent command exited {res.exit_code}: {tail}", latency_s=res.wall_s)
        lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
        description = (written.splitlines() or [""])[0] or (lines[-1] if lines else "") or "change by the agent command"
        return Proposal(description[:300], rationale="", latency_s=res.wall_s)
