"""Token counts in a vendor's chat-completions ``usage``, read one way for metrics and logs.

OpenAI's convention, which OpenAI-compatible vendors follow: ``prompt_tokens`` includes the
cached input tokens, reported apart in ``prompt_tokens_details.cached_tokens`` (Anthropic's
``input_tokens`` excludes them: app/messages/answer.py translates).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["TokenCounts", "token_counts"]


@dataclass(frozen=True)
class TokenCounts:
    """One answer's tokens: ``input`` includes ``cached_input``, the part the vendor read from its cache."""

    input: int
    cached_input: int
    output: int


def token_counts(usage: Any) -> TokenCounts | None:
    """The counts in a vendor's ``usage`` object; None when it sent none. Missing or invalid
    numbers count 0, and cached input never exceeds the input it is part of."""
    if not isinstance(usage, dict):
        return None
    prompt = _count(usage.get("prompt_tokens"))
    details = usage.get("prompt_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return TokenCounts(prompt, min(cached, prompt), _count(usage.get("completion_tokens")))


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
