"""Counting a stream's SSE events as its body arrives, read by read, into a StreamRecord."""

from __future__ import annotations

from tests.bench.stats import StreamRecord

__all__ = ["EventCounter"]


class EventCounter:
    """Timestamps every event of one stream at the read that completed it.

    Events are counted, not parsed: each ``data:`` line starts an event (JSON holds no raw
    newline, so a newline followed by ``data:`` only occurs at a line start) and a blank line
    ends it. A few C-level byte searches per read keep the client's cost per event small, so it
    keeps pace with 1,000 streams.

    A Responses stream (``responses=True``) counts only its text deltas (the events that carry the
    answer: created, in_progress, the .added and .done events come bunched by design), is done at
    ``response.completed`` and failed at an ``error`` or ``response.failed`` event.
    """

    __slots__ = ("_partial", "_responses", "record")

    def __init__(self, record: StreamRecord, responses: bool = False) -> None:
        self.record = record
        record.events = []
        self._partial = b""  # bytes of an event not yet ended by a blank line
        self._responses = responses

    def feed(self, data: bytes, arrived: float) -> None:
        """Take the next body bytes, which arrived at ``arrived`` (time.perf_counter())."""
        if self._partial:
            data = self._partial + data
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        end = data.rfind(b"\n\n") + 2
        if end < 2:
            self._partial = data
            return
        complete, self._partial = data[:end], data[end:]
        record = self.record
        if self._responses:
            record.events.extend([arrived] * complete.count(b'"response.output_text.delta"'))  # type: ignore[union-attr]
            if b"event: error\n" in complete or b'"response.failed"' in complete or b'data: {"error"' in complete:
                record.error_events += 1
            record.done = record.done or b'"response.completed"' in complete
            return
        starts_with_data = complete.startswith(b"data:")
        record.events.extend([arrived] * (complete.count(b"\ndata:") + starts_with_data))  # type: ignore[union-attr]
        record.keepalives += complete.count(b"\n:") + complete.startswith(b":")
        if b'data: {"error"' in complete:
            record.error_events += 1
        record.done = complete.endswith(b"data: [DONE]\n\n")
