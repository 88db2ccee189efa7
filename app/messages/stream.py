"""Turning a stream of (normalized) chat.completion.chunks into Anthropic Messages stream events.

``message_start`` first (at commit, with the estimated input tokens); then the content blocks, one
open at a time, each opened by its first delta (never an empty one up front) and stopped before
the next starts: the vendor's reasoning as a thinking block (a signature_delta with "" before its
stop: the vendor gives no signature), consecutive text as one text block, each tool call as its own
tool_use block whose arguments go out as input_json_delta fragments; then ``message_delta``
(stop_reason and cumulative usage), held from the finish until the vendor's usage chunk or the end
of the stream so the usage is the vendor's, and ``message_stop``.

Parallel tool calls whose chunks interleave cannot each stream into a block of their own while
only one block is open: a call that starts while the open call's arguments are not yet a whole JSON
object waits, its fragments buffered, and follows as soon as the open one is whole (or at the end).
Calls that come one after the other (OpenAI) or whole (Gemini) stream as they come.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from app.endpoint import UnusableAnswer
from app.errors import RouterError
from app.messages.answer import message_usage, new_message_id, reasoning_text, stop_reason
from app.messages.errors import stream_error_type
from app.messages.request import ToolNames
from app.normalize import first_choice, new_tool_call_id
from app.sse import named_event

__all__ = ["PING", "MessagesStream", "sse_event"]

_CHARACTERS_PER_TOKEN = 4
_TEXT_START = {"type": "text", "text": ""}
_THINKING_START = {"type": "thinking", "thinking": "", "signature": ""}


def sse_event(data: dict[str, Any]) -> bytes:
    """One SSE event whose name is its data's type, as Anthropic sends every event."""
    return named_event(data["type"], orjson.dumps(data))


PING = sse_event({"type": "ping"})


@dataclass
class _Call:
    """One tool call of the answer, by its chat index: its block once opened, its arguments so far."""

    id: str
    name: str
    arguments: str = ""
    block: int | None = None
    pending: list[str] = field(default_factory=list)  # fragments that came before its block opened
    closed: bool = False

    def whole(self) -> bool:
        """Whether the arguments so far are a complete JSON object: nothing more can follow."""
        try:
            return isinstance(orjson.loads(self.arguments), dict)
        except orjson.JSONDecodeError:
            return False


@dataclass
class _Prose:
    """An open thinking or text block."""

    kind: str
    block: int


