import pytest

from app.sse import MAX_EVENT_BYTES, Event, EventSplitter, FramingError, data_event

STREAM = (
    'data: {"choices":[{"delta":{"content":"h\u00e9llo \u4e16\u754c"}}]}\n\n'
    'event: message\ndata: {"a":1}\n\n'
    ": comment from the vendor\n\n"
    "data: [DONE]\n\n"
).encode()
EXPECTED = [
    Event('{"choices":[{"delta":{"content":"h\u00e9llo \u4e16\u754c"}}]}'.encode()),
    Event(b'{"a":1}', (b"event: message",)),
    Event(b"[DONE]"),
]


def split_every(data: bytes, size: int) -> list[Event]:
    splitter = EventSplitter()
    events = []
    for start in range(0, len(data), size):
        events.extend(splitter.feed(data[start : start + size]))
    assert splitter.flush() == []
    return events


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_events_survive_any_split_and_any_line_ending(ending, size):
    """CR/LF pairs, JSON objects and UTF-8 characters cut across reads are reassembled exactly."""
    data = STREAM.replace(b"\n", ending.encode())
    assert split_every(data, size) == EXPECTED


def test_crlf_split_between_reads_does_not_end_an_event_early():
    splitter = EventSplitter()
    assert splitter.feed(b"data: first\r") == []
    assert splitter.feed(b"\ndata: second\r\n\r") == [Event(b"first\nsecond")]
    assert splitter.feed(b"\n") == []


def test_multiline_data_is_joined_with_newlines():
    assert EventSplitter().feed(b"data: a\ndata:b\n\n") == [Event(b"a\nb")]


def test_event_without_data_is_not_dispatched():
    assert EventSplitter().feed(b"event: ping\n\nid: 3\n\n") == []


def test_done_inside_content_is_just_content():
    chunk = b'data: {"choices":[{"delta":{"content":"data: [DONE]"}}]}\n\n'
    assert EventSplitter().feed(chunk) == [Event(b'{"choices":[{"delta":{"content":"data: [DONE]"}}]}')]


def test_last_event_without_its_blank_line_is_flushed_at_the_end():
    splitter = EventSplitter()
    assert splitter.feed(b'data: {"a": 1}\n\ndata: [DONE]\n') == [Event(b'{"a": 1}')]
    assert splitter.flush() == [Event(b"[DONE]")]
    assert splitter.flush() == []


def test_cut_event_is_flushed_as_it_is_for_the_reader_to_judge():
    splitter = EventSplitter()
    splitter.feed(b'data: {"cut": ')
    assert splitter.flush() == [Event(b'{"cut": ')]


def test_endless_event_without_boundary_is_a_framing_error():
    splitter = EventSplitter()
    with pytest.raises(FramingError):
        for _ in range(MAX_EVENT_BYTES // 65536 + 2):
            splitter.feed(b"x" * 65536)


@pytest.mark.timeout(5)
def test_big_event_trickled_in_small_reads_is_reassembled_without_stalling_the_worker():
    """Each read looks only at its own bytes: 4 MiB in 1 KiB reads took 8 s when the whole
    pending event was rescanned per read, a stall for every stream of the worker."""
    content = b"x" * (4 * 1024 * 1024)
    assert split_every(b"data: " + content + b"\r\n\r\n", 1024) == [Event(content)]


def test_data_event_writes_fields_then_one_data_line():
    assert data_event(b"{}") == b"data: {}\n\n"
    assert data_event(b"{}", (b"event: x",)) == b"event: x\ndata: {}\n\n"
