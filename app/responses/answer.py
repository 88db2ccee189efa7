"""The Responses answer object, built from a chat completion (whole) or from a stream's parts.

The input is a chat completion the normalizer already fixed (ids present, finish_reason right), so
nothing here repairs a vendor's answer: it only changes its shape. The object carries every field
the official SDKs require, the request's settings echoed back, and ``store: false`` because the
router stores nothing.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

__all__ = [
    "function_call_item",
    "incomplete_reason",
    "message_item",
    "new_function_call_id",
    "new_message_id",
    "new_response_id",
    "output_text_part",
    "refusal_part",
    "response_error",
    "response_object",
    "response_usage",
    "to_response",
]

# The chat finish_reasons that cut an answer short, and how the Responses API names each.
_INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}
# A response's error code comes from a closed list (the SDKs type it so); of that list, these are
# what a vendor failing mid-answer can mean, and anything else is reported as server_error.
_RESPONSE_ERROR_CODES = frozenset({"server_error", "rate_limit_exceeded"})


def new_response_id() -> str:
    return "resp_" + secrets.token_hex(24)


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(24)


def new_function_call_id() -> str:
    return "fc_" + secrets.token_hex(24)


def to_response(completion: dict[str, Any], request: dict[str, Any], model: str) -> dict[str, Any]:
    """The whole Responses answer for a normalized chat completion answering ``request``."""
    choices = completion.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    reason = incomplete_reason(choice.get("finish_reason"))
    status = "incomplete" if reason else "completed"

    parts = []
    text, refusal = message.get("content"), message.get("refusal")
    if isinstance(text, str) and text:
        parts.append(output_text_part(text))
    if isinstance(refusal, str) and refusal:
        parts.append(refusal_part(refusal))
    calls = message.get("tool_calls")
    calls = [call for call in calls if isinstance(call, dict)] if isinstance(calls, list) else []
    if not parts and not calls:
        parts.append(output_text_part(""))  # an empty answer is still an answer: one empty message
    output = [message_item(new_message_id(), parts, status)] if parts else []
    for call in calls:
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        output.append(
            function_call_item(
                new_function_call_id(), call["id"], function.get("name", ""), function.get("arguments", ""), status
            )
        )
    created = completion.get("created")
    return response_object(
        request,
        model,
        response_id=new_response_id(),
        created_at=created if isinstance(created, int) else int(time.time()),
        status=status,
        output=output,
        usage=response_usage(completion.get("usage")),
        incomplete=reason,
    )


def incomplete_reason(finish_reason: Any) -> str | None:
    """Why an answer with this chat finish_reason is incomplete, or None if it is complete."""
    return _INCOMPLETE_REASONS.get(finish_reason) if isinstance(finish_reason, str) else None


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": []}


def refusal_part(refusal: str) -> dict[str, Any]:
    return {"type": "refusal", "refusal": refusal}


def message_item(item_id: str, content: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": content}


def function_call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def response_usage(usage: Any) -> dict[str, Any] | None:
    """Chat token counts under their Responses names; None when the vendor reported none."""
    if not isinstance(usage, dict):
        return None
    prompt = _count(usage.get("prompt_tokens"))
    completion = _count(usage.get("completion_tokens"))
    total = usage.get("total_tokens")
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": _count(prompt_details.get("cached_tokens")) if isinstance(prompt_details, dict) else 0,
            "cache_write_tokens": 0,
        },
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": (
                _count(completion_details.get("reasoning_tokens")) if isinstance(completion_details, dict) else 0
            ),
        },
        # The vendor's total, when it sent one: it may count tokens neither side itemizes.
        "total_tokens": total if _is_int(total) else prompt + completion,
    }


def response_error(error: dict[str, Any]) -> dict[str, Any]:
    """A response's ``error`` for an OpenAI error object; codes outside the API's set become server_error."""
    code = error.get("code")
    message = error.get("message")
    return {
        "code": code if code in _RESPONSE_ERROR_CODES else "server_error",
        "message": message if isinstance(message, str) and message else "The vendor failed while answering.",
    }


def response_object(
    request: dict[str, Any],
    model: str,
    *,
    response_id: str,
    created_at: int,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None = None,
    incomplete: str | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A response object in any state, with the request's settings echoed as OpenAI echoes them."""
    text = request.get("text") if isinstance(request.get("text"), dict) else {}
    reasoning = request.get("reasoning") if isinstance(request.get("reasoning"), dict) else {}
    answer = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "metadata": request.get("metadata") or {},
        "model": model,
        "output": output,
        "parallel_tool_calls": request.get("parallel_tool_calls") is not False,
        "previous_response_id": None,
        # The effort is sent on (as chat's reasoning_effort); a summary is never made, since chat
        # answers carry no reasoning summary: echoing the request's would claim it was honoured.
        "reasoning": {"effort": reasoning.get("effort"), "summary": None},
        "store": False,
        "temperature": request.get("temperature"),
        "text": {**text, "format": text.get("format") or {"type": "text"}},
        "tool_choice": request.get("tool_choice") or "auto",
        "tools": request.get("tools") or [],
        "top_p": request.get("top_p"),
        "truncation": request.get("truncation") or "disabled",
        "usage": usage,
        "user": request.get("user"),
    }
    if status == "completed":
        answer["completed_at"] = int(time.time())
    return answer


def _count(value: Any) -> int:
    return value if _is_int(value) else 0


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
