"""Counting a stream's SSE events as its body arrives, read by read, into a StreamRecord."""

from __future__ import annotations

from tests.bench.stats import StreamRecord

__all__ = ["DIALECTS", "EventCounter"]

DIALECTS = ("chat", "responses", "messages")


class EventCounter:
    """Timestamps every event of one stream at the read that completed it.

    Events are counted, not parsed: each ``data:`` line starts an event (JSON holds no raw
    newline, so a newline followed by ``data:`` only occurs at a line start) and a blank line
    ends it. A few C-level byte searches per read keep the client's cost per event small, so it
    keeps pace with 1,000 streams.

    ``dialect`` says which events count (``DIALECTS``):

    - ``chat``: every ``data:`` event; done at ``data: [DONE]``, failed at an ``{"error"`` event;
    - ``responses``: only the text deltas (the events that carry the answer: created, in_progress,
      the .added and .done events come bunched by design); done at ``response.completed``, failed
      at an ``error`` or ``response.failed`` event;
    - ``messages`` (Anthropic): only the ``content_block_delta`` events whose delta is a
      ``text_delta`` (message_start, content_block_start/stop, message_delta and ping come
      bunched or carry no text); done at ``message_stop``, failed at an ``error`` event.

    Type names are matched as JSON string values (``"text_delta"``), so the spacing of the JSON
    does not matter; a quote inside answer text is escaped, so text cannot fake one.
    """

    __slots__ = ("_dialect", "_partial", "record")

    def __init__(self, record: StreamRecord, dialect: str = "chat") -> None:
        if dialect not in DIALECTS:
            raise ValueError(f"unknown stream dialect {dialect!r}; choose from {DIALECTS}")
        self.record = record
        record.events = []
        self._partial = b""  # bytes of an event not yet ended by a blank line
        self._dialect = dialect

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
        if self._dialect == "messages":
            record.events.extend([arrived] * complete.count(b'"text_delta"'))  # type: ignore[union-attr]
            if b"event: error\n" in complete or b'"type":"error"' in complete:
                record.error_events += 1
            record.done = record.done or b'"message_stop"' in complete
            return
        if self._dialect == "responses":
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
