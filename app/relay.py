"""Relaying one vendor stream to one client: events in, normalized and translated events out.

``StreamRelay`` turns the vendor's bytes into the client's bytes: ``commit`` reads up to the first
event that carries an answer (content, a tool call, a finish), ``read`` everything after it.
``Pump`` iterates a relay in the request's own greenlet: each read returns whatever events have
arrived, and the server writes them before the next read, so a client that stops reading stops
the vendor reads too (memory per stream stays bounded whatever the client does). A read waits at
most the keep-alive interval, then a keep-alive comment goes out; a client that goes away
interrupts the read it is waiting in. No greenlet or queue hop per event.
``StreamAnswer`` is the WSGI body built on a pump; its outcome is the pump's state.
The three stay in one module, longer than most: they are one stream's life, and apart each would
reach into the others' state (the pump's failure is the answer's outcome; the relay's end is the
pump's).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import gevent
import orjson

from app.endpoint import UnusableAnswer
from app.errors import RouterError, UpstreamError
from app.failures import Failure, carries_error
from app.normalize import StreamNormalizer
from app.sse import DONE, KEEPALIVE, Event, EventSplitter, FramingError, LastBytes, data_event
from app.upstream import VendorResponse

if TYPE_CHECKING:
    from app.budgets.service import StreamMeter

__all__ = ["ChatEvents", "Pump", "StreamAnswer", "StreamFailure", "StreamRelay", "StreamTranslator"]

log = logging.getLogger(__name__)

_DONE_EVENT = data_event(DONE)
# After the end of the answer, how long the vendor may take to end its body (normally it already
# has). Read to its end, the connection goes back to the pool: the next stream skips a handshake.
# Spent when the stream is closed, after the client got its last byte.
DRAIN_SECONDS = 0.25


class StreamFailure(Exception):
    """The vendor's stream broke; ``failure`` says how, what the client is told and what cools."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.error.message)
        self.failure = failure


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

    def keepalive(self) -> bytes:
        """The bytes that keep an idle connection open while the vendor is silent."""

    @property
    def ended(self) -> bool:
        """Whether the client's answer has ended before ``done`` (what follows adds nothing)."""


