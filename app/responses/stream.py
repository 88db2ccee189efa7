"""Turning a stream of (normalized) chat.completion.chunks into Responses API events, as they come.

Event order follows OpenAI's: response.created and response.in_progress first; then per output
item ``output_item.added``, its deltas, its ``.done`` events and ``output_item.done``; then
response.completed (or response.incomplete when the answer was cut short) carrying the whole
response with usage. The assistant's text is one message item; a tool call that starts closes
it, and each tool call (by its chat ``index``) is one function_call item, closed at the end,
since the chunks of parallel calls may interleave.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.errors import RouterError
from app.normalize import first_choice
from app.responses.answer import (
    function_call_item,
    incomplete_reason,
    message_item,
    new_function_call_id,
    new_message_id,
    new_response_id,
    output_text_part,
    refusal_part,
    response_error,
    response_object,
    response_usage,
)
from app.sse import KEEPALIVE, named_event

__all__ = ["ResponsesStream"]


@dataclass
class _Part:
    """One content part of the message: output_text or refusal, and its text so far."""

    kind: str
    text: str = ""

    def as_json(self) -> dict[str, Any]:
        return output_text_part(self.text) if self.kind == "output_text" else refusal_part(self.text)


@dataclass
class _Message:
    id: str
    output_index: int
    parts: list[_Part] = field(default_factory=list)
    status: str = "in_progress"

    def as_json(self) -> dict[str, Any]:
        return message_item(self.id, [part.as_json() for part in self.parts], self.status)


@dataclass
class _Call:
    id: str
    output_index: int
    call_id: str
    name: str
    arguments: str = ""
    status: str = "in_progress"

    def as_json(self) -> dict[str, Any]:
        return function_call_item(self.id, self.call_id, self.name, self.arguments, self.status)


class ResponsesStream:
    """The Responses events of one streamed answer, as the relay asks for them (a StreamTranslator):
    ``opening``, ``event`` per chat chunk, then ``done`` (the vendor finished) or ``failed`` (it
    broke off). Each returns ready SSE bytes."""

    ended = False  # its end, response.completed, is done()'s

    def __init__(self, request: dict[str, Any], model: str) -> None:
        self._request = request
        self._model = model
        self._id = new_response_id()
        self._created = int(time.time())
        self._sequence = 0
        self._items: list[_Message | _Call] = []
        self._message: _Message | None = None  # the message item text goes to, while open
        self._calls: dict[int, _Call] = {}  # by the chat tool call's index
        self._finish_reason: str | None = None
        self._usage: dict[str, Any] | None = None

    def opening(self) -> bytes:
        """response.created and response.in_progress."""
        response = self._response("in_progress")
        return self._event("response.created", response=response) + self._event(
            "response.in_progress", response=response
        )

    def event(self, chunk: dict[str, Any], fields: tuple[bytes, ...] = ()) -> bytes:
        """The events one chat chunk brings (b"" when it brings none, e.g. a role-only delta).

        The chunk's other SSE ``fields`` (event names, ids) are dropped: each Responses event
        carries its own name and sequence number."""
        events: list[bytes] = []
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = usage
        choice = first_choice(chunk)
        if choice is not None:
            delta = choice.get("delta")
            if isinstance(delta, dict):
                for kind, key in (("output_text", "content"), ("refusal", "refusal")):
                    text = delta.get(key)
                    if isinstance(text, str) and text:
                        self._text(kind, text, events)
                calls = delta.get("tool_calls")
                if isinstance(calls, list):
                    for call in calls:
                        if isinstance(call, dict):
                            self._tool_call(call, events)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        return b"".join(events)

    def done(self) -> bytes:
        """Every open item's .done events, then response.completed (or .incomplete) with usage."""
        events: list[bytes] = []
        reason = incomplete_reason(self._finish_reason)
        status = "incomplete" if reason else "completed"
        if not self._items:
            # An empty answer is still an answer: one message with empty text, as a whole answer has.
            self._text("output_text", "", events)
        for item in self._items:
            if item.status == "in_progress":
                self._close(item, status, events)
        events.append(
            self._event(
                "response.incomplete" if reason else "response.completed",
                response=self._response(status, incomplete=reason),
            )
        )
        return b"".join(events)

    def failed(self, failure: RouterError) -> bytes:
        """End the stream for a vendor failure after it started.

        As OpenAI's API does: an ``error`` event whose top-level ``error`` object makes the official
        SDKs raise, then response.failed for clients that follow the response's lifecycle.
        """
        detail = failure.body()["error"]
        # The documented event has code/message/param at the top, the API nests them in "error":
        # clients read one or the other, so both are sent.
        failed = self._event(
            "error", code=detail["code"], message=detail["message"], param=detail["param"], error=detail
        )
        for item in self._items:
            if item.status == "in_progress":
                item.status = "incomplete"  # cut off: no .done events follow, as with OpenAI
        response = self._response("failed", error=response_error(detail))
        return failed + self._event("response.failed", response=response)

    def keepalive(self) -> bytes:
        """An SSE comment: every SSE client ignores it, and it carries no sequence number."""
        return KEEPALIVE

    # -- items ---------------------------------------------------------------------------------

    def _text(self, kind: str, delta: str, events: list[bytes]) -> None:
        message = self._message
        if message is None:
            message = _Message(new_message_id(), len(self._items))
            self._items.append(message)
            self._message = message
            events.append(self._item_event("response.output_item.added", message))
        part = message.parts[-1] if message.parts else None
        if part is None or part.kind != kind:
            if part is not None:
                self._close_part(message, events)
            part = _Part(kind)
            message.parts.append(part)
            events.append(self._part_event("response.content_part.added", message, part))
        if not delta:
            return
        part.text += delta
        location = {"item_id": message.id, "output_index": message.output_index}
        if kind == "output_text":
            events.append(
                self._event(
                    "response.output_text.delta",
                    **location,
                    content_index=len(message.parts) - 1,
                    delta=delta,
                    logprobs=[],
                )
            )
        else:
            events.append(
                self._event("response.refusal.delta", **location, content_index=len(message.parts) - 1, delta=delta)
            )

    def _tool_call(self, call: dict[str, Any], events: list[bytes]) -> None:
        index = call.get("index", 0)
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        item = self._calls.get(index)
        if item is None:
            if self._message is not None:
                # The model has moved on from text to calls: its message is complete.
                self._close(self._message, "completed", events)
            item = _Call(new_function_call_id(), len(self._items), call.get("id") or "", function.get("name") or "")
            self._items.append(item)
            self._calls[index] = item
            events.append(self._item_event("response.output_item.added", item))
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            item.arguments += arguments
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item.id,
                    output_index=item.output_index,
                    delta=arguments,
                )
            )

    def _close(self, item: _Message | _Call, status: str, events: list[bytes]) -> None:
        if isinstance(item, _Message):
            self._close_part(item, events)
            if self._message is item:
                self._message = None
        else:
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item.id,
                    output_index=item.output_index,
                    arguments=item.arguments,
                )
            )
        item.status = status
        events.append(self._item_event("response.output_item.done", item))

    def _close_part(self, message: _Message, events: list[bytes]) -> None:
        part = message.parts[-1]
        location = {
            "item_id": message.id,
            "output_index": message.output_index,
            "content_index": len(message.parts) - 1,
        }
        if part.kind == "output_text":
            events.append(self._event("response.output_text.done", **location, text=part.text, logprobs=[]))
        else:
            events.append(self._event("response.refusal.done", **location, refusal=part.text))
        events.append(self._part_event("response.content_part.done", message, part))

    # -- events --------------------------------------------------------------------------------

    def _item_event(self, kind: str, item: _Message | _Call) -> bytes:
        return self._event(kind, output_index=item.output_index, item=item.as_json())

    def _part_event(self, kind: str, message: _Message, part: _Part) -> bytes:
        return self._event(
            kind,
            item_id=message.id,
            output_index=message.output_index,
            content_index=len(message.parts) - 1,
            part=part.as_json(),
        )

    def _response(
        self,
        status: str,
        *,
        incomplete: str | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        finished = status != "in_progress"
        output = [item.as_json() for item in self._items] if finished else []
        return response_object(
            self._request,
            self._model,
            response_id=self._id,
            created_at=self._created,
            status=status,
            output=output,
            usage=response_usage(self._usage) if finished else None,
            incomplete=incomplete,
            error=error,
        )

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = orjson.dumps({"type": kind, "sequence_number": self._sequence, **fields})
        self._sequence += 1
        return named_event(kind, data)
