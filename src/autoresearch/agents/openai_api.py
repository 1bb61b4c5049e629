"""`openai`: OpenAI's chat completions, and any server that speaks them, as the researcher.

One backend for OpenAI itself and every OpenAI-compatible server: set `agent.base_url`
(Ollama: http://localhost:11434/v1, vLLM: http://localhost:8000/v1, llama.cpp server:
http://localhost:8080/v1, OpenRouter: https://openrouter.ai/api/v1) and `agent.model`.
The key comes from $OPENAI_API_KEY or the variable named by `agent.api_key_env`; a local
server that needs no key gets a placeholder when neither is set.

Uses the official `openai` SDK (pip install 'autoresearch[openai]'), imported only when
this agent is created. The SDK's own retries are off: llm.py retries, so that every
attempt is recorded. Reasoning models (o1/o3/o4, gpt-5) get no temperature and
`max_completion_tokens`; compatible servers get the widely supported `max_tokens`.
"""

from __future__ import annotations

from .llm import Completion, LLMAgent, api_key, import_sdk

REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")


class OpenAIAgent(LLMAgent):
    name = "openai"
    backend = "openai"
    default_model = "gpt-4.1"

    def __init__(self, cfg, ledger=None):
        super().__init__(cfg, ledger)
        openai = import_sdk("openai", "openai")
        a = cfg.agent
        key = api_key(cfg, "OPENAI_API_KEY", optional=bool(a.base_url)) or "sk-no-key-needed"
        self.client = openai.OpenAI(api_key=key, base_url=a.base_url or None, timeout=a.request_timeout_s,
                                    max_retries=0)
        self.compatible = bool(a.base_url) and "api.openai.com" not in a.base_url

    def complete(self, system, messages):
        a = self.cfg.agent
        reasoning = self.model.split("/")[-1].startswith(REASONING_PREFIXES)
        kwargs = {"model": self.model, "messages": [{"role": "system", "content": system}, *messages]}
        if self.compatible and not reasoning:
            kwargs["max_tokens"] = a.max_output_tokens
        else:
            kwargs["max_completion_tokens"] = a.max_output_tokens
        if not reasoning:
            kwargs["temperature"] = a.temperature
        resp = self.client.chat.completions.create(**kwargs)
        text = (resp.choices[0].message.content or "") if resp.choices else ""
        usage = resp.usage
        return Completion(text=text, tokens_in=getattr(usage, "prompt_tokens", 0) or 0,
                          tokens_out=getattr(usage, "completion_tokens", 0) or 0, model=resp.model or self.model)
