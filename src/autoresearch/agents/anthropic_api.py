"""`anthropic`: Claude through Anthropic's Messages API as the researcher.

Uses the official `anthropic` SDK (pip install 'autoresearch[anthropic]'), imported only
when this agent is created, with streaming (so long replies never hit the SDK's limit on
non-streamed requests). The key comes from $ANTHROPIC_API_KEY or the variable named by
`agent.api_key_env`; `agent.base_url` points it at a proxy or a compatible server. The
SDK's own retries are off: llm.py retries, so that every attempt is recorded. Input
tokens include prompt-cache reads and writes.
"""

from __future__ import annotations

import inspect

from .llm import Completion, LLMAgent, api_key, import_sdk


class AnthropicAgent(LLMAgent):
    name = "anthropic"
    backend = "anthropic"
    default_model = "claude-sonnet-4-5"

    def __init__(self, cfg, ledger=None):
        super().__init__(cfg, ledger)
        anthropic = import_sdk("anthropic", "anthropic")
        a = cfg.agent
        self.client = anthropic.Anthropic(api_key=api_key(cfg, "ANTHROPIC_API_KEY"), base_url=a.base_url or None,
                                          timeout=a.request_timeout_s, max_retries=0)
        # Recent SDKs (and models) dropped sampling parameters: send temperature only where it exists.
        self.sampling = {"temperature": a.temperature} if "temperature" in inspect.signature(
            self.client.messages.stream).parameters else {}

    def complete(self, system, messages):
        a = self.cfg.agent
        with self.client.messages.stream(model=self.model, max_tokens=a.max_output_tokens, system=system,
                                         messages=messages, **self.sampling) as stream:
            msg = stream.get_final_message()
        text = "".join(getattr(b, "text", "") for b in msg.content if getattr(b, "type", "") == "text")
        u = msg.usage
        tin = sum(getattr(u, k, 0) or 0 for k in ("input_tokens", "cache_creation_input_tokens",
                                                  "cache_read_input_tokens"))
        return Completion(text=text, tokens_in=tin, tokens_out=u.output_tokens or 0, model=msg.model or self.model)
