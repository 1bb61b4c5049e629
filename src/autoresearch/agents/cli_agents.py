"""Coding-agent CLIs as the researcher: Claude Code, Codex, aider, OpenCode, Gemini CLI.

Each runs headless, once per proposal, in the proposal folder (its cwd) with the
Context as its prompt, through procs.run_tree: its own process tree, killed whole at
`agent.timeout_s` (its processes carry the run's marker, so a restart after a crash of the
harness kills any it left). Each uses only its documented non-interactive flags:

    claude-code  claude -p --output-format json --permission-mode acceptEdits
                 --allowedTools Read,Edit,Write,Glob,Grep[,agent.allowed_tools]   (prompt on stdin)
    codex        codex exec --json --sandbox workspace-write --skip-git-repo-check
                 --output-last-message FILE -                                     (prompt on stdin)
    aider        aider --message-file FILE --yes-always --no-auto-commits --no-dirty-commits
                 --no-git --no-pretty --no-stream --no-check-update --no-analytics
                 --no-show-model-warnings --chat-history-file T --input-history-file T
                 --file <each editable> --read <each protected>
    opencode     opencode run --format json "<one line>"                          (prompt on stdin)
    gemini       gemini -p "<one line>" --output-format json --approval-mode auto_edit (stdin)

plus `--model agent.model` when set and `agent.extra_args` last. The CLI edits files;
the harness commits, and refuses (as a `violation`) any change outside the editable
files. The CLI keeps the user's environment (it needs its login or key);
`agent.base_url` is passed the way each CLI reads it. Scratch files a CLI is known to
leave in the folder (.aider*, .claude/, .gemini/, .opencode/) are removed when the start
commit does not have them, so they never count as changes.

With bubblewrap the CLI runs confined (Sandbox.wrap_agent): its proposal folder writable
(the protected files, the config and program.md read-only), a private HOME holding only
its login files (`logins`, read-only: a token refresh is not written back), a private
/tmp, the network unless `agent.network = false`, and no view of the user's checkout,
`.git`, the ledger or other processes.

Cost: the CLI's own figure where it reports one (Claude Code's total_cost_usd,
OpenCode's per-step cost, aider's "Cost: $X message"), else tokens x the price table.
Every run is one record in Proposal.meta["llm_calls"] (prompt, final message, tokens,
cost, latency, error). The final message's DESCRIPTION:, RATIONALE: and NOTES: sections
become the description, the rationale and a notebook entry.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import AgentError
from ..globs import matches
from ..layout import Layout
from ..procs import run_tree
from ..session import marker_prefix
from . import notebook
from .base import Proposal
from .command import protected_in
from .context import Context
from .llm import sections
from .prices import cost_usd

INSTRUCTIONS = """\
# How to work
You are running headless inside the experiment's working copy. Make ONE focused change by
editing the editable files in place with your file tools. Do not run git or commit, do not
create other files, and do not run the experiment: the harness commits, runs and judges it.
End your final message with these lines:
DESCRIPTION: <one line, under 100 characters, saying what you changed>
RATIONALE: <two or three sentences on why it should improve the metric>
NOTES: <optional: what to remember for later experiments>
"""
ONE_LINE = "Follow the instructions in the text given on standard input."


@dataclass
class Result:
    text: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: Optional[float] = None  # None: the CLI did not say; priced from the table
    model: str = ""
    error: str = ""


@dataclass
class Run:
    prompt_file: Path
    out_file: Path
    tmp: Path
    files: dict[str, list[str]] = field(default_factory=dict)


class CLIAgent:
    name = ""
    program = ""
    install = ""
    scratch: tuple[str, ...] = ()
    logins: tuple[str, ...] = ()  # files under ~ the CLI reads to log in
    prompt_on_stdin = True

    def __init__(self, cfg, ledger=None):
        self.cfg = cfg
        self.exe = cfg.agent.executable or shutil.which(self.program) or self.fallback()
        if not self.exe:
            raise AgentError(f"agent `{self.name}` needs the `{self.program}` CLI on PATH: {self.install} "
                             f"(or set agent.executable to its path)")
        self.env()  # a missing key variable is a config error now, not a failed proposal later

    def fallback(self) -> str:
        return ""

    # -- per CLI ----------------------------------------------------------------------
    def argv(self, run: Run) -> list[str]:  # pragma: no cover
        raise NotImplementedError

    def parse(self, stdout: str, run: Run) -> Result:  # pragma: no cover
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return {}

    def model_args(self) -> list[str]:
        return ["--model", self.cfg.agent.model] if self.cfg.agent.model else []

    # -- the run ----------------------------------------------------------------------
    def propose(self, ctx: Context, workdir: Path) -> Proposal:
        a = self.cfg.agent
        prompt = ctx.render() + "\n" + INSTRUCTIONS
        logs = Layout(self.cfg.root).logs(ctx.tag)
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"agent-{ctx.call_id()}.log"
        log.unlink(missing_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"autoresearch-{self.name}-") as tmp:
            run = Run(Path(tmp) / "prompt.md", Path(tmp) / "stdout.txt", Path(tmp),
                      files={"editable": sorted(ctx.files), "readonly": sorted(ctx.readonly)})
            run.prompt_file.write_text(prompt, encoding="utf-8")
            cmd = shlex.join([self.exe, *self.argv(run), *a.extra_args])
            cmd += (f" < {shlex.quote(str(run.prompt_file))}" if self.prompt_on_stdin else "") \
                + f" > {shlex.quote(str(run.out_file))}"
            env = dict(os.environ) | {"DISABLE_AUTOUPDATER": "1", "NO_COLOR": "1",
                                      "GIT_CEILING_DIRECTORIES": str(workdir.parent)} | self.env()
            wrap = None
            if ctx.sandbox is not None:  # confined: see the module docstring
                wrap = ctx.sandbox.wrap_agent(folder=workdir, scratch=[run.tmp], protected=protected_in(ctx, workdir),
                                              network=a.network_for(True), home_files=self.home_files(),
                                              readable=[Path(self.exe)])
            res = run_tree(cmd, cwd=workdir, env=env, log_path=log, timeout_s=a.timeout_s, wrap=wrap,
                           grace_s=self.cfg.experiment.grace_s,
                           marker=f"{marker_prefix(self.cfg.root, ctx.tag)}agent:{ctx.call_id()}:{os.getpid()}")
            stdout = run.out_file.read_text(encoding="utf-8", errors="replace") if run.out_file.exists() else ""
            try:
                result = self.parse(stdout, run)
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                result = Result(text=stdout[-4000:], error=f"could not read the CLI's output ({type(e).__name__}: {e})")
        self.clean(workdir, ctx.tracked)
        stderr = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
        model = result.model or a.model
        cost = result.cost_usd if result.cost_usd is not None else cost_usd(model, result.tokens_in,
                                                                            result.tokens_out, a.prices)
        error = result.error
        if res.timed_out:
            error = f"{self.name} timed out after {a.timeout_s:g}s (agent.timeout_s) and was killed"
        elif res.exit_code != 0:
            tail = " | ".join((stderr or stdout).strip().splitlines()[-5:])
            error = f"{self.name} exited {res.exit_code}" + (f": {tail[-600:]}" if tail else "") + \
                (f" ({result.error})" if result.error else "")
        call = {"backend": self.name, "model": model, "prompt": prompt, "reply": result.text or stdout[-20000:],
                "tokens_in": result.tokens_in, "tokens_out": result.tokens_out, "cost_usd": cost,
                "latency_s": round(res.wall_s, 4), "error": error}
        base = dict(tokens_in=result.tokens_in, tokens_out=result.tokens_out, cost_usd=cost, latency_s=res.wall_s,
                    meta={"llm_calls": [call], "model": model, "log": str(log)})
        if error:
            return Proposal("", error=error, **base)
        desc, rationale, notes = sections(result.text)
        if not desc:
            lines = [ln.strip() for ln in result.text.splitlines() if ln.strip()]
            desc = (lines[-1] if lines else "") or f"change by {self.name}"
        notebook.append(self.cfg.root, ctx.tag, notes, experiment=len(ctx.history), description=desc)
        return Proposal(desc[:300], rationale=rationale, **base)

    def home_files(self) -> list[Path]:
        """The login files the CLI needs in its private HOME (bound read-only when they exist)."""
        return [Path(os.path.expanduser(p)) for p in self.logins]

    def clean(self, workdir: Path, tracked: frozenset = frozenset()) -> None:
        """Remove the CLI's known scratch files from the folder, unless the start commit has them.
        Walked with lstat (a link is removed as a link, never followed); no git runs there."""
        if not self.scratch:
            return
        stack = [workdir]
        while stack:
            d = stack.pop()
            for entry in os.scandir(d):
                rel = Path(entry.path).relative_to(workdir).as_posix()
                if matches(rel, [f"**/{g}" for g in self.scratch]) and \
                        not any(t == rel or t.startswith(rel + "/") for t in tracked):
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path, ignore_errors=True)
                    else:
                        os.unlink(entry.path)
                elif entry.is_dir(follow_symlinks=False) and entry.name != ".git":
                    stack.append(Path(entry.path))


class ClaudeCodeAgent(CLIAgent):
    name = "claude-code"
    program = "claude"
    install = "npm install -g @anthropic-ai/claude-code (or pip install 'autoresearch[claude]', which bundles it)"
    scratch = (".claude",)
    logins = ("~/.claude/.credentials.json", "~/.claude.json")
    tools = ("Read", "Edit", "Write", "Glob", "Grep")

    def fallback(self) -> str:
        from .select import bundled_claude

        return bundled_claude()

    def argv(self, run: Run) -> list[str]:
        tools = list(dict.fromkeys([*self.tools, *self.cfg.agent.allowed_tools]))
        return ["-p", "--output-format", "json", "--permission-mode", "acceptEdits",
                "--allowedTools", ",".join(tools), *self.model_args()]

    def env(self) -> dict[str, str]:
        return _endpoint(self.cfg, "ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY")

    def parse(self, stdout: str, run: Run) -> Result:
        doc = _last_json(stdout, lambda d: d.get("type") == "result")
        if doc is None:
            return Result(text=stdout[-4000:], error="no JSON result on stdout (--output-format json)")
        u = doc.get("usage") or {}
        tin = sum(int(u.get(k) or 0) for k in ("input_tokens", "cache_creation_input_tokens",
                                               "cache_read_input_tokens"))
        models = list((doc.get("modelUsage") or {}).keys())
        error = "" if not doc.get("is_error") else f"Claude Code reported an error: {doc.get('subtype')}: " \
                                                   f"{str(doc.get('result'))[:300]}"
        cost = doc.get("total_cost_usd")
        return Result(str(doc.get("result") or ""), tin, int(u.get("output_tokens") or 0),
                      float(cost) if cost is not None else None, models[0] if models else "", error)


class CodexAgent(CLIAgent):
    name = "codex"
    program = "codex"
    install = "npm install -g @openai/codex"
    logins = ("~/.codex/auth.json", "~/.codex/config.toml")

    def argv(self, run: Run) -> list[str]:
        return ["exec", "--json", "--sandbox", "workspace-write", "--skip-git-repo-check",
                "--output-last-message", str(run.tmp / "last.md"), *self.model_args(), "-"]

    def env(self) -> dict[str, str]:
        return _endpoint(self.cfg, "OPENAI_BASE_URL", "OPENAI_API_KEY")

    def parse(self, stdout: str, run: Run) -> Result:
        r = Result()
        for doc in _json_lines(stdout):
            kind = doc.get("type", "")
            if kind == "turn.completed":
                u = doc.get("usage") or {}
                r.tokens_in += int(u.get("input_tokens") or 0)
                r.tokens_out += int(u.get("output_tokens") or 0)
            elif kind == "item.completed" and (doc.get("item") or {}).get("type") in ("agent_message",
                                                                                       "assistant_message"):
                r.text = doc["item"].get("text") or r.text
            elif kind in ("turn.failed", "error"):
                err = doc.get("error") or doc
                r.error = f"codex reported: {(err.get('message') if isinstance(err, dict) else err) or kind}"
        last = run.tmp / "last.md"
        if last.exists() and last.read_text(encoding="utf-8").strip():
            r.text = last.read_text(encoding="utf-8")
        return r


class AiderAgent(CLIAgent):
    name = "aider"
    program = "aider"
    install = "python -m pip install aider-install && aider-install"
    scratch = (".aider*",)
    logins = ("~/.aider.conf.yml", "~/.env")
    prompt_on_stdin = False

    def argv(self, run: Run) -> list[str]:
        a = self.cfg.agent
        args = ["--message-file", str(run.prompt_file), "--yes-always", "--no-auto-commits", "--no-dirty-commits",
                "--no-git", "--no-pretty", "--no-stream", "--no-check-update", "--no-analytics",
                "--no-show-model-warnings", "--chat-history-file", str(run.tmp / "chat.md"),
                "--input-history-file", str(run.tmp / "input.history"), *self.model_args()]
        if a.base_url:
            args += ["--openai-api-base", a.base_url]
        for rel in run.files["editable"]:
            args += ["--file", rel]
        for rel in run.files["readonly"]:
            args += ["--read", rel]
        return args

    def parse(self, stdout: str, run: Run) -> Result:
        r = Result(text=stdout[-20000:])
        for m in re.finditer(r"Tokens:\s*([\d.,]+)([kKmM]?) sent.*?([\d.,]+)([kKmM]?) received", stdout):
            r.tokens_in += _count(m.group(1), m.group(2))
            r.tokens_out += _count(m.group(3), m.group(4))
        costs = [float(c) for c in re.findall(r"Cost:\s*\$([\d.]+) message", stdout)]
        r.cost_usd = sum(costs) if costs else None
        return r


class OpenCodeAgent(CLIAgent):
    name = "opencode"
    program = "opencode"
    install = "npm install -g opencode-ai"
    scratch = (".opencode",)
    logins = ("~/.local/share/opencode/auth.json", "~/.config/opencode")

    def argv(self, run: Run) -> list[str]:
        return ["run", "--format", "json", *self.model_args(), ONE_LINE]

    def parse(self, stdout: str, run: Run) -> Result:
        r, texts, cost = Result(), [], 0.0
        for doc in _json_lines(stdout):
            part = doc.get("part") or {}
            if doc.get("type") == "text" and part.get("text"):
                texts.append(part["text"])
            elif doc.get("type") == "step_finish":
                t = part.get("tokens") or {}
                r.tokens_in += int(t.get("input") or 0)
                r.tokens_out += int(t.get("output") or 0)
                cost += float(part.get("cost") or 0.0)
            elif doc.get("type") == "error":
                err = doc.get("error") or {}
                r.error = f"opencode reported: {err.get('message') if isinstance(err, dict) else err}"
        r.text = "\n".join(texts)
        r.cost_usd = cost if cost > 0 else None
        return r


class GeminiAgent(CLIAgent):
    name = "gemini"
    program = "gemini"
    install = "npm install -g @google/gemini-cli"
    scratch = (".gemini",)
    logins = ("~/.gemini/oauth_creds.json", "~/.gemini/settings.json", "~/.gemini/google_accounts.json")

    def argv(self, run: Run) -> list[str]:
        return ["-p", ONE_LINE, "--output-format", "json", "--approval-mode", "auto_edit", *self.model_args()]

    def env(self) -> dict[str, str]:
        return _endpoint(self.cfg, "GOOGLE_GEMINI_BASE_URL", "GEMINI_API_KEY")

    def parse(self, stdout: str, run: Run) -> Result:
        doc = _last_json(stdout, lambda d: "response" in d or "error" in d)
        if doc is None:
            return Result(text=stdout[-4000:], error="no JSON on stdout (--output-format json)")
        r = Result(text=str(doc.get("response") or ""))
        for model, stats in ((doc.get("stats") or {}).get("models") or {}).items():
            t = stats.get("tokens") or {}
            r.tokens_in += int(t.get("prompt") or 0)
            r.tokens_out += int(t.get("candidates") or 0) + int(t.get("thoughts") or 0)
            r.model = r.model or model
        if doc.get("error"):
            err = doc["error"]
            r.error = f"gemini reported: {err.get('message') if isinstance(err, dict) else err}"
        return r


def _endpoint(cfg, url_var: str, key_var: str) -> dict[str, str]:
    env = {}
    if cfg.agent.base_url:
        env[url_var] = cfg.agent.base_url
    if cfg.agent.api_key_env:
        value = os.environ.get(cfg.agent.api_key_env, "")
        if not value:
            raise AgentError(f"agent.api_key_env names ${cfg.agent.api_key_env}, which is not set: export it")
        env[key_var] = value
    return env


def _json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                out.append(doc)
    return out


def _last_json(text: str, want) -> Optional[dict[str, Any]]:
    try:
        doc = json.loads(text)
        if isinstance(doc, dict) and want(doc):
            return doc
    except ValueError:
        pass
    return next((d for d in reversed(_json_lines(text)) if want(d)), None)


def _count(number: str, suffix: str) -> int:
    n = float(number.replace(",", ""))
    return int(n * {"k": 1e3, "m": 1e6}.get(suffix.lower(), 1))
