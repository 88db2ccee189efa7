"""Relaying one vendor stream to one client: events in, normalized events out, keep-alives between.

``StreamRelay`` turns the vendor's bytes into the client's bytes, batch by batch. ``Pump`` runs the
relay in a reader greenlet and hands batches to the response iterator through a queue, so the
iterator can send a keep-alive comment whenever the vendor is silent and can stop at once when the
client goes away (STACK.md rules 8 and 9).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Iterator

import gevent
import gevent.queue
import orjson
import requests

from app.catalog import Combination
from app.errors import RouterError, UpstreamError, VendorError
from app.normalize import StreamNormalizer, vendor_error
from app.sse import DONE, KEEPALIVE, EventSplitter, FramingError, data_event
from app.upstream import Upstream

__all__ = ["Pump", "StreamFailure", "StreamRelay"]

log = logging.getLogger(__name__)

_DONE_EVENT = data_event(DONE)
# After [DONE], how long the vendor may take to end its body (normally it already has). Read to
# its end, the connection goes back to the pool: the next stream skips a TCP and TLS handshake.
DRAIN_SECONDS = 0.25


class StreamFailure(Exception):
    """The vendor's stream broke; ``error`` is what the client is told."""

    def __init__(self, error: RouterError) -> None:
        super().__init__(error.message)
        self.error = error


class StreamRelay:
    """Reads a vendor's event stream and yields the client's bytes, one batch per read."""

    def __init__(
        self,
        upstream: Upstream,
        combination: Combination,
        response: requests.Response,
        normalizer: StreamNormalizer,
    ) -> None:
        self._upstream = upstream
        self._combination = combination
        self._response = response
        self.normalizer = normalizer
        self._splitter = EventSplitter()
        self._pending_failure: StreamFailure | None = None
        self.finished = False
        self._drain_after_done = False
        self.events = 0

    def read(self) -> bytes | None:
        """The client bytes of the next whole events (blocks until there is one); None at the end.

        Raises StreamFailure when the vendor drops, stalls, breaks the framing, or sends an error
        event; bytes of events before the failure are returned first.
        """
        while not self.finished:
            if self._pending_failure is not None:
                failure, self._pending_failure = self._pending_failure, None
                self.finished = True
                raise failure
            try:
                data = self._upstream.read_some(self._combination, self._response)
            except UpstreamError as exc:
                self.finished = True
                raise StreamFailure(exc) from None
            if not data:
                return self._end_of_stream()
            try:
                out = self._translate(self._splitter.feed(data))
            except FramingError as exc:
                self._fail(f"sent a malformed event stream ({exc})")
                out = b""
            if out:
                return out
        if self._drain_after_done:
            self._drain_after_done = False
            self._drain()
        return None

    def close(self) -> None:
        self.finished = True
        self._response.close()

    def _translate(self, events: list) -> bytes:
        parts: list[bytes] = []
        for event in events:
            if event.data == DONE:
                parts.append(_DONE_EVENT)
                self.finished = True
                self._drain_after_done = True
                break
            try:
                chunk = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                self._fail("sent an event that is not JSON")
                break
            if not isinstance(chunk, dict):
                self._fail("sent an event that is not a JSON object")
                break
            if "error" in chunk:
                self._pending_failure = StreamFailure(self._vendor_error_event(chunk))
                break
            self.events += 1
            parts.append(data_event(orjson.dumps(self.normalizer.chunk(chunk)), event.fields))
        return b"".join(parts)

    def _drain(self) -> None:
        """Read the vendor's end of body (within DRAIN_SECONDS) so urllib3 pools its connection."""
        try:
            with gevent.Timeout(DRAIN_SECONDS):
                while self._upstream.read_some(self._combination, self._response):
                    pass  # nothing after [DONE] is relayed
        except (gevent.Timeout, UpstreamError):
            pass  # the connection is closed instead of pooled: only a handshake is lost

    def _end_of_stream(self) -> bytes | None:
        self.finished = True
        if self._splitter.has_partial_event or not self.normalizer.finish_seen:
            problem = "ended the stream before the answer was complete"
            raise StreamFailure(UpstreamError(self._combination.describe(problem)))
        # The answer is complete but the vendor omitted [DONE]: clients wait for it, so add it.
        return _DONE_EVENT

    def _fail(self, problem: str) -> None:
        self._pending_failure = StreamFailure(UpstreamError(self._combination.describe(problem)))

    def _vendor_error_event(self, chunk: dict) -> VendorError:
        code = chunk["error"].get("code") if isinstance(chunk["error"], dict) else None
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
        self._queue: gevent.queue.Queue = gevent.queue.Queue()
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
                yield data_event(orjson.dumps(item.error.body()))
                return
            else:
                self.ended = item is _Signal.END
                return

    def notify_client_gone(self) -> None:
        """Called from the hub when the client's connection closed: stop at once."""
        self.client_gone = True
        self._queue.put(_Signal.CLIENT_GONE)

    def close(self) -> None:
        """Stop the reader, then close the vendor connection (in that order: STACK.md rule 9)."""
        if self._reader is not None:
            self._reader.kill(block=True)
        self.relay.close()

    def _read_all(self) -> None:
        put: Callable[[object], None] = self._queue.put
        try:
            while (out := self.relay.read()) is not None:
                put(out)
        except StreamFailure as failure:
            put(failure)
        except Exception:
            log.exception("stream relay failed")
            put(StreamFailure(UpstreamError("The router failed while relaying the stream.")))
        finally:
            put(_Signal.END)