class ChatEvents:
    """The chat-completions stream, relayed as the vendor sent it (after normalization)."""

    ended = False  # its end is [DONE]: done()

    def opening(self) -> bytes:
        return b""

    def event(self, chunk: dict[str, Any], fields: tuple[bytes, ...]) -> bytes:
        return data_event(orjson.dumps(chunk), fields)

    def done(self) -> bytes:
        return _DONE_EVENT

    def failed(self, error: RouterError) -> bytes:
        return data_event(orjson.dumps(error.body()))

    def keepalive(self) -> bytes:
        return KEEPALIVE


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

    def __init__(
        self,
        response: VendorResponse,
        normalizer: StreamNormalizer,
        translator: StreamTranslator,
        *,
        model_pinned: bool = False,
    ) -> None:
        self._response = response
        self._pinned = model_pinned  # how a vendor's error event is judged (see Failure.vendor_status)
        self.normalizer = normalizer
        self._translator = translator
        self._splitter = EventSplitter()
        self._pending_failure: StreamFailure | None = None
        self.finished = False
        self._drain_after_done = False
        self.events = 0  # chunks that carried part of the answer
        # Counts the output read against the request's budget (app.budgets.service.StreamMeter); None
        # without a budget, so an unbudgeted stream pays one attribute test per event.
        self.meter: StreamMeter | None = None

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
                raise StreamFailure(Failure.transport(exc)) from None
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

    def read(self, within: float | None = None) -> bytes | None:
        """The client bytes of the next whole events (blocks until there is one); None at the end;
        b"" if ``within`` seconds passed without any (the stream goes on).

        ``within`` bounds the whole call, not one read of the vendor: bytes that make nothing for
        the client (the vendor's own comments, chunks a translation drops) do not restart it, so
        the caller's keep-alives follow the time since the client's last byte.

        Raises StreamFailure when the vendor drops, stalls, breaks the framing, or sends an error
        event; bytes of events before the failure are returned first.
        """
        deadline = None if within is None else time.monotonic() + within
        while True:
            if self._pending_failure is not None:
                failure, self._pending_failure = self._pending_failure, None
                self.finished = True
                raise failure
            if self.finished:
                break
            try:
                data = self._response.read_some(None if deadline is None else max(deadline - time.monotonic(), 0.0))
            except UpstreamError as exc:
                self.finished = True
                raise StreamFailure(Failure.transport(exc)) from None
            if data is None:
                return b""
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
        return None

    @property
    def complete(self) -> bool:
        """The answer has ended well: the bytes ``read`` returned last were the stream's last."""
        return self.finished and self._pending_failure is None

    @property
    def answered(self) -> bool:
        """The bytes ``read`` returned last end the client's answer: the stream is complete, or the
        endpoint's own end went out before the vendor's (Messages ends with the vendor's usage)."""
        return self.complete or self._translator.ended

    def failed(self, error: RouterError) -> bytes:
        """The client's bytes that end this stream with ``error``."""
        return self._translator.failed(error)

    def keepalive(self) -> bytes:
        """The client's bytes that keep the stream open while the vendor is silent."""
        return self._translator.keepalive()

    def close(self) -> None:
        """Close the vendor's answer. After a complete one, first read the vendor's end of body
        (bounded): by then the client has its whole answer and its end, so the client never
        waits on this, and the connection goes back to the pool for the next stream."""
        self.finished = True
        if self._drain_after_done:
            self._drain_after_done = False
            self._drain()
        self._response.close()

    def _translate(self, events: list[Event]) -> bytes:
        parts: list[bytes] = []
        translator = self._translator
        try:
            for event in events:
                if not self._translate_one(event, translator, parts):
                    break
        except UnusableAnswer as problem:
            # The vendor's events cannot be what this endpoint's client reads (e.g. tool arguments
            # that are not a JSON object): a broken answer, like a malformed event.
            self._pending_failure = self._broken(str(problem))
        return b"".join(parts)

    def _translate_one(self, event: Event, translator: StreamTranslator, parts: list[bytes]) -> bool:
        """Append the client's bytes for ``event``; False once the stream ends or fails with it."""
        if event.data == DONE:
            parts.append(translator.done())
            self.finished = True
            self._drain_after_done = True
            return False
        try:
            chunk = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            self._pending_failure = self._broken("sent an event that is not JSON")
            return False
        if not isinstance(chunk, dict):
            self._pending_failure = self._broken("sent an event that is not a JSON object")
            return False
        if carries_error(chunk):
            self._pending_failure = StreamFailure(Failure.error_in_body(chunk, model_pinned=self._pinned))
            return False
        if not isinstance(chunk.get("choices", ()), (list, type(None))):
            # Nothing downstream could read it (a translation would fail on it): a broken answer.
            self._pending_failure = self._broken("sent a chunk whose choices is not a list")
            return False
        chunk = self.normalizer.chunk(chunk)
        if carries_answer(chunk):
            self.events += 1
        if self.meter is not None:
            self.meter.count(chunk)
        parts.append(translator.event(chunk, event.fields))
        return True

    def _drain(self) -> None:
        """Read the vendor's end of body (within DRAIN_SECONDS) so urllib3 pools its connection."""
        deadline = time.monotonic() + DRAIN_SECONDS
        try:
            # Nothing after the end of the answer is relayed. Usually the end came with the last
            # event, and this returns at once.
            while self._response.read_some(max(deadline - time.monotonic(), 0.0)):
                pass
        except UpstreamError:
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
        try:
            return out + self._translator.done()
        except UnusableAnswer as problem:
            raise self._broken(str(problem)) from None

    def _broken(self, problem: str) -> StreamFailure:
        """The vendor broke the event-stream protocol: ``problem`` says how."""
        return StreamFailure(Failure.bad_answer(UpstreamError(self._response.combination.describe(problem))))


def _is_json(data: bytes) -> bool:
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


class _ClientLeft(BaseException):
    """Thrown into a pump waiting on its vendor when the client has gone (like gevent.Timeout, not
    an Exception: nothing on the way may swallow it)."""


