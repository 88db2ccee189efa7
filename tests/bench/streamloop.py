"""The stream client's default engine: every stream on one epoll loop, no greenlet per stream.

Measured on the 2-core benchmark machine against tests/bench/vendor.py, 1,000 streams of 23
events, all costs in (connect, request, events): the gevent engine (streamclient.py) spends 21-31
µs of CPU per event, this loop 12-15 µs. At 1,000 streams x 50 events/s the gevent client needs
a whole core while the events flow, so it falls behind (and reports events bunched in pairs that
the server sent apart) as soon as anything else wants that core; this loop leaves the router
more of the machine.
"""

from __future__ import annotations

import heapq
import itertools
import select
import socket
import time
from collections.abc import Callable

from tests.bench.events import EventCounter
from tests.bench.http1 import MAX_HEAD, RECV_SIZE, ChunkedDecoder, Head, HTTPError, parse_head
from tests.bench.stats import StreamOutcome, StreamRecord

__all__ = ["Loop"]

_IN, _OUT = select.EPOLLIN, select.EPOLLOUT
_ANY_IN = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR


class _Slot:
    """One connection and the stream it is reading now."""

    __slots__ = ("buf", "counter", "decoder", "fd", "head", "left", "out", "record", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.record = StreamRecord(sent=0.0)
        self.buf = b""
        self.out = b""
        self.head: Head | None = None
        self.decoder: ChunkedDecoder | None = None
        self.counter: EventCounter | None = None
        self.left = 0  # Content-Length bytes still to come; -1: the body ends at EOF


class Loop:
    """Opens connections, sends the stream request on them, reads every answer to its end."""

    def __init__(
        self,
        host: str,
        port: int,
        request: bytes,
        timeout: float,
        judge: Callable[[StreamRecord], StreamOutcome],
        dialect: str = "chat",
    ) -> None:
        self.address = (host, port)
        self.dialect = dialect
        self.request = request
        self.timeout = timeout
        self.judge = judge
        self.epoll = select.epoll()
        self.slots: dict[int, _Slot] = {}
        self.outcomes: list[StreamOutcome] = []
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._reuse: Callable[[_Slot, bool], None] = self._close_after

    # -- the two modes ----------------------------------------------------------------------------

    def burst(self, streams: int, ramp: float) -> list[StreamOutcome]:
        """Connect all K first, then send every request (spread over ``ramp`` s); read all to the end."""
        slots = [self._connect_or_record() for _ in range(streams)]
        start = time.perf_counter()
        for i, slot in enumerate(slots):
            if slot is None:
                continue
            if ramp:
                self._at(start + ramp * i / streams, lambda s=slot: self._send(s))
                continue
            self._send(slot)
            if i % 32 == 31:
                # Read what has arrived meanwhile: sending all 1,000 requests before the first
                # read would add the whole sending time to the first streams' TTFC.
                self._poll(0.0)
        self._run(lambda: bool(self.slots) or bool(self._timers))
        return self.outcomes

    def continuous(self, streams: int, duration: float) -> list[StreamOutcome]:
        """K connections, each starting a new stream when its last one ended, for ``duration`` s."""
        deadline = time.perf_counter() + duration

        def again(slot: _Slot, reusable: bool) -> None:
            if time.perf_counter() >= deadline:
                self._close(slot)
            elif reusable:
                self._send(slot)
            else:
                self._close(slot)
                self._at(time.perf_counter() + (0.05 if slot.record.error else 0), start_one)

        def start_one() -> None:
            if time.perf_counter() >= deadline:
                return
            slot = self._connect_or_record()
            if slot is None:
                self._at(time.perf_counter() + 0.1, start_one)  # a refusing server: no busy loop
            else:
                self._send(slot)

        self._reuse = again
        now = time.perf_counter()
        for i in range(streams):
            self._at(now + 0.5 * i / streams, start_one)  # staggered, like independent clients
        self._run(lambda: bool(self.slots) or bool(self._timers))
        return self.outcomes

    # -- connections ------------------------------------------------------------------------------

    def _connect_or_record(self) -> _Slot | None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.address)  # loopback: the kernel completes it before accept()
        except OSError as exc:
            sock.close()
            now = time.perf_counter()
            record = StreamRecord(sent=now, ended=now, error=f"connect_{_failure(exc)}")
            self.outcomes.append(self.judge(record))
            return None
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        slot = _Slot(sock)
        self.slots[slot.fd] = slot
        self.epoll.register(slot.fd, _IN)
        return slot

    def _send(self, slot: _Slot) -> None:
        slot.record = StreamRecord(sent=time.perf_counter())
        slot.buf, slot.head, slot.decoder, slot.counter = b"", None, None, None
        try:
            sent = slot.sock.send(self.request)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._fail(slot, _failure(exc))
            return
        if sent < len(self.request):
            slot.out = self.request[sent:]
            self.epoll.modify(slot.fd, _IN | _OUT)

    def _flush(self, slot: _Slot) -> None:
        try:
            sent = slot.sock.send(slot.out)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(slot, _failure(exc))
            return
        slot.out = slot.out[sent:]
        if not slot.out:
            self.epoll.modify(slot.fd, _IN)

    def _close(self, slot: _Slot) -> None:
        if self.slots.pop(slot.fd, None) is not None:
            self.epoll.unregister(slot.fd)
            slot.sock.close()

    def _close_after(self, slot: _Slot, reusable: bool) -> None:
        self._close(slot)

    # -- reading ----------------------------------------------------------------------------------

    def _readable(self, slot: _Slot) -> None:
        try:
            data = slot.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(slot, _failure(exc))
            return
        arrived = time.perf_counter()
        if not data:
            if slot.head is not None and slot.left == -1:
                self._done(slot, reusable=False)  # a close-delimited body ends here
            else:
                self._fail(slot, "closed_early")
            return
        try:
            if slot.head is None:
                data = self._read_head(slot, data)
                if slot.head is None:
                    return
            self._read_body(slot, data, arrived)
        except (HTTPError, ValueError):
            self._fail(slot, "http_framing")

    def _read_head(self, slot: _Slot, data: bytes) -> bytes:
        """Consume head bytes; returns the body bytes that came with them."""
        slot.buf += data
        while slot.head is None:
            end = slot.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(slot.buf) > MAX_HEAD:
                    raise HTTPError("response head too large")
                return b""
            raw, slot.buf = slot.buf[:end], slot.buf[end + 4 :]
            head = parse_head(raw)
            if head is None:
                continue  # 1xx
            slot.head = head
            slot.record.status = head.status
            if head.status == 200:
                slot.counter = EventCounter(slot.record, self.dialect)
            if head.chunked:
                slot.decoder = ChunkedDecoder()
            else:
                slot.left = head.length if head.length is not None else -1
        rest, slot.buf = slot.buf, b""
        if not rest and slot.decoder is None and slot.left == 0:
            self._done(slot, reusable=slot.head.keep_alive)
        return rest

    def _read_body(self, slot: _Slot, data: bytes, arrived: float) -> None:
        if not data:
            return
        decoder = slot.decoder
        if decoder is not None:
            body = decoder.feed(data)
            if body and slot.counter is not None:
                slot.counter.feed(body, arrived)
            if decoder.done:
                assert slot.head is not None
                self._done(slot, reusable=slot.head.keep_alive)
            return
        if slot.counter is not None:
            slot.counter.feed(data, arrived)
        if slot.left > 0:
            slot.left -= len(data)
            if slot.left <= 0:
                assert slot.head is not None
                self._done(slot, reusable=slot.head.keep_alive)

    def _done(self, slot: _Slot, reusable: bool) -> None:
        slot.record.ended = time.perf_counter()
        self.outcomes.append(self.judge(slot.record))
        self._reuse(slot, reusable)

    def _fail(self, slot: _Slot, reason: str) -> None:
        slot.record.error = reason
        self._done(slot, reusable=False)

    # -- the loop ---------------------------------------------------------------------------------

    def _at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (when, next(self._seq), action))

    def _poll(self, wait: float) -> None:
        for fd, mask in self.epoll.poll(wait):
            slot = self.slots.get(fd)
            if slot is None:
                continue
            if mask & _OUT and slot.out:
                self._flush(slot)
            if mask & _ANY_IN and fd in self.slots:
                self._readable(slot)

    def _run(self, busy: Callable[[], bool]) -> None:
        timers = self._timers
        next_sweep = time.perf_counter() + 0.5
        while busy():
            now = time.perf_counter()
            self._poll(max(min(timers[0][0] - now if timers else 0.5, next_sweep - now, 0.5), 0.0))
            now = time.perf_counter()
            while timers and timers[0][0] <= now:
                heapq.heappop(timers)[2]()
            if now >= next_sweep:
                next_sweep = now + 0.5
                for slot in list(self.slots.values()):
                    if slot.record.sent and slot.record.ended is None and now - slot.record.sent > self.timeout:
                        self._fail(slot, "timeout")


def _failure(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    return f"os_error_{exc.errno}" if isinstance(exc, OSError) and exc.errno else type(exc).__name__
