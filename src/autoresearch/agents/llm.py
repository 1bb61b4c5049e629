"""Shared by the LLM API backends: the prompt, reading the reply, retries, re-asks, cost.

`LLMAgent.propose()` is the whole exchange for one proposal:

    prompt   the Context (bounded by agent.context_tokens) and the reply format
    call     the backend's `complete()`, retried on 408/409/429/5xx, timeouts and lost
             connections with exponential backoff, honouring `retry-after(-ms)` headers
             (up to agent.max_retries retries per request; the SDKs' own retries are off)
    read     the reply: DESCRIPTION, RATIONALE, the edit blocks (see edits.py), NOTES
    apply    all blocks or none; a reply that cannot be read or applied, or that
             repeats a change tried before, goes back to the model with the reason, up
             to agent.max_reasks times
    record   every request (prompt, reply, tokens, cost, latency, error) in
             Proposal.meta["llm_calls"], which the loop logs to the ledger linked to the
             experiment; the Proposal carries the totals

Guarantees: propose() never raises for the model's or the network's failures: they end
as Proposal.error with everything spent still counted. The worktree is left either
unchanged or with one whole, applied edit. A backend implements `complete(system,
messages) -> Completion` and raises its SDK's exceptions; `classify()` reads status
codes and headers from them by duck typing, so both SDKs share one retry policy.
"""

from __future__ import annotations

import email.utils
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..errors import AgentError
from ..workspace import Git
from . import notebook
from .base import Proposal
from .context import Context, estimate_tokens
from .edits import EditError, Edit, apply_edits, split_reply
from .prices import cost_usd, price_of

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 529}
MAX_WAIT_S = 120.0

SYSTEM_PROMPT = """\
You are an expert researcher and engineer working inside an automated experiment loop.
Each turn you propose exactly one change to the code, the harness measures it under a fixed
time budget, and keeps it only if the metric improves. You cannot run anything yourself.
Think about what the history shows, then make one focused, well-motivated change."""

REPLY_FORMAT = """\
# How to reply
Reply in exactly this format:

DESCRIPTION: <one line, under 100 characters, saying what the change is (e.g. "raise LR to 0.04")>
RATIONALE: <two or three sentences: why you expect it to improve the metric>

<path of the file>
<<<<<<< SEARCH
<lines copied exactly from the current file>
=======
<the lines that replace them>
>>>>>>> REPLACE

NOTES: <optional: what to remember for later experiments (ideas, what to avoid); kept in your notebook>

Rules for edits: the SEARCH text must match the file exactly (copy it, whitespace included) and
appear once; include enough lines to be unique, but keep blocks small. Use several blocks for
several places. To replace a whole small file (or create one), write its path, then
`<<<<<<< FILE`, the full new content, and `>>>>>>> END`. Edit only the editable files."""

REASK = """\
Your reply could not be used: {problem}
Nothing was applied; the files are as shown before. Reply again in the required format
(DESCRIPTION, RATIONALE, edit blocks, optional NOTES), with a corrected edit."""


class ReplyError(AgentError):
    """A reply the harness cannot use; the message is for the model."""


@dataclass
class Reply:
    description: str
    rationale: str
    edits: list[Edit]
    notes: str = ""


@dataclass
class Completion:
    text: str
    tokens_in: int
    tokens_out: int
    model: str = ""


_SECTION = re.compile(r"^\s*(?:#+\s*)?\**\s*(DESCRIPTION|RATIONALE|NOTES)\s*\**\s*:?\s*\**\s*(.*)$", re.IGNORECASE)


def sections(prose: str) -> tuple[str, str, str]:
    """(description, rationale, notes) from the DESCRIPTION:, RATIONALE: and NOTES: sections of a text."""
    found: dict[str, list[str]] = {}
    current = None
    for line in prose.splitlines():
        m = _SECTION.match(line)
        if m:
            current = m.group(1).upper()
            found.setdefault(current, [])
            if m.group(2).strip():
                found[current].append(m.group(2).strip())
        elif current:
            found[current].append(line)
    desc = " ".join(" ".join(found.get("DESCRIPTION", [])).split()).strip("*` ")
    return desc, "\n".join(found.get("RATIONALE", [])).strip(), "\n".join(found.get("NOTES", [])).strip()


