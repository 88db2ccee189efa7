"""Server-sent events framing: cutting a vendor's byte stream into events, and writing events.

Why not ``requests.iter_lines``: it invents a blank line when CR and LF arrive in different reads
(which in SSE ends an event early), and over a close-delimited body it waits for a full chunk
before yielding anything. The splitter here works on whatever bytes a
read returned: line endings CRLF, LF or CR may be split anywhere, and since CR and LF never occur
inside a multi-byte UTF-8 character or a JSON string, splitting on them never cuts either.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DONE", "KEEPALIVE", "Event", "EventSplitter", "FramingError", "LastBytes", "data_event", "named_event"]

DONE = b"[DONE]"
KEEPALIVE = b": keep-alive\n\n"
# An event larger than this without a blank line is a broken stream, not a big answer.
MAX_EVENT_BYTES = 8 * 1024 * 1024


class LastBytes(bytes):
    """A streamed body's last bytes: nothing follows them. The router's gunicorn worker sends the
    end of the chunked body in the same write (app/server/worker.py) instead of in one of its
    own after the body's iterator ends; any other server sees plain bytes."""

    __slots__ = ()


class FramingError(ValueError):
    """The vendor's bytes are not an event stream."""


@dataclass(frozen=True)
class Event:
    """One dispatched SSE event: its data (None if it had no data line) and its other field lines."""

    data: bytes | None
    fields: tuple[bytes, ...] = ()


def data_event(data: bytes, fields: tuple[bytes, ...] = ()) -> bytes:
    """The bytes of one event: any other fields first, then one data line, then a blank line."""
    if fields:
        return b"\n".join(fields) + b"\ndata: " + data + b"\n\n"
    return b"data: " + data + b"\n\n"


def named_event(kind: str, data: bytes) -> bytes:
    """The bytes of one event with an ``event:`` name (as the Responses and Messages APIs send)."""
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


class EventSplitter:
    """Feeds on raw reads; returns every event completed by each read, in order."""

    def __init__(self) -> None:
        # Bytes of the event being received, already with LF line endings. A bytearray, so that an
        # event arriving in many small reads costs time in proportion to its size, not its square.
        self._pending = bytearray()
        # A read ended in CR: if the next starts with LF, that LF belongs to the same line end.
        self._skip_lf = False

    def feed(self, data: bytes) -> list[Event]:
        if self._skip_lf and data.startswith(b"\n"):
            data = data[1:]
        self._skip_lf = data.endswith(b"\r")
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if self._pending:
            # Look for a boundary only where one can be new: from the last byte already held.
            start = len(self._pending) - 1
            self._pending += data
            if self._pending.find(b"\n\n", start) < 0:
                self._check_size()
                return []
            buffer = bytes(self._pending)
        elif b"\n\n" in data:
            buffer = data  # the common case: a read of whole events
        else:
            self._pending += data
            self._check_size()
            return []
        *blocks, rest = buffer.split(b"\n\n")
        self._pending = bytearray(rest)
        return [event for event in map(_parse, blocks) if event is not None]

    def flush(self) -> list[Event]:
        """At the end of the body: the last event, if its closing blank line never came."""
        block, self._pending = bytes(self._pending), bytearray()
        event = _parse(block.rstrip(b"\n"))
        return [event] if event is not None else []

    def _check_size(self) -> None:
        if len(self._pending) > MAX_EVENT_BYTES:
            raise FramingError(f"no event boundary in {len(self._pending)} bytes")


def _parse(block: bytes) -> Event | None:
    block = block.lstrip(b"\n")
    if not block:
        return None
    # The common case, one "data: {...}" line, without the general loop below.
    if block.startswith(b"data: ") and b"\n" not in block:
        return Event(block[6:])
    data: list[bytes] = []
    fields: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue  # comments (vendor keep-alives) are not relayed; the router sends its own
        name, _, value = line.partition(b":")
        if name == b"data":
            data.append(value[1:] if value.startswith(b" ") else value)
        else:
            fields.append(line)
    if not data:
        return None  # per the SSE spec an event without data is not dispatched
    return Event(b"\n".join(data), tuple(fields))
