import copy

import pytest

from app.normalize import StreamNormalizer, normalize_completion, vendor_error


def completion(**message):
    return {
        "id": "chatcmpl-vendor",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    }


def test_answer_reports_the_requested_model_and_keeps_everything_else():
    answer = normalize_completion(completion(content="hi"), "any-model")
    assert answer["model"] == "any-model"
    assert answer["id"] == "chatcmpl-vendor"
    assert answer["created"] == 1700000000
    assert answer["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert answer["choices"][0]["finish_reason"] == "stop"


def test_missing_id_object_and_created_are_filled_in():
    answer = completion(content="hi")
    del answer["id"], answer["object"], answer["created"]
    normalize_completion(answer, "m")
    assert answer["id"].startswith("chatcmpl-")
    assert answer["object"] == "chat.completion"
    assert isinstance(answer["created"], int)


def test_nothing_is_invented():
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}]}
    normalize_completion(answer, "m")
    assert set(answer) == {"choices", "model", "id", "object", "created"}


def test_gemini_tool_call_gets_an_id_and_finish_reason_tool_calls():
    call = {"id": "", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    answer = normalize_completion(completion(content=None, tool_calls=[call]), "m")
    choice = answer["choices"][0]
    assert choice["message"]["tool_calls"][0]["id"].startswith("call_")
    assert choice["finish_reason"] == "tool_calls"


def test_vendor_tool_call_ids_are_kept():
    call = {"id": "call_vendor", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    answer = normalize_completion(completion(content=None, tool_calls=[call]), "m")
    assert answer["choices"][0]["message"]["tool_calls"][0]["id"] == "call_vendor"


def chunk(chunk_id="c1", created=1, **delta):
    return {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": "vendor-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
    }


def test_stream_keeps_one_id_and_created_across_chunks():
    normalizer = StreamNormalizer("any-model")
    chunks = [normalizer.chunk(chunk(f"gemini-{i}", 100 + i, content=str(i))) for i in range(3)]
    assert {c["id"] for c in chunks} == {"gemini-0"}
    assert {c["created"] for c in chunks} == {100}
    assert {c["model"] for c in chunks} == {"any-model"}


def test_stream_tool_call_deltas_keep_one_generated_id():
    normalizer = StreamNormalizer("m")
    first = normalizer.chunk(
        chunk(tool_calls=[{"index": 0, "id": "", "type": "function", "function": {"name": "f", "arguments": ""}}])
    )
    later = normalizer.chunk(chunk(tool_calls=[{"index": 0, "id": "", "function": {"arguments": "{}"}}]))
    without_id = normalizer.chunk(chunk(tool_calls=[{"index": 0, "function": {"arguments": "}"}}]))
    generated = first["choices"][0]["delta"]["tool_calls"][0]["id"]
    assert generated.startswith("call_")
    assert later["choices"][0]["delta"]["tool_calls"][0]["id"] == generated
    assert "id" not in without_id["choices"][0]["delta"]["tool_calls"][0]


def test_stream_tool_calls_without_index_get_their_position():
    normalizer = StreamNormalizer("m")
    out = normalizer.chunk(
        chunk(
            tool_calls=[
                {"id": "", "function": {"name": "a", "arguments": "{}"}},
                {"id": "", "function": {"name": "b", "arguments": "{}"}},
            ]
        )
    )
    calls = out["choices"][0]["delta"]["tool_calls"]
    assert [c["index"] for c in calls] == [0, 1]
    assert calls[0]["id"] != calls[1]["id"]


def whole_call(name, arguments, **fields):
    """A tool call sent whole in one delta, Gemini style: an empty id, and ``fields`` (index)."""
    return {**fields, "id": "", "type": "function", "function": {"name": name, "arguments": arguments}}


def accumulated(normalizer, deltas):
    """Feed one chunk per list of tool-call deltas; return the calls as a client accumulates them.

    [(id, name, arguments)] in index order; like the SDK, by ``index`` only.
    """
    calls = {}
    for tool_calls in deltas:
        out = normalizer.chunk(chunk(tool_calls=tool_calls))
        for call in out["choices"][0]["delta"]["tool_calls"]:
            known = calls.setdefault(call["index"], {"id": None, "name": "", "arguments": ""})
            known["id"] = known["id"] or call.get("id")
            function = call.get("function", {})
            known["name"] += function.get("name") or ""
            known["arguments"] += function.get("arguments") or ""
    assert sorted(calls) == list(range(len(calls))), "indexes must be dense: clients index a list"
    return [(c["id"], c["name"], c["arguments"]) for _, c in sorted(calls.items())]


GENERATED = "generated"  # expected id: one the router made up (call_...), distinct from all others


@pytest.mark.parametrize(
    ("deltas", "expected"),
    [
        pytest.param(
            [[whole_call("a", '{"x":1}')], [whole_call("b", '{"y":2}')], [whole_call("a", '{"x":3}')]],
            [(GENERATED, "a", '{"x":1}'), (GENERATED, "b", '{"y":2}'), (GENERATED, "a", '{"x":3}')],
            id="gemini-no-index",
        ),
        pytest.param(
            [[whole_call("a", '{"x":1}', index=0)], [whole_call("b", '{"y":2}', index=0)]],
            [(GENERATED, "a", '{"x":1}'), (GENERATED, "b", '{"y":2}')],
            id="gemini-index-zero-every-time",
        ),
        pytest.param(
            [[whole_call("a", "{}", index=0)], [whole_call("b", "{}", index=1)], [whole_call("c", "{}", index=2)]],
            [(GENERATED, "a", "{}"), (GENERATED, "b", "{}"), (GENERATED, "c", "{}")],
            id="gemini-sequential-index",
        ),
        pytest.param(
            [[whole_call("a", "{}"), whole_call("b", "{}")], [whole_call("c", "{}")]],
            [(GENERATED, "a", "{}"), (GENERATED, "b", "{}"), (GENERATED, "c", "{}")],
            id="two-in-one-delta-then-one",
        ),
        pytest.param(
            [
                [{"index": 0, "id": "call_a", "function": {"name": "f", "arguments": '{"a":'}}],
                [{"index": 0, "id": "call_b", "function": {"arguments": "1}"}}],
            ],
            [("call_a", "f", '{"a":'), ("call_b", "", "1}")],
            id="a-different-id-is-a-new-call",
        ),
        pytest.param(
            [
                [{"index": 0, "id": "call_a", "function": {"name": "f", "arguments": '{"a":'}}],
                [{"index": 0, "id": "call_a", "function": {"name": "f", "arguments": "1}"}}],
            ],
            [("call_a", "ff", '{"a":1}')],
            id="a-repeated-name-under-the-same-id-is-the-same-call",
        ),
        pytest.param(
            [
                [{"index": 0, "id": "", "function": {"name": "f", "arguments": ""}}],
                [{"index": 0, "function": {"arguments": '{"a":'}}],
                [{"index": 0, "function": {"arguments": "1}"}}],
            ],
            [(GENERATED, "f", '{"a":1}')],
            id="fragments-without-a-name-continue-the-call",
        ),
    ],
)
def test_stream_tool_calls_each_keep_their_own_index_id_and_arguments(deltas, expected):
    calls = accumulated(StreamNormalizer("m"), deltas)
    assert [(name, arguments) for _, name, arguments in calls] == [(n, a) for _, n, a in expected]
    for (got, _, _), (want, _, _) in zip(calls, expected, strict=True):
        assert got.startswith("call_") if want == GENERATED else got == want
    assert len({got for got, _, _ in calls}) == len(calls)


def test_stream_openai_indexed_tool_calls_pass_unchanged():
    def header(index, call_id, name):
        return {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}

    def fragment(index, arguments):
        return {"index": index, "function": {"arguments": arguments}}

    deltas = [
        [header(0, "call_a", "get_time")],
        [fragment(0, '{"zone":')],
        [fragment(0, '"UTC"}')],
        [header(1, "call_b", "get_weather")],
        [fragment(1, "{}")],
    ]
    normalizer = StreamNormalizer("m")
    for tool_calls in deltas:
        sent = copy.deepcopy(tool_calls)
        assert normalizer.chunk(chunk(tool_calls=tool_calls))["choices"][0]["delta"]["tool_calls"] == sent


def test_stream_tool_call_indexes_count_per_choice():
    normalizer = StreamNormalizer("m")
    first = accumulated(normalizer, [[whole_call("a", "{}")], [whole_call("b", "{}")]])
    second = normalizer.chunk(
        {"choices": [{"index": 1, "delta": {"tool_calls": [whole_call("c", "{}")]}, "finish_reason": None}]}
    )
    assert len(first) == 2
    assert second["choices"][0]["delta"]["tool_calls"][0]["index"] == 0


def test_stream_stop_after_tool_calls_becomes_tool_calls():
    normalizer = StreamNormalizer("m")
    normalizer.chunk(chunk(tool_calls=[{"index": 0, "id": "x", "function": {"name": "f", "arguments": "{}"}}]))
    final = chunk()
    final["choices"][0]["finish_reason"] = "stop"
    assert normalizer.chunk(final)["choices"][0]["finish_reason"] == "tool_calls"
    assert normalizer.finish_seen


def test_stream_plain_stop_stays_stop():
    normalizer = StreamNormalizer("m")
    final = chunk(content="done")
    final["choices"][0]["finish_reason"] = "stop"
    assert normalizer.chunk(final)["choices"][0]["finish_reason"] == "stop"


def test_gemini_array_error_is_unwrapped():
    body = [
        {
            "error": {
                "code": 400,
                "message": 'Invalid JSON payload received. Unknown name "foo"',
                "status": "INVALID_ARGUMENT",
            }
        }
    ]
    assert vendor_error(400, body) == {
        "message": 'Invalid JSON payload received. Unknown name "foo"',
        "type": "invalid_request_error",
        "param": None,
        "code": "INVALID_ARGUMENT",
    }


def test_openai_error_is_kept_as_is():
    error = {"message": "Rate limit reached", "type": "requests", "param": None, "code": "rate_limit_exceeded"}
    assert vendor_error(429, {"error": error}) == error


def test_html_error_page_becomes_a_plain_message():
    error = vendor_error(502, None, "<html><body>Bad Gateway</body></html>")
    assert error["message"] == "The vendor answered HTTP 502 without an error message."
    assert error["type"] == "api_error"


def test_key_echoed_by_vendor_is_redacted():
    body = {
        "error": {"message": "Incorrect API key provided: sk-proj-abc***************wxyz.", "code": "invalid_api_key"}
    }
    error = vendor_error(401, body)
    assert "sk-" not in error["message"]
    assert error["type"] == "authentication_error"