class Pump:
    """Iterates a relay: its bytes, keep-alive comments during vendor silence, and a final error event."""

    def __init__(self, relay: StreamRelay, keepalive_seconds: float) -> None:
        self.relay = relay
        self._keepalive = keepalive_seconds
        self._greenlet: Any = None
        self._reading = False  # waiting on the vendor: the only place a departed client interrupts
        self.client_gone = False
        self.failure: Failure | None = None  # what ended the stream after commit, if it broke
        self.cut: RouterError | None = None  # the budget ran out: the stream was cut with this error
        self.ended = False  # the relay reached the stream's end and everything was handed on
        self.before_last: Callable[[], None] | None = None  # run before the last bytes of a complete answer

    def __iter__(self) -> Iterator[bytes]:
        self._greenlet = gevent.getcurrent()
        relay, keepalive = self.relay, self._keepalive
        if relay.meter is not None and self._spent():
            # The first read (the commit's) alone went past the budget: nothing more is read.
            yield relay.failed(self.cut)
            return
        while not self.client_gone:
            self._reading = True
            try:
                out = relay.read(keepalive)
            except _ClientLeft:
                return
            except StreamFailure as broke:
                self.failure = broke.failure.after_commit()
            except Exception:
                log.exception("stream relay failed")
                self.failure = Failure.relay_fault(UpstreamError("The router failed while relaying the stream."))
            finally:
                self._reading = False
            if self.failure is not None:
                yield relay.failed(self.failure.error)
                return
            if out is None:
                self.ended = True
                return
            if out and relay.meter is not None and self._spent():
                # What was read is the client's (it is paid for), then the endpoint's error event.
                yield out + relay.failed(self.cut)
                return
            if out:
                self.before_end()
            if out and relay.complete:
                # The last event (e.g. [DONE]) carries the end of the body with it: one write, not two.
                yield LastBytes(out)
                continue
            yield out or relay.keepalive()

    def before_end(self) -> None:
        """Run ``before_last`` (once) if the bytes about to go out end the client's answer: e.g. its
        budget settled, so a call it makes next already counts what this stream spent."""
        if self.before_last is not None and self.relay.answered:
            before_last, self.before_last = self.before_last, None
            before_last()

    def _spent(self) -> bool:
        """Whether the stream's budget is spent (some answer asked for not yet finished); if so the
        stream is cut: ``cut`` holds the error, and the vendor is closed at once, before the client
        is told, so it generates nothing more that nobody reads."""
        relay = self.relay
        meter = relay.meter
        if meter is None or len(relay.normalizer.finished) >= meter.choices or not meter.over():
            return False
        self.cut = meter.error()
        relay.close()
        return True

    def notify_client_gone(self) -> None:
        """Called from the hub when the client's connection closed: stop at once (never blocks)."""
        self.client_gone = True
        if self._reading:
            gevent.get_hub().loop.run_callback(self._interrupt)

    def _interrupt(self) -> None:
        # Checked again when delivered: a write to the client is never interrupted (it ends by
        # itself, failing or timing out), only a wait on the vendor.
        greenlet = self._greenlet
        if self._reading and greenlet is not None and not greenlet.dead:
            greenlet.throw(_ClientLeft())

    def close(self) -> None:
        """Close the vendor connection (the pump runs in the closing greenlet: no read is in progress)."""
        self.relay.close()


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
        self.pump.before_end()  # the first read may have brought the whole answer
        yield self.first
        if self._arm_watch is not None:
            self._arm_watch(self.pump.notify_client_gone)
        yield from self.pump

    def watch_client(self, arm: Callable[[Callable[[], None]], None], disarm: Callable[[], None]) -> None:
        """Have the client's departure stop the stream at once (``arm`` is called once streaming)."""
        self._arm_watch, self._disarm_watch = arm, disarm

    @property
    def outcome(self) -> str:
        """completed, vendor_failed, budget_exceeded (cut for want of budget),
        budget_storage_unavailable (cut because the budget's storage failed), or client_gone (the
        client left, or the stream was cut short)."""
        if self.pump.failure is not None:
            return "vendor_failed"
        if self.pump.cut is not None:
            return self.pump.cut.code  # budget_exceeded or budget_storage_unavailable
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
