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

from app.capabilities import PART_CAPABILITY

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
# A video costs by its length (Gemini: ~263-300 tokens a second). Sent inline its size says about
# how long it is (~1 token per 400 bytes at 1-2 Mbit/s); by URL it counts as a minute's worth.
VIDEO_TOKENS = 16000
VIDEO_BYTES_PER_TOKEN = 400
# Audio costs by its length too (OpenAI ~10, Gemini 32 tokens a second); its size says about how
# long it is: ~1,600 bytes a second of compressed speech, so ~50 bytes a token (a WAV, ten times
# larger, is overestimated, never under). By URL it counts as a minute's worth.
AUDIO_BYTES_PER_TOKEN = 50
AUDIO_TOKENS = 2000
# The part types that are images or videos, as the selector knows them.
_IMAGE_PARTS = frozenset(kind for kind, need in PART_CAPABILITY.items() if need == "image")
_VIDEO_PARTS = frozenset(kind for kind, need in PART_CAPABILITY.items() if need == "video")
# A message's own fields that are not input: short identifiers, and the reasoning an agent loop
# sends back with an earlier answer (vendors drop it or refuse it, none bills it).
_NOT_INPUT = frozenset(
    {"role", "name", "tool_call_id", "content", "tool_calls", "reasoning_content", "reasoning", "reasoning_details"}
)
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
    JSON at 4 characters per token, 4 per message for its framing, 1,600 per image, 2,000 per
    page of each PDF (pages counted in the file itself; a file whose pages cannot be counted
    counts as one page), video and audio by their size when inline (else a minute's worth), other
    files by their characters; any other content part, message field (a legacy ``function_call``,
    a ``refusal``) and body field than the settings above by its JSON at 4 characters per token.
    """
    characters = 0
    tokens = 0
    for message in chat.get("messages") or ():
        tokens += MESSAGE_OVERHEAD
        if not isinstance(message, dict):
            characters += _json_length(message)
            continue
        content = message.get("content")
        if isinstance(content, str):
            characters += len(content)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    characters += _json_length(part)
                elif part.get("type") == "text":
                    text = part.get("text")
                    characters += len(text) if isinstance(text, str) else 0
                else:
                    tokens += _part_tokens(part)
        tool_calls = message.get("tool_calls")
        for call in tool_calls if isinstance(tool_calls, list) else ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                for field in ("name", "arguments"):
                    value = function.get(field)
                    characters += len(value) if isinstance(value, str) else 0
        for name, value in message.items():
            if name not in _NOT_INPUT and value is not None:
                characters += _json_length(value)
    tools = chat.get("tools")
    if tools:
        characters += _json_length(tools)
    for name, value in chat.items():
        if name not in _SETTINGS and name not in _COUNTED and value is not None:
            characters += _json_length(value)
    return max(1, tokens + math.ceil(characters / CHARACTERS_PER_TOKEN))


def _part_tokens(part: dict[str, Any]) -> int:
    """About what one content part other than text costs, in tokens."""
    kind = part.get("type")
    if kind in _IMAGE_PARTS:
        return IMAGE_TOKENS
    if kind in _VIDEO_PARTS:
        size = _inline_size(_url_of(part.get(kind)))
        return VIDEO_TOKENS if size is None else max(1, math.ceil(size / VIDEO_BYTES_PER_TOKEN))
    if kind == "file":
        file = part.get("file")
        data = file.get("file_data") if isinstance(file, dict) else None
        if isinstance(data, str) and not data.startswith("data:application/pdf"):
            size = _inline_size(data)  # text or another kind of file: its characters
            if size is not None:
                return math.ceil(size / CHARACTERS_PER_TOKEN)
        return PDF_PAGE_TOKENS * (_pdf_pages(data) if isinstance(data, str) else 1)
    if kind in ("input_audio", "audio_url"):
        audio = part.get(kind)
        if kind == "input_audio" and isinstance(audio, dict) and isinstance(audio.get("data"), str):
            size: int | None = len(audio["data"]) * 3 // 4  # base64: 4 characters, 3 bytes
        else:
            size = _inline_size(_url_of(audio))
        return AUDIO_TOKENS if size is None else max(1, math.ceil(size / AUDIO_BYTES_PER_TOKEN))
    return math.ceil(_json_length(part) / CHARACTERS_PER_TOKEN)


def _url_of(value: Any) -> Any:
    """A part's URL: ``{"url": ...}`` or the string itself."""
    return value.get("url") if isinstance(value, dict) else value


def _inline_size(url: Any) -> int | None:
    """The bytes a ``data:`` URL holds (base64 or not); None for anything else."""
    if not isinstance(url, str) or not url.startswith("data:"):
        return None
    head, _, data = url.partition(",")
    return len(data) * 3 // 4 if head.endswith(";base64") else len(data)


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
