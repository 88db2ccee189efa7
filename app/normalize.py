"""Making every vendor's answer a valid OpenAI answer, for whole answers and stream chunks.

What is changed, and only this: ``model`` becomes the name the client asked for; ``id``,
``object`` and ``created`` are always present (one id and created per stream); every tool call has
an id and an index (in a stream on the call's first delta, one id per call, as OpenAI sends it;
calls sent whole under one index or none, as Gemini does, each get their own index and id);
``finish_reason`` "stop" on a choice that called tools becomes "tool_calls" (Gemini); vendor error
bodies become OpenAI error objects (Gemini sends a JSON array). Nothing is invented beyond that:
no usage, no fingerprints.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from app.redact import redact

__all__ = ["StreamNormalizer", "new_completion_id", "normalize_completion", "vendor_error"]

# The OpenAI type for an error of each status, used when a vendor's error carries none.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def new_completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def new_tool_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def normalize_completion(answer: dict[str, Any], requested_model: str) -> dict[str, Any]:
    """Fix a whole chat.completion in place and return it."""
    answer["model"] = requested_model
    if not isinstance(answer.get("id"), str) or not answer["id"]:
        answer["id"] = new_completion_id()
    if not isinstance(answer.get("object"), str):
        answer["object"] = "chat.completion"
    if not _is_int(answer.get("created")):
        answer["created"] = int(time.time())
    choices = answer.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            message = choice.get("message") if isinstance(choice, dict) else None
            if not isinstance(message, dict):
                continue
            tool_calls = message.get("tool_calls")
            if isinstance(tool_calls, list) and tool_calls:
                for call in tool_calls:
                    if isinstance(call, dict):
                        if not isinstance(call.get("id"), str) or not call["id"]:
                            call["id"] = new_tool_call_id()
                        call.setdefault("type", "function")
                if choice.get("finish_reason") == "stop":
                    choice["finish_reason"] = "tool_calls"
    return answer


def first_choice(document: dict[str, Any]) -> dict[str, Any] | None:
    """The choice with index 0 of a chat completion or chunk, if it holds one: the router asks
    for one answer per request, and translations read only that one."""
    choices = document.get("choices")
    if not isinstance(choices, list):
        return None
    for choice in choices:
        if isinstance(choice, dict) and choice.get("index", 0) == 0:
            return choice
    return None


class StreamNormalizer:
    """Fixes the chunks of one stream; holds what must stay the same from chunk to chunk."""

    def __init__(self, requested_model: str) -> None:
        self._model = requested_model
        self._id: str | None = None
        self._created: int = 0
        # (choice index, the vendor's index for a call) -> the call now at that vendor index.
        self._tool_calls: dict[tuple[int, int], _ToolCall] = {}
        # choice index -> how many tool calls it has started: the next call's index.
        self._tool_call_counts: dict[int, int] = {}
        self._choices_with_tools: set[int] = set()
        self.finished: set[int] = set()  # the choices (by index) that reported their finish_reason
        # The vendor's token counts, from the usage chunk sent when the client asked for one.
        self.usage: dict[str, Any] | None = None

    @property
    def finish_seen(self) -> bool:
        """Whether any choice reported a finish_reason: a stream that ends before one was cut off."""
        return bool(self.finished)

    def chunk(self, chunk: dict[str, Any]) -> dict[str, Any]:
        """Fix one chat.completion.chunk in place and return it."""
        if self._id is None:
            vendor_id = chunk.get("id")
            self._id = vendor_id if isinstance(vendor_id, str) and vendor_id else new_completion_id()
            created = chunk.get("created")
            self._created = created if _is_int(created) else int(time.time())
        chunk["id"] = self._id
        chunk["created"] = self._created
        chunk["model"] = self._model
        if not isinstance(chunk.get("object"), str):
            chunk["object"] = "chat.completion.chunk"
        choices = chunk.get("choices")
        if isinstance(choices, list):
            for position, choice in enumerate(choices):
                if isinstance(choice, dict):
                    self._fix_choice(choice, position)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        return chunk

    def _fix_choice(self, choice: dict[str, Any], position: int) -> None:
        index = choice.get("index")
        if not _is_int(index):
            index = position
        delta = choice.get("delta")
        tool_calls = delta.get("tool_calls") if isinstance(delta, dict) else None
        if isinstance(tool_calls, list) and tool_calls:
            self._choices_with_tools.add(index)
            self._fix_tool_calls(index, tool_calls)
        finish_reason = choice.get("finish_reason")
        if finish_reason:
            self.finished.add(index)
            if finish_reason == "stop" and index in self._choices_with_tools:
                choice["finish_reason"] = "tool_calls"

    def _fix_tool_calls(self, choice_index: int, tool_calls: list[Any]) -> None:
        claimed: set[int] = set()
        for position, call in enumerate(tool_calls):
            if not isinstance(call, dict):
                continue
            key = call.get("index")
            if not _is_int(key) or key in claimed:
                # No index, or two calls of one delta claiming the same one: the call's place in
                # the delta is the only identity it has.
                key = position if position not in claimed else max(claimed) + 1
            claimed.add(key)
            vendor_id = call.get("id") if isinstance(call.get("id"), str) else ""
            function = call.get("function")
            name = function.get("name") if isinstance(function, dict) else None
            known = self._tool_calls.get((choice_index, key))
            if known is None or known.started_by(vendor_id, bool(name)):
                # Indexes are dense and in order of appearance: clients accumulate calls in a
                # list by index. Gemini sends every call whole under one index (or none).
                index = self._tool_call_counts.get(choice_index, 0)
                self._tool_call_counts[choice_index] = index + 1
                known = _ToolCall(index, vendor_id or new_tool_call_id(), vendor_id)
                self._tool_calls[(choice_index, key)] = known
                call["id"] = known.id
                call.setdefault("type", "function")
            elif "id" in call:
                call["id"] = known.id
            known.named = known.named or bool(name)
            call["index"] = known.index


@dataclass
class _ToolCall:
    """One tool call of a stream as the client sees it."""

    index: int
    id: str
    vendor_id: str
    named: bool = False

    def started_by(self, vendor_id: str, named: bool) -> bool:
        """Whether a delta at this call's vendor index is really the start of another call.

        It is when it names a function though this call already has its name (a repeated name
        under this call's own id is not), or carries a different non-empty id.
        """
        same_id = bool(vendor_id) and vendor_id == self.vendor_id
        other_id = bool(vendor_id) and bool(self.vendor_id) and vendor_id != self.vendor_id
        return other_id or (named and self.named and not same_id)


def vendor_error(status: int, document: Any, text: str = "") -> dict[str, Any]:
    """An OpenAI error object for a vendor's error answer, whatever shape the vendor used.

    ``document`` is the parsed JSON body (None if it was not JSON); ``text`` the raw body, used
    only for short plain-text answers. Anything shaped like a key is redacted from the message.
    """
    if isinstance(document, list) and document:
        # Gemini wraps its error object in a one-element array.
        document = document[0]
    error = document.get("error") if isinstance(document, dict) else None
    if isinstance(error, str):
        error = {"message": error}
    if not isinstance(error, dict):
        if isinstance(document, dict) and isinstance(document.get("message"), str):
            error = {"message": document["message"]}
        else:
            error = {"message": _describe_body(status, text)}

    message = error.get("message")
    vendor_code = error.get("code")
    vendor_status = error.get("status")
    code = vendor_code if isinstance(vendor_code, str) else vendor_status if isinstance(vendor_status, str) else None
    kind = error.get("type")
    param = error.get("param")
    return {
        "message": redact(message if isinstance(message, str) else str(message or "")),
        "type": kind if isinstance(kind, str) and kind else _ERROR_TYPES.get(status, "api_error"),
        "param": param if isinstance(param, str) else None,
        "code": code,
    }


def _describe_body(status: int, text: str) -> str:
    snippet = " ".join(text.split())[:200]
    if not snippet or snippet.startswith("<"):
        # An HTML error page says nothing useful to an API client.
        return f"The vendor answered HTTP {status} without an error message."
    return f"The vendor answered HTTP {status}: {snippet}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
