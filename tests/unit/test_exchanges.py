"""What the Responses and embeddings endpoints do with a vendor's whole answer, and where they send it."""

from __future__ import annotations

import json

import pytest

from app.catalog import Model, Vendor
from app.chat import ChatExchange
from app.embeddings import EmbeddingsExchange
from app.endpoint import ClientRequest, UnusableAnswer
from app.responses.recipe import ResponsesExchange

VENDOR = Vendor("gemini", "http://gemini.test/v1beta/openai")
REQUEST = {"model": "any-model", "input": "Weather in Oslo?", "metadata": {"team": "a"}}


def responses_exchange() -> ResponsesExchange:
    return ResponsesExchange({}, "any-model", request=REQUEST)


def gemini_tool_call_completion() -> dict:
    """Gemini's way: an empty tool-call id and finish_reason "stop" on a message with tool calls."""
    call = {"id": "", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1735000000,
        "model": "gemini-2.0-flash",
        "choices": [{"index": 0, "message": {"role": "assistant", "tool_calls": [call]}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
    }


def test_responses_go_to_the_vendors_chat_completions_and_embeddings_to_its_embeddings():
    assert responses_exchange().url(VENDOR) == "http://gemini.test/v1beta/openai/chat/completions"
    assert EmbeddingsExchange({}, "any-model").url(VENDOR) == "http://gemini.test/v1beta/openai/embeddings"


def test_responses_answer_is_built_from_the_normalized_completion():
    answer = json.loads(responses_exchange().translate(gemini_tool_call_completion()))
    assert (answer["object"], answer["model"], answer["status"]) == ("response", "any-model", "completed")
    [call] = answer["output"]
    assert call["type"] == "function_call"
    assert call["call_id"].startswith("call_"), "the chat normalizer gave the call an id first"
    assert answer["metadata"] == {"team": "a"}
    assert answer["usage"]["total_tokens"] == 13


def test_responses_answer_without_choices_is_unusable():
    with pytest.raises(UnusableAnswer, match="without choices"):
        responses_exchange().translate({"object": "chat.completion", "choices": []})


def test_embeddings_answer_is_the_vendors_with_the_requested_model():
    document = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.6, 0.8]}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }
    assert json.loads(EmbeddingsExchange({}, "my-embedder").translate(document)) == {**document, "model": "my-embedder"}


@pytest.mark.parametrize("data", [None, {"embedding": [1.0]}, "[]"])
def test_embeddings_answer_without_a_data_list_is_unusable(data):
    with pytest.raises(UnusableAnswer, match="data list"):
        EmbeddingsExchange({}, "any-model").translate({"object": "list", "data": data})


def test_prompt_cache_key_is_sent_only_to_vendors_that_accept_it_and_nothing_else_changes():
    body = {"model": "any-model", "messages": [{"role": "user", "content": "Hi"}], "prompt_cache_key": "s-1", "seed": 7}
    exchange = ChatExchange(body, "any-model")
    openai = Vendor("openai", "http://openai.test/v1", frozenset({"prompt_cache_key"}))
    sent = json.loads(exchange.vendor_body(Model("openai", "gpt-4o"), openai))
    assert sent == {**body, "model": "gpt-4o"}
    sent = json.loads(exchange.vendor_body(Model("gemini", "gemini-2.0-flash"), VENDOR))
    assert sent == {"model": "gemini-2.0-flash", "messages": body["messages"], "seed": 7}
    assert body["prompt_cache_key"] == "s-1"  # the client's body is left as it was


@pytest.mark.parametrize(
    ("session", "body", "key"),
    [
        pytest.param("claude-1", {"prompt_cache_key": "cache-1"}, "claude-1", id="the session header first"),
        pytest.param(None, {"prompt_cache_key": "cache-1"}, "cache-1", id="else the body's prompt_cache_key"),
        pytest.param(None, {"prompt_cache_key": 42}, None, id="a key that is not a string names no session"),
        pytest.param(None, {"prompt_cache_key": ""}, None, id="nor does an empty one"),
        pytest.param(None, {}, None, id="no session"),
    ],
)
def test_the_session_a_request_is_routed_by(session, body, key):
    assert ClientRequest(body, session=session).affinity_key == key