class MessagesStream:
    """The Messages events of one streamed answer, as the relay asks for them (a StreamTranslator):
    ``opening`` at commit, ``event`` per chat chunk, then ``done`` (the vendor finished) or
    ``failed`` (it broke off); ``keepalive`` during the vendor's silences. Each returns SSE bytes.

    ``event`` and ``done`` raise UnusableAnswer when a tool call's arguments turn out not to be a
    JSON object (the client could not use the tool_use block)."""

    def __init__(self, requested_model: str, tool_names: ToolNames, input_tokens: int) -> None:
        self._model = requested_model
        self._names = tool_names
        self._input_tokens = input_tokens
        self._id = new_message_id()
        self._blocks = 0  # blocks started: the next block's index
        self._open: _Prose | _Call | None = None
        self._calls: dict[int, _Call] = {}  # by the chat tool call's index
        self._waiting: list[_Call] = []  # calls that started while the open call was not whole
        self._finish_reason: str | None = None
        self._finished = False  # a finish_reason came: message_delta waits for the usage
        self._usage: dict[str, Any] | None = None
        self._characters = 0  # of the answer, for an output estimate when the vendor gives no usage
        self.ended = False  # message_stop or an error went out: nothing follows

    def opening(self) -> bytes:
        """message_start: the message without content, and the estimated input tokens."""
        message = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # Clients crash without both counts; the real ones come in message_delta.
            "usage": {
                "input_tokens": self._input_tokens,
                "output_tokens": 1,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        }
        return sse_event({"type": "message_start", "message": message})

    def keepalive(self) -> bytes:
        """A ping event: what Anthropic sends while there is nothing else to send."""
        return PING

    def event(self, chunk: dict[str, Any], fields: tuple[bytes, ...] = ()) -> bytes:
        """The events one chat chunk brings (b"" when it brings none, e.g. a role-only delta).

        A chunk may carry content and its choice's finish_reason together: the content goes out
        first. The chunk's other SSE ``fields`` are dropped: each event carries its own name."""
        if self.ended:
            return b""
        out: list[bytes] = []
        usage = message_usage(chunk.get("usage"))
        if usage is not None:
            self._usage = usage
        choice = first_choice(chunk)
        if choice is not None:
            delta = choice.get("delta")
            if isinstance(delta, dict):
                self._delta(delta, out)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
                self._finished = True
                self._close(out)
        if self._finished and usage is not None:
            self._end(out)
        return b"".join(out)

    def done(self) -> bytes:
        """Whatever is still open or held, then message_delta and message_stop."""
        if self.ended:
            return b""
        out: list[bytes] = []
        self._close(out)
        self._end(out)
        return b"".join(out)

    def failed(self, error: RouterError) -> bytes:
        """End the stream with one error event, as Anthropic ends a stream that fails after its start."""
        if self.ended:
            return b""
        self.ended = True
        message = error.message or "The vendor failed while answering."
        return sse_event({"type": "error", "error": {"type": stream_error_type(error), "message": message}})

    # -- blocks --------------------------------------------------------------------------------

    def _delta(self, delta: dict[str, Any], out: list[bytes]) -> None:
        thinking = reasoning_text(delta)
        if thinking:
            self._prose("thinking", thinking, out)
        for key in ("content", "refusal"):
            text = delta.get(key)
            if isinstance(text, str) and text:
                self._prose("text", text, out)
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for position, call in enumerate(calls):
                if isinstance(call, dict):
                    self._tool_call(call, position, out)

    def _prose(self, kind: str, text: str, out: list[bytes]) -> None:
        block = self._open
        if not (isinstance(block, _Prose) and block.kind == kind):
            self._close(out)
            start = _TEXT_START if kind == "text" else _THINKING_START
            block = _Prose(kind, self._start(dict(start), out))
            self._open = block
        self._characters += len(text)
        delta = {"type": "text_delta", "text": text} if kind == "text" else {"type": "thinking_delta", "thinking": text}
        out.append(sse_event({"type": "content_block_delta", "index": block.block, "delta": delta}))

    def _tool_call(self, delta: dict[str, Any], position: int, out: list[bytes]) -> None:
        index = delta.get("index")
        key = index if isinstance(index, int) and not isinstance(index, bool) else position
        function = delta.get("function") if isinstance(delta.get("function"), dict) else {}
        fragment = function.get("arguments")
        fragment = fragment if isinstance(fragment, str) else ""
        call = self._calls.get(key)
        if call is None:
            call_id = delta.get("id")
            call = _Call(
                call_id if isinstance(call_id, str) and call_id else new_tool_call_id(),
                self._names.client(function.get("name") or ""),
            )
            self._calls[key] = call
            if isinstance(self._open, _Call) and not self._open.whole():
                # Its chunks may still interleave with the open call's: it waits for that to end.
                call.pending.append(fragment)
                self._waiting.append(call)
                return
            self._close(out)
            self._open_call(call, out)
            self._arguments(call, fragment, out)
        elif call is self._open:
            self._arguments(call, fragment, out)
            self._advance(out)
        elif not call.closed:
            call.pending.append(fragment)
        # A fragment for a call already closed is dropped: closed means its arguments were a whole
        # JSON object, which more text could only make invalid.

    def _open_call(self, call: _Call, out: list[bytes]) -> None:
        start = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
        call.block = self._start(start, out)
        self._open = call
        fragments, call.pending = "".join(call.pending), []
        self._arguments(call, fragments, out)

    def _arguments(self, call: _Call, fragment: str, out: list[bytes]) -> None:
        if not fragment:
            return
        call.arguments += fragment
        self._characters += len(fragment)
        delta = {"type": "input_json_delta", "partial_json": fragment}
        out.append(sse_event({"type": "content_block_delta", "index": call.block, "delta": delta}))

    def _advance(self, out: list[bytes]) -> None:
        """Once the open call is whole, the calls waiting for it take their turn."""
        while self._waiting and isinstance(self._open, _Call) and self._open.whole():
            self._stop(out)
            self._open_call(self._waiting.pop(0), out)

    def _close(self, out: list[bytes]) -> None:
        """Stop the open block, and give every waiting call its whole block."""
        self._stop(out)
        while self._waiting:
            self._open_call(self._waiting.pop(0), out)
            self._stop(out)

    def _start(self, content_block: dict[str, Any], out: list[bytes]) -> int:
        index = self._blocks
        self._blocks += 1
        out.append(sse_event({"type": "content_block_start", "index": index, "content_block": content_block}))
        return index

    def _stop(self, out: list[bytes]) -> None:
        block, self._open = self._open, None
        if block is None:
            return
        if isinstance(block, _Call):
            block.closed = True
            if block.arguments.strip() and not block.whole():
                raise UnusableAnswer("answered a tool call whose arguments are not a JSON object")
        elif block.kind == "thinking":
            # The SDKs expect a signature on every thinking block; the vendor's reasoning has none.
            signature = {"type": "signature_delta", "signature": ""}
            out.append(sse_event({"type": "content_block_delta", "index": block.block, "delta": signature}))
        out.append(sse_event({"type": "content_block_stop", "index": block.block}))

    # -- the end -------------------------------------------------------------------------------

    def _end(self, out: list[bytes]) -> None:
        """message_delta with the stop reason and the usage so far, then message_stop."""
        self.ended = True
        usage: dict[str, Any]
        if self._usage is not None:
            usage = dict(self._usage)
        else:
            # No usage from the vendor: message_start's input estimate stands, output is estimated.
            usage = {"output_tokens": -(-self._characters // _CHARACTERS_PER_TOKEN)}
        reason = stop_reason(self._finish_reason, bool(self._calls))
        delta = {"stop_reason": reason, "stop_sequence": None}
        out.append(sse_event({"type": "message_delta", "delta": delta, "usage": usage}))
        out.append(sse_event({"type": "message_stop"}))
