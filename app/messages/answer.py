"""The Anthropic Message for a whole chat completion, and the pieces a stream shares with it.

The input is a chat completion the normalizer already fixed (ids present, finish_reason right),
so nothing here repairs a vendor's answer beyond what the Messages shape needs: the vendor's
reasoning becomes a thinking block, its tool calls tool_use blocks with parsed input (arguments
that are not a JSON object make the answer unusable, so the pipeline tries another combination),
and token counts Anthropic's, where input_tokens excludes cache reads.
"""

from __future__ import annotations

import math
import secrets
from typing import Any

import orjson

from app.endpoint import UnusableAnswer
from app.messages.request import ToolNames

__all__ = [
    "estimate_output_tokens",
    "message_usage",
    "new_message_id",
    "reasoning_text",
    "stop_reason",
    "to_message",
    "tool_input",
]

# Chat finish_reason -> Messages stop_reason. Chat does not say which stop sequence ended an
# answer (or whether one did), so "stop" is always end_turn and stop_sequence always null.
_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
# The same estimate the input's is: about 4 characters per token.
_CHARACTERS_PER_TOKEN = 4


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(12)


def to_message(
    completion: dict[str, Any], requested_model: str, tool_names: ToolNames, *, estimated_input_tokens: int = 0
) -> dict[str, Any]:
    """The Message answering a request, from a normalized chat completion.

    Raises UnusableAnswer when the completion holds no answer or a tool call's arguments are not
    a JSON object. Without the vendor's usage, input tokens are ``estimated_input_tokens`` and
    output tokens an estimate from the answer's length (never zero for a non-empty answer).
    """
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UnusableAnswer("answered a chat completion without choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        raise UnusableAnswer("answered a choice without a message")

    content: list[dict[str, Any]] = []
    thinking = reasoning_text(message)
    if thinking:
        content.append({"type": "thinking", "thinking": thinking, "signature": ""})
    text = _text(message.get("content"))
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        text = f"{text}\n\n{refusal}" if text else refusal
    if text:
        content.append({"type": "text", "text": text})
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        if not isinstance(call, dict):
            continue
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or "",
                "name": tool_names.client(function.get("name") or ""),
                "input": tool_input(function.get("arguments")),
            }
        )
    has_calls = any(block["type"] == "tool_use" for block in content)
    usage = message_usage(completion.get("usage"))
    if usage is None:
        usage = {
            "input_tokens": estimated_input_tokens,
            "output_tokens": estimate_output_tokens(content),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
    return {
        "id": new_message_id(),
        "type": "message",
        "role": "assistant",
        "model": requested_model,
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason"), has_calls),
        "stop_sequence": None,
        "usage": usage,
    }


def reasoning_text(message: dict[str, Any]) -> str:
    """The vendor's reasoning in a message or delta: ``reasoning_content`` (DeepSeek, vLLM, and
    most OpenAI-compatible servers) or ``reasoning`` (OpenRouter, Ollama)."""
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def stop_reason(finish_reason: Any, has_tool_calls: bool) -> str:
    """The Messages stop_reason for a chat finish_reason; an answer that called tools stopped for
    tool_use whatever the vendor said (Gemini says "stop"), unless it was cut short."""
    if has_tool_calls and finish_reason not in ("length", "content_filter"):
        return "tool_use"
    return _STOP_REASONS.get(finish_reason, "end_turn") if isinstance(finish_reason, str) else "end_turn"


def tool_input(arguments: Any) -> dict[str, Any]:
    """A tool call's arguments as the object tool_use's ``input`` is; raises UnusableAnswer if
    they are not a JSON object. No arguments at all (some vendors send "") is the empty object."""
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    try:
        value = orjson.loads(arguments) if isinstance(arguments, str) else None
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise UnusableAnswer("answered a tool call whose arguments are not a JSON object")
    return value


def message_usage(usage: Any) -> dict[str, Any] | None:
    """Chat token counts under Anthropic's names, or None when the vendor reported none.

    Chat's prompt_tokens includes cached tokens; Anthropic's input_tokens does not."""
    if not isinstance(usage, dict):
        return None
    prompt = _count(usage.get("prompt_tokens"))
    details = usage.get("prompt_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return {
        "input_tokens": max(prompt - cached, 0),
        "output_tokens": _count(usage.get("completion_tokens")),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


def estimate_output_tokens(content: list[dict[str, Any]]) -> int:
    """About how many tokens these content blocks took to write (for vendors that report none)."""
    characters = 0
    for block in content:
        if block["type"] == "text":
            characters += len(block["text"])
        elif block["type"] == "thinking":
            characters += len(block["thinking"])
        elif block["type"] == "tool_use":
            characters += len(block["name"]) + len(orjson.dumps(block["input"]))
    return math.ceil(characters / _CHARACTERS_PER_TOKEN)


def _text(content: Any) -> str:
    """A message's text: a string, or the text of its parts (some vendors answer a list)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str))
    return ""


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
