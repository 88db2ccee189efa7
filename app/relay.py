"""Relaying one vendor stream to one client: events in, normalized and translated events out.

``StreamRelay`` turns the vendor's bytes into the client's bytes: ``commit`` reads up to the first
event that carries an answer (content, a tool call, a finish), ``read`` everything after it.
``Pump`` runs the relay in a reader greenlet and hands batches to the client through a bounded
queue, so the client's side can send a keep-alive comment whenever the vendor is silent, can stop
at once when the client goes away, and a client that stops reading stops the vendor reads too.
``StreamAnswer`` is the WSGI body built on a pump; its outcome is the pump's state.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import gevent
import gevent.queue
import orjson

from app.errors import RouterError, UpstreamError, VendorError
from app.normalize import StreamNormalizer, vendor_error
from app.sse import DONE, KEEPALIVE, Event, EventSplitter, FramingError, data_event
from app.upstream import VendorResponse

__all__ = ["ChatEvents", "Pump", "StreamAnswer", "StreamFailure", "StreamRelay", "StreamTranslator"]

log = logging.getLogger(__name__)

_DONE_EVENT = data_event(DONE)
# After the end of the answer, how long the vendor may take to end its body (normally it already
# has). Read to its end, the connection goes back to the pool: the next stream skips a handshake.
DRAIN_SECONDS = 0.25
# Batches of client bytes the reader may run ahead of a slow client. When the queue is full the
# reader stops reading, the vendor's TCP window fills, and the vendor slows down: memory per
# stream stays bounded whatever the client does.
QUEUE_BATCHES = 32


class StreamFailure(Exception):
    """The vendor's stream broke; ``error`` is what the client is told. ``bad_answer``: the
    vendor broke the protocol (malformed events, an end without an answer), rather than the
    connection breaking or the vendor sending an error event."""

    def __init__(self, error: RouterError, *, bad_answer: bool = False) -> None:
        super().__init__(error.message)
        self.error = error
        self.bad_answer = bad_answer


class StreamTranslator(Protocol):
    """Turns normalized chat chunks into what one endpoint's client reads."""

    def opening(self) -> bytes:
        """Bytes sent before the first event (at commit)."""

    def event(self, chunk: dict[str, Any], fields: tuple[bytes, ...]) -> bytes:
        """The client's bytes for one chunk (may be b"")."""

    def done(self) -> bytes:
        """The bytes that end a complete answer."""

    def failed(self, error: RouterError) -> bytes:
        """The bytes that end a stream the vendor broke after commit."""


class ChatEvents:
    """The chat-completions stream, relayed as the vendor sent it (after normalization)."""

    def opening(self) -> bytes:
        return b""

    def event(self, chunk: dict[str, Any], fields: tuple[bytes, ...]) -> bytes:
        return data_event(orjson.dumps(chunk), fields)

    def done(self) -> bytes:
        return _DONE_EVENT

    def failed(self, error: RouterError) -> bytes:
        return data_event(orjson.dumps(error.body()))


def carries_answer(chunk: dict[str, Any]) -> bool:
    """Whether a chunk holds part of the answer: content of any kind, a tool call, or a finish.

    A role-only or empty delta does not: a stream that sends one and then fails has not answered
    anything yet, so another combination can still take over without the client noticing.
    """
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        return False
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        if choice.get("finish_reason"):
            return True
        delta = choice.get("delta")
        if isinstance(delta, dict) and any(value for key, value in delta.items() if key != "role"):
            return True
    return False


