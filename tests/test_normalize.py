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
