"""What a call uses, in tokens and in dollars: the vendor's usage, prices per token, and the
estimates (about 4 characters a token) used before the vendor reports or when it never does."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.catalog import Price


__all__ = ["CHARACTERS_PER_TOKEN", "Rates", "Usage", "answer_tokens", "chunk_tokens", "dearest", "rates", "text_tokens"]

# English text and code average about 4 characters per token with the common tokenizers.
CHARACTERS_PER_TOKEN = 4


# -- usage and prices -------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """Tokens one answer cost: input (cached included), the cached part of it, and output."""

    input: int = 0
    cached_input: int = 0
    output: int = 0

    @classmethod
    def from_vendor(cls, usage: object) -> Usage | None:
        """A vendor's chat or embeddings ``usage`` object, or None when it holds no counts."""
        if not isinstance(usage, dict):
            return None
        prompt, completion = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
        if prompt is None and completion is None:
            return None
        details = usage.get("prompt_tokens_details")
        cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else None
        prompt = prompt or 0
        return cls(prompt, min(cached or 0, prompt), completion or 0)


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


@dataclass(frozen=True)
class Rates:
    """What one token costs in a limit's unit: input, cached input, output."""

    input: float
    cached_input: float
    output: float

    def cost(self, usage: Usage) -> float:
        fresh = usage.input - usage.cached_input
        return fresh * self.input + usage.cached_input * self.cached_input + usage.output * self.output


_TOKEN_RATES = Rates(1.0, 1.0, 1.0)


def rates(unit: str, price: Price | None) -> Rates:
    """A token's cost in ``unit``: 1 in tokens; USD per million / 1e6 in usd."""
    if unit == "tokens":
        return _TOKEN_RATES
    if price is None:
        raise AssertionError("a usd budget with an unpriced model")  # check_prices stops start-up first
    return Rates(price.input / 1e6, price.cached_input / 1e6, price.output / 1e6)


def dearest(prices: Sequence[Price | None]) -> Price | None:
    """The highest of each rate among ``prices``: what a reservation before the choice assumes."""
    from app.catalog import Price

    known = [price for price in prices if price is not None]
    if not known:
        return None
    return Price(
        max(price.input for price in known),
        max(price.output for price in known),
        max(price.cached_input for price in known),
    )


def text_tokens(characters: int) -> int:
    return -(-characters // CHARACTERS_PER_TOKEN)


def chunk_tokens(chunk: dict[str, Any]) -> int:
    """About how many output tokens a normalized chat stream chunk carries (text, reasoning, tool calls)."""
    characters = 0
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        return 0
    for choice in choices:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if isinstance(delta, dict):
            characters += _message_characters(delta)
    return text_tokens(characters)


def answer_tokens(document: dict[str, Any]) -> int:
    """About how many output tokens a whole chat completion holds (for a vendor that sent no usage)."""
    characters = 0
    choices = document.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            message = choice.get("message") if isinstance(choice, dict) else None
            if isinstance(message, dict):
                characters += _message_characters(message)
    return text_tokens(characters)


def _message_characters(part: dict[str, Any]) -> int:
    characters = 0
    for key in ("content", "reasoning_content", "reasoning", "refusal"):
        text = part.get(key)
        if isinstance(text, str):
            characters += len(text)
    calls = part.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                for key in ("name", "arguments"):
                    text = function.get(key)
                    if isinstance(text, str):
                        characters += len(text)
    return characters