class StreamRelay:
    """Reads a vendor's event stream and returns the client's bytes, one batch per read."""

    def __init__(self, response: VendorResponse, normalizer: StreamNormalizer, translator: StreamTranslator) -> None:
        self._response = response
        self.normalizer = normalizer
        self._translator = translator
        self._splitter = EventSplitter()
        self._pending_failure: StreamFailure | None = None
        self.finished = False
        self._drain_after_done = False
        self.events = 0  # chunks that carried part of the answer

    def commit(self) -> bytes:
        """Read up to the first event carrying an answer; return every client byte up to it.

        Raises StreamFailure if the vendor fails before that event or in the same read as it
        (an error or malformed event), or ends the stream without answering anything.
        """
        held: list[bytes] = [self._translator.opening()]
        while not self.finished:
            try:
                data = self._response.read_some()
            except UpstreamError as exc:
                raise StreamFailure(exc) from None
            if not data:
                held.append(self._end_of_stream())
            else:
                try:
                    events = self._splitter.feed(data)
                except FramingError as exc:
                    raise self._broken(f"sent a malformed event stream ({exc})") from None
                held.append(self._translate(events))
            if self._pending_failure is not None:
                raise self._pending_failure
            if self.events:
                break
        if not self.events:
            raise self._broken("ended the stream without an answer")
        return b"".join(held)

    def read(self) -> bytes | None:
        """The client bytes of the next whole events (blocks until there is one); None at the end.

        Raises StreamFailure when the vendor drops, stalls, breaks the framing, or sends an error
        event; bytes of events before the failure are returned first.
        """
        while True:
            if self._pending_failure is not None:
                failure, self._pending_failure = self._pending_failure, None
                self.finished = True
                raise failure
            if self.finished:
                break
            try:
                data = self._response.read_some()
            except UpstreamError as exc:
                self.finished = True
                raise StreamFailure(exc) from None
            if not data:
                out = self._end_of_stream()
                if out:
                    return out
                continue
            try:
                out = self._translate(self._splitter.feed(data))
            except FramingError as exc:
                self._pending_failure = self._broken(f"sent a malformed event stream ({exc})")
                out = b""
            if out:
                return out
        if self._drain_after_done:
            self._drain_after_done = False
            self._drain()
        return None

    def failed(self, error: RouterError) -> bytes:
        """The client's bytes that end this stream with ``error``."""
        return self._translator.failed(error)

    def close(self) -> None:
        self.finished = True
        self._response.close()

    def _translate(self, events: list[Event]) -> bytes:
        parts: list[bytes] = []
        translator = self._translator
        for event in events:
            if event.data == DONE:
                parts.append(translator.done())
                self.finished = True
                self._drain_after_done = True
                break
            try:
                chunk = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                self._pending_failure = self._broken("sent an event that is not JSON")
                break
            if not isinstance(chunk, dict):
                self._pending_failure = self._broken("sent an event that is not a JSON object")
                break
            if "error" in chunk:
                self._pending_failure = StreamFailure(_vendor_error_event(chunk))
                break
            chunk = self.normalizer.chunk(chunk)
            if carries_answer(chunk):
                self.events += 1
            parts.append(translator.event(chunk, event.fields))
        return b"".join(parts)

    def _drain(self) -> None:
        """Read the vendor's end of body (within DRAIN_SECONDS) so urllib3 pools its connection."""
        try:
            with gevent.Timeout(DRAIN_SECONDS):
                while self._response.read_some():
                    pass  # nothing after the end of the answer is relayed
        except (gevent.Timeout, UpstreamError):
            pass  # the connection is closed instead of pooled: only a handshake is lost

    def _end_of_stream(self) -> bytes:
        """The body ended: a last event may lack its blank line; complete answers end properly."""
        self.finished = True
        last = self._splitter.flush()
        if last and last[0].data != DONE and not _is_json(last[0].data):
            # A last event cut off mid-way is the symptom of the cut, not a malformed event.
            raise self._broken("ended the stream before the answer was complete")
        out = self._translate(last) if last else b""
        if self._pending_failure is not None or self._drain_after_done:
            return out  # ended by [DONE], or by an error event that is raised next
        if not self.normalizer.finish_seen:
            raise self._broken("ended the stream before the answer was complete")
        # The answer is complete but the vendor omitted [DONE]: clients wait for it, so add it.
        return out + self._translator.done()

    def _broken(self, problem: str) -> StreamFailure:
        """The vendor broke the event-stream protocol: ``problem`` says how."""
        return StreamFailure(UpstreamError(self._response.combination.describe(problem)), bad_answer=True)


def _is_json(data: bytes) -> bool:
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


def _vendor_error_event(chunk: dict[str, Any]) -> VendorError:
    error = chunk["error"]
    code = error.get("code") if isinstance(error, dict) else None
    status = code if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599 else 502
    return VendorError(status, vendor_error(status, chunk))


