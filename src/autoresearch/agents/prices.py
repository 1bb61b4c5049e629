"""What an LLM call costs: dollars from tokens, by a per-model price table.

Guarantees:
- `cost_usd(model, tokens_in, tokens_out, overrides)` never raises: a model it does
  not know costs 0.0 (local models behind Ollama, vLLM or llama.cpp are free), and
  `price_of()` returns None so a caller can say so.
- Lookup order: `agent.prices` from the config (exact name, then the longest prefix),
  then the defaults below (exact, then longest prefix), after dropping a provider
  prefix such as `openai/` or `anthropic/`. A dated name like `claude-sonnet-4-5-20250929`
  finds `claude-sonnet-4-5`.

Not covered: the defaults are public list prices in USD per million tokens when this
was written; providers change them. Cached-input discounts and batch pricing are
ignored (an upper bound). Put the prices you pay in autoresearch.toml:
    [agent]
    prices = { "my-model" = [0.5, 1.5] }   # USD per 1M input tokens, per 1M output tokens
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

# USD per 1M tokens: (input, output).
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    # Anthropic
    "claude-opus-4-5": (5.0, 25.0),
    "claude-opus-4-1": (15.0, 75.0),
    "claude-opus-4": (15.0, 75.0),
    "claude-sonnet-4-5": (3.0, 15.0),
    "claude-sonnet-4": (3.0, 15.0),
    "claude-3-7-sonnet": (3.0, 15.0),
    "claude-3-5-sonnet": (3.0, 15.0),
    "claude-haiku-4-5": (1.0, 5.0),
    "claude-3-5-haiku": (0.8, 4.0),
    "claude-3-haiku": (0.25, 1.25),
    # OpenAI
    "gpt-5": (1.25, 10.0),
    "gpt-5-mini": (0.25, 2.0),
    "gpt-5-nano": (0.05, 0.4),
    "gpt-4.1": (2.0, 8.0),
    "gpt-4.1-mini": (0.4, 1.6),
    "gpt-4.1-nano": (0.1, 0.4),
    "gpt-4o": (2.5, 10.0),
    "gpt-4o-mini": (0.15, 0.6),
    "o3": (2.0, 8.0),
    "o4-mini": (1.1, 4.4),
    "o3-mini": (1.1, 4.4),
    # Google
    "gemini-2.5-pro": (1.25, 10.0),
    "gemini-2.5-flash": (0.3, 2.5),
    "gemini-2.5-flash-lite": (0.1, 0.4),
    # DeepSeek (also served through OpenRouter as deepseek/deepseek-chat)
    "deepseek-chat": (0.27, 1.1),
    "deepseek-reasoner": (0.55, 2.19),
}


def price_of(model: str, overrides: Optional[Mapping[str, Sequence[float]]] = None) -> Optional[tuple[float, float]]:
    """(usd_per_M_in, usd_per_M_out) for `model`, or None if neither table knows it."""
    if not model:
        return None
    names = [model]
    if "/" in model:
        names.append(model.rsplit("/", 1)[1])  # openai/gpt-4o, openrouter's anthropic/claude-...
    for table in (overrides or {}, DEFAULT_PRICES):
        for name in names:
            hit = _lookup(name, table)
            if hit is not None:
                return hit
    return None


def cost_usd(model: str, tokens_in: int, tokens_out: int,
             overrides: Optional[Mapping[str, Sequence[float]]] = None) -> float:
    p = price_of(model, overrides)
    if p is None:
        return 0.0
    return (max(0, tokens_in) * p[0] + max(0, tokens_out) * p[1]) / 1e6


def _lookup(name: str, table: Mapping[str, Sequence[float]]) -> Optional[tuple[float, float]]:
    if name in table:
        return _pair(table[name])
    prefixes = [k for k in table if name.startswith(k) and name[len(k):len(k) + 1] in ("-", "@", ":", ".", "")]
    if prefixes:
        return _pair(table[max(prefixes, key=len)])
    return None


def _pair(v: Sequence[float]) -> tuple[float, float]:
    return float(v[0]), float(v[1])