def parse_reply(text: str) -> Reply:
    try:
        edits, prose = split_reply(text or "")
    except EditError as e:
        raise ReplyError(str(e)) from None
    desc, rationale, notes = sections(prose)
    if not edits:
        raise ReplyError("it contains no edit block. Give the change as `<path>` then `<<<<<<< SEARCH` ... "
                         "`=======` ... `>>>>>>> REPLACE`.")
    if not desc:
        first = next((ln.strip() for ln in (rationale or "").splitlines() if ln.strip()), "")
        desc = first.split(". ")[0][:120]
    if not desc:
        raise ReplyError("it has no `DESCRIPTION:` line saying in one line what the change is.")
    return Reply(desc[:300], rationale, edits, notes)


def classify(exc: BaseException) -> tuple[bool, Optional[float], str]:
    """(retry?, wait from retry-after or None, a one-line message) for an SDK exception."""
    status = getattr(exc, "status_code", None)
    names = {c.__name__ for c in type(exc).__mro__}
    msg = f"{type(exc).__name__}: {_one_line(str(exc))}"
    if status is not None:
        return status in RETRY_STATUS or status >= 500, retry_after(exc), f"HTTP {status}: {msg}"
    if names & {"APITimeoutError", "APIConnectionError", "TimeoutException", "ConnectError", "TimeoutError",
                "ConnectionError", "RemoteProtocolError"}:
        return True, None, msg
    return False, None, msg


def retry_after(exc: BaseException) -> Optional[float]:
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return min(MAX_WAIT_S, max(0.0, float(ms) / 1000))
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return min(MAX_WAIT_S, max(0.0, float(value)))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value).timestamp()
            return min(MAX_WAIT_S, max(0.0, when - time.time()))
    except (TypeError, ValueError, AttributeError):
        return None