class _Signal:
    """Markers put on the pump's queue besides bytes and failures."""

    END = object()
    CLIENT_GONE = object()


class Pump:
    """Runs a relay in a reader greenlet; iterating yields its bytes, keep-alives and a final error event."""

    def __init__(self, relay: StreamRelay, keepalive_seconds: float) -> None:
        self.relay = relay
        self._keepalive = keepalive_seconds
        self._queue: gevent.queue.Queue = gevent.queue.Queue(QUEUE_BATCHES)
        self._reader: gevent.Greenlet | None = None
        self.client_gone = False
        self.failure: StreamFailure | None = None
        self.ended = False  # the relay reached the stream's end and everything was handed on

    def __iter__(self) -> Iterator[bytes]:
        # The reader runs in the request's context, so its log lines carry the request id.
        self._reader = gevent.spawn(contextvars.copy_context().run, self._read_all)
        queue = self._queue
        while True:
            try:
                item = queue.get(timeout=self._keepalive)
            except gevent.queue.Empty:
                yield KEEPALIVE
                continue
            if type(item) is bytes:
                # Batch whatever else is already waiting into the same write.
                while not queue.empty() and type(queue.peek()) is bytes:
                    item += queue.get()
                yield item
            elif isinstance(item, StreamFailure):
                self.failure = item
                yield self.relay.failed(item.error)
                return
            else:
                self.ended = item is _Signal.END
                return

    def notify_client_gone(self) -> None:
        """Called from the hub when the client's connection closed: stop at once (never blocks)."""
        self.client_gone = True
        # A full queue means the client side is busy writing; that write will fail or time out.
        with contextlib.suppress(gevent.queue.Full):
            self._queue.put_nowait(_Signal.CLIENT_GONE)

    def close(self) -> None:
        """Stop the reader, then close the vendor connection: closing it under a running read
        would make the reader fail with a re-entrant read and leave the connection open."""
        if self._reader is not None:
            self._reader.kill(block=True)
        self.relay.close()

    def _read_all(self) -> None:
        # No end marker when killed: the client side is closing and waits for nothing, and a put
        # into a full queue would block the kill forever.
        put: Callable[[object], None] = self._queue.put
        try:
            while (out := self.relay.read()) is not None:
                put(out)
            put(_Signal.END)
        except StreamFailure as failure:
            put(failure)
        except Exception:
            log.exception("stream relay failed")
            put(StreamFailure(UpstreamError("The router failed while relaying the stream.")))


class StreamAnswer:
    """A committed stream, usable as a WSGI body: iterate for the client's bytes; ``close`` is
    safe to call more than once, and the server calls it however the stream ended."""

    def __init__(self, first: bytes, pump: Pump, on_close: Callable[[StreamAnswer], None]) -> None:
        self.first = first
        self.pump = pump
        self._on_close = on_close
        self._closed = False
        self._also_close: list[Callable[[], None]] = []
        self._arm_watch: Callable[[Callable[[], None]], None] | None = None
        self._disarm_watch: Callable[[], None] | None = None
        self.started = time.perf_counter()
        self.headers: dict[str, str] = {}  # naming who answers, set once the stream is chosen
        self.discarded = False

    def __iter__(self) -> Iterator[bytes]:
        yield self.first
        if self._arm_watch is not None:
            self._arm_watch(self.pump.notify_client_gone)
        yield from self.pump

    def watch_client(self, arm: Callable[[Callable[[], None]], None], disarm: Callable[[], None]) -> None:
        """Have the client's departure stop the stream at once (``arm`` is called once streaming)."""
        self._arm_watch, self._disarm_watch = arm, disarm

    @property
    def outcome(self) -> str:
        """completed, vendor_failed, or client_gone (the client left, or the stream was cut short)."""
        if self.pump.failure is not None:
            return "vendor_failed"
        if self.pump.ended:
            return "completed"
        return "client_gone"

    def close_with(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` (e.g. the HTTP response's own close hooks) when the stream closes."""
        self._also_close.append(callback)

    def discard(self) -> None:
        """Close a stream that was never handed to the client (a hedge's loser that committed too)."""
        self.discarded = True
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._disarm_watch is not None:
            self._disarm_watch()
        self.pump.close()
        self._on_close(self)
        for callback in self._also_close:
            callback()
