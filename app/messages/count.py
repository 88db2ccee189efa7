"""An estimate of a translated request's input tokens, without asking a vendor.

Used for ``/v1/messages/count_tokens`` and for the ``input_tokens`` of a stream's
``message_start`` (sent before the vendor has counted anything; ``message_delta`` later carries
the vendor's count). Clients use it to decide when to compact a conversation, so it errs a little
high rather than low.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from typing import Any

import orjson

__all__ = ["estimate_input_tokens"]

# English text and code average about 4 characters per token with OpenAI's, Gemini's and
# Anthropic's tokenizers.
CHARACTERS_PER_TOKEN = 4
# Per message: the role and the separators a chat template wraps around it.
MESSAGE_OVERHEAD = 4
# An image costs what a ~1.15 megapixel one does on Anthropic (the most before it is downscaled).
IMAGE_TOKENS = 1600
# A PDF page is sent as its text and an image of it: 1,500-3,000 tokens per page on Anthropic.
PDF_PAGE_TOKENS = 2000
_PDF_PAGE = re.compile(rb"/Type\s*/Page(?!s)")


# Fields of a chat request that tune the answer and are not billed as input: left out of the
# estimate. Every other field (response_format's schema, legacy functions, a prediction, fields
# this list does not know) counts by its JSON, so a client cannot hide input from a budget.
_SETTINGS = frozenset(
    {
        "model", "stream", "stream_options", "max_tokens", "max_completion_tokens", "n", "temperature",
        "top_p", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "seed",
        "stop", "user", "store", "service_tier", "parallel_tool_calls", "reasoning_effort", "verbosity",
        "modalities", "prompt_cache_key", "safety_identifier", "metadata",
    }
)  # fmt: skip
_COUNTED = frozenset({"messages", "tools"})  # counted part by part below


def estimate_input_tokens(chat: dict[str, Any]) -> int:
    """About how many input tokens ``chat`` (a chat-completions request) holds; at least 1.

    The sum of: every text (message contents, tool calls' names and arguments) and the tools'
    JSON at 4 characters per token, 4 per message for its framing, 1,600 per image and 2,000 per
    page of each PDF (pages counted in the file itself; a file whose pages cannot be counted
    counts as one page); any other content part (audio, say) and any other field than the
    settings above by their JSON at 4 characters per token.
    """
    characters = 0
    tokens = 0
    for message in chat.get("messages") or ():
        tokens += MESSAGE_OVERHEAD
        content = message.get("content")
        if isinstance(content, str):
            characters += len(content)
        elif isinstance(content, list):
            for part in content:
                kind = part.get("type")
                if kind == "text":
                    characters += len(part.get("text") or "")
                elif kind == "image_url":
                    tokens += IMAGE_TOKENS
                elif kind == "file":
                    tokens += PDF_PAGE_TOKENS * _pdf_pages(part.get("file", {}).get("file_data", ""))
                else:
                    characters += _json_length(part)
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            characters += len(function.get("name") or "") + len(function.get("arguments") or "")
    tools = chat.get("tools")
    if tools:
        characters += _json_length(tools)
    for name, value in chat.items():
        if name not in _SETTINGS and name not in _COUNTED and value is not None:
            characters += _json_length(value)
    return max(1, tokens + math.ceil(characters / CHARACTERS_PER_TOKEN))


def _json_length(value: Any) -> int:
    try:
        return len(orjson.dumps(value))
    except TypeError:  # nested deeper than orjson writes: the vendor body fails with a 400 anyway
        return 0


def _pdf_pages(data_url: str) -> int:
    """The pages of a PDF given as a base64 data: URL (1 when they cannot be counted)."""
    _, _, encoded = data_url.partition(",")
    try:
        document = base64.b64decode(encoded, validate=False)
    except (binascii.Error, ValueError):
        return 1
    return max(1, len(_PDF_PAGE.findall(document)))