class LLMAgent:
    """Base of the API backends; a subclass sets `name`, `default_model` and `complete()`."""

    name = "llm"
    backend = "llm"
    default_model = ""
    backoff_base_s = 1.0  # first backoff without retry-after; doubles each retry, with jitter

    def __init__(self, cfg, ledger=None):
        self.cfg = cfg
        a = cfg.agent
        self.model = a.model or self.default_model
        self.max_retries = a.max_retries
        self.max_reasks = a.max_reasks
        self.sleep = time.sleep

    # -- a backend implements this -------------------------------------------------------
    def complete(self, system: str, messages: list[dict[str, str]]) -> Completion:  # pragma: no cover
        raise NotImplementedError

    # -- the exchange ------------------------------------------------------------------
    def propose(self, ctx: Context, workdir: Path) -> Proposal:
        fmt = REPLY_FORMAT + (" This is a repair: fix the crash shown above." if ctx.repair is not None else "")
        user = ctx.render(max(1000, self.cfg.agent.context_tokens - estimate_tokens(SYSTEM_PROMPT + fmt))) \
            + "\n" + fmt
        messages = [{"role": "user", "content": user}]
        calls: list[dict[str, Any]] = []
        problem = ""
        t0 = time.monotonic()
        for attempt in range(self.max_reasks + 1):
            completion, error = self._call(SYSTEM_PROMPT, messages, calls)
            if completion is None:
                return self._proposal("", "", calls, t0, error=f"{self.name} ({self.model}): {error}")
            try:
                reply = parse_reply(completion.text)
                applied = apply_edits(workdir, reply.edits)
            except (ReplyError, EditError) as e:
                problem = str(e)
            else:
                seen = ctx.find_repeat(Git(workdir)("diff", "HEAD", check=False))
                if seen is None:
                    notebook.append(self.cfg.root, ctx.tag, reply.notes, experiment=len(ctx.history),
                                    description=reply.description)
                    return self._proposal(reply.description, reply.rationale, calls, t0,
                                          meta={"reasks": attempt, "files": applied.paths})
                applied.undo()
                problem = (f"this exact change was already tried as #{seen.id} (\"{seen.description}\", "
                           f"{seen.status}). Propose a different change.")
            if attempt < self.max_reasks:
                messages = messages + [{"role": "assistant", "content": completion.text or "(empty)"},
                                       {"role": "user", "content": REASK.format(problem=problem)}]
        return self._proposal("", "", calls, t0, error=f"no usable edit after {self.max_reasks + 1} replies "
                                                        f"(agent.max_reasks): {problem}")

    def _call(self, system: str, messages: list[dict[str, str]],
              calls: list[dict[str, Any]]) -> tuple[Optional[Completion], str]:
        prompt = render_prompt(system, messages)
        error = ""
        for attempt in range(self.max_retries + 1):
            t = time.monotonic()
            try:
                c = self.complete(system, messages)
            except Exception as e:  # the SDK's errors are data: classified, recorded, maybe retried
                retry, wait, error = classify(e)
                calls.append(self._record(prompt, "", 0, 0, time.monotonic() - t, error))
                if not retry or attempt == self.max_retries:
                    break
                self.sleep(wait if wait is not None else self.backoff(attempt))
                continue
            tin = c.tokens_in or estimate_tokens(prompt)
            tout = c.tokens_out or estimate_tokens(c.text)
            calls.append(self._record(prompt, c.text, tin, tout, time.monotonic() - t, "", c.model))
            return c, ""
        return None, f"{error} (gave up after {attempt + 1} attempt{'s' if attempt else ''}; agent.max_retries)"

    def backoff(self, attempt: int) -> float:
        return min(MAX_WAIT_S, self.backoff_base_s * (2 ** attempt)) * random.uniform(0.8, 1.2)

    def _record(self, prompt: str, reply: str, tin: int, tout: int, latency: float, error: str,
                model: str = "") -> dict[str, Any]:
        prices = self.cfg.agent.prices
        # Priced by the configured name when it has a price (the server may report a variant), else by the reported.
        priced = self.model if price_of(self.model, prices) or not model else model
        model = model or self.model
        return {"backend": self.backend, "model": model, "prompt": prompt, "reply": reply, "tokens_in": int(tin),
                "tokens_out": int(tout), "cost_usd": cost_usd(priced, tin, tout, prices),
                "latency_s": round(latency, 4), "error": error}

    def _proposal(self, description: str, rationale: str, calls: list[dict[str, Any]], t0: float,
                  error: str = "", meta: Optional[dict[str, Any]] = None) -> Proposal:
        return Proposal(description, rationale=rationale, error=error,
                        tokens_in=sum(c["tokens_in"] for c in calls), tokens_out=sum(c["tokens_out"] for c in calls),
                        cost_usd=sum(c["cost_usd"] for c in calls), latency_s=time.monotonic() - t0,
                        meta={"llm_calls": calls, "model": self.model, **(meta or {})})


def api_key(cfg, default_env: str, *, optional: bool = False) -> Optional[str]:
    """The key from agent.api_key_env (or the backend's usual variable); AgentError naming it when unset."""
    import os

    env = cfg.agent.api_key_env or default_env
    value = os.environ.get(env, "").strip()
    if value:
        return value
    if optional and not cfg.agent.api_key_env:
        return None
    raise AgentError(f"agent `{cfg.agent.name}` needs an API key in ${env}: export {env}=... "
                     f"(or name another variable with agent.api_key_env)")


def import_sdk(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise AgentError(f"the `{module}` package is not installed: pip install 'autoresearch[{extra}]'") from None


def render_prompt(system: str, messages: list[dict[str, str]]) -> str:
    return "\n\n".join([f"[system]\n{system}"] + [f"[{m['role']}]\n{m['content']}" for m in messages])


def _one_line(s: str) -> str:
    return " ".join(s.split())[:300]
