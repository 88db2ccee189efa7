"""POST /v1/embeddings over real sockets: gunicorn + gevent router, fake vendor, official OpenAI SDK."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator

import openai
import pytest
import requests

from tests.support.processes import FakeVendorProcess, RouterProcess, router_config
from tests.support.prometheus import scrape
from tests.support.sdk import sdk

VENDORS = ["openai", "gemini"]
CHAT_MODELS = [
    {"vendor": "openai", "model": "gpt-4o"},
    {"vendor": "gemini", "model": "gemini-2.0-flash"},
]
EMBEDDING_MODELS = [
    {"vendor": "openai", "model": "text-embedding-3-small", "type": "embedding"},
    {"vendor": "gemini", "model": "gemini-embedding-001", "type": "embedding"},
]
CHAT_IDS = {entry["model"] for entry in CHAT_MODELS}
EMBEDDING_IDS = {entry["model"] for entry in EMBEDDING_MODELS}
# The fake's vectors have 8 values unless the request asks for other dimensions.
FAKE_DIMENSIONS = 8


@pytest.fixture(scope="module")
def router(fake_vendor: FakeVendorProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    """A router with a chat and an embedding model at each vendor, two workers."""
    directory = tmp_path_factory.mktemp("embeddings-router")
    config = router_config(directory, fake_vendor, models=CHAT_MODELS + EMBEDDING_MODELS)
    server = RouterProcess(config, directory / "router.log", workers=2)
    yield server
    server.stop()


@pytest.fixture
def openai_client(router: RouterProcess, fake: FakeVendorProcess) -> openai.OpenAI:
    # Not in strict mode: the SDK asks for base64 by default and its strict check runs before it
    # decodes the vectors, so strict mode fails on any server's answer, OpenAI's included.
    return sdk(router)


def pinned(vendor: str) -> dict:
    return {"extra_query": {"vendor": vendor}}


def floats(encoded: str) -> list[float]:
    raw = base64.b64decode(encoded)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


@pytest.mark.parametrize("vendor", VENDORS)
def test_a_string_is_embedded_by_an_embedding_model_of_that_vendor(openai_client, fake, vendor):
    raw = openai_client.embeddings.with_raw_response.create(model="any-model", input="Hello", **pinned(vendor))
    answer = raw.parse()
    assert answer.model == "any-model"
    [item] = answer.data
    assert item.index == 0 and len(item.embedding) == FAKE_DIMENSIONS
    assert abs(sum(value * value for value in item.embedding) - 1) < 1e-3, "the fake's vectors have unit length"
    assert answer.usage.prompt_tokens > 0
    assert raw.headers["x-vendor-source"] == vendor
    [received] = fake.requests(vendor)
    assert received["endpoint"] == "embeddings"
    assert received["path"].endswith("/embeddings")
    assert received["body"]["model"] == raw.headers["x-model-source"]
    assert received["body"]["model"] in EMBEDDING_IDS
    assert received["body"]["input"] == "Hello"


@pytest.mark.parametrize("vendor", VENDORS)
def test_a_list_gets_one_vector_per_item_in_order(openai_client, fake, vendor):
    answer = openai_client.embeddings.create(model="any-model", input=["red", "green", "red"], **pinned(vendor))
    assert [item.index for item in answer.data] == [0, 1, 2]
    assert answer.data[0].embedding == answer.data[2].embedding != answer.data[1].embedding


@pytest.mark.parametrize("vendor", VENDORS)
def test_base64_encoding_is_relayed_as_the_vendor_sent_it(openai_client, fake, vendor):
    answer = openai_client.embeddings.create(
        model="any-model", input="Hello", encoding_format="base64", **pinned(vendor)
    )
    [item] = answer.data
    assert isinstance(item.embedding, str)
    assert len(floats(item.embedding)) == FAKE_DIMENSIONS
    # The same text as floats gives the same vector.
    as_floats = openai_client.embeddings.create(
        model="any-model", input="Hello", encoding_format="float", **pinned(vendor)
    )
    assert floats(item.embedding) == pytest.approx(as_floats.data[0].embedding, rel=1e-6)
    assert [r["body"]["encoding_format"] for r in fake.requests(vendor)] == ["base64", "float"]


@pytest.mark.parametrize("vendor", VENDORS)
def test_dimensions_reach_the_vendor(openai_client, fake, vendor):
    answer = openai_client.embeddings.create(model="any-model", input=["a", "b"], dimensions=3, **pinned(vendor))
    assert [len(item.embedding) for item in answer.data] == [3, 3]
    assert fake.requests(vendor)[0]["body"]["dimensions"] == 3


def test_token_inputs_are_embedded(openai_client, fake):
    assert len(openai_client.embeddings.create(model="any-model", input=[1, 2, 3]).data) == 1
    assert len(openai_client.embeddings.create(model="any-model", input=[[1, 2], [3]]).data) == 2


def test_embedding_requests_never_reach_a_chat_model_and_chat_never_an_embedding_model(openai_client, fake):
    # Each pick is random among two models: 8 rounds miss one of them 1 time in 128, 24 never in practice.
    rounds = 24
    for _ in range(rounds):
        openai_client.embeddings.create(model="any-model", input="Hello")
        openai_client.chat.completions.create(model="any-model", messages=[{"role": "user", "content": "Hello"}])
        openai_client.responses.create(model="any-model", input="Hello")
    received = [(r["endpoint"], r["body"]["model"]) for r in fake.requests()]
    assert {model for endpoint, model in received if endpoint == "embeddings"} == EMBEDDING_IDS
    assert {model for endpoint, model in received if endpoint == "chat"} == CHAT_IDS
    assert len(received) == 3 * rounds


def test_naming_a_model_of_the_other_type_answers_400_pointing_to_the_right_endpoint(openai_client, fake):
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.embeddings.create(model="gpt-4o", input="Hello")
    assert caught.value.body["code"] == "wrong_model_type"
    assert "/v1/chat/completions" in caught.value.body["message"]
    for call in (
        lambda: openai_client.chat.completions.create(
            model="text-embedding-3-small", messages=[{"role": "user", "content": "Hello"}]
        ),
        lambda: openai_client.responses.create(model="text-embedding-3-small", input="Hello"),
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            call()
        assert caught.value.body["code"] == "wrong_model_type"
        assert "/v1/embeddings" in caught.value.body["message"]
    assert fake.requests() == []


def test_a_named_embedding_model_is_the_one_used(openai_client, fake):
    for _ in range(4):
        raw = openai_client.embeddings.with_raw_response.create(model="gemini-embedding-001", input="Hello")
        assert raw.parse().model == "gemini-embedding-001"
        assert raw.headers["x-model-source"] == "gemini-embedding-001"
    assert {r["body"]["model"] for r in fake.requests()} == {"gemini-embedding-001"}


def test_usage_is_counted_as_prompt_tokens(router, openai_client, fake):
    before = scrape(router.base)
    counted = 0
    for vendor in VENDORS:
        counted += openai_client.embeddings.create(
            model="any-model", input=["one", "two"], **pinned(vendor)
        ).usage.prompt_tokens
    after = scrape(router.base)
    assert counted > 0
    assert after.value("router_tokens_total", kind="prompt") - before.value("router_tokens_total", kind="prompt") == (
        counted
    )
    for model in EMBEDDING_IDS:
        assert after.value("router_tokens_total", model=model, kind="prompt") > 0
    assert after.value("router_tokens_total", kind="completion") == before.value(
        "router_tokens_total", kind="completion"
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": ["ok", ""]}, "input[1]"),
        ({"input": ["text", 3]}, "input[1]"),
        ({"input": ["x"] * 2049}, "input"),
        ({"input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x", "dimensions": "8"}, "dimensions"),
        ({}, "input"),
    ],
)
def test_invalid_requests_answer_400_naming_the_field(router, fake, body, param):
    response = requests.post(router.url("/v1/embeddings"), json={"model": "any-model", **body}, timeout=10)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert fake.requests() == []


def test_a_failing_vendor_is_failed_over_and_its_error_answered_when_pinned(start_router, fake):
    fake.behave("openai", status=500)
    server = start_router(models=CHAT_MODELS + EMBEDDING_MODELS, COOLDOWN_SECONDS="0")
    client = sdk(server)
    for _ in range(30):
        raw = client.embeddings.with_raw_response.create(model="any-model", input="Hello")
        assert raw.headers["x-vendor-source"] == "gemini"
        assert len(raw.parse().data) == 1
        if raw.headers["x-router-attempts"] == "2":
            break
    else:
        pytest.fail("the router never chose the failing vendor first in 30 requests")
    with pytest.raises(openai.InternalServerError):
        client.embeddings.create(model="any-model", input="Hello", **pinned("openai"))


def test_models_list_names_embedding_models_too(openai_client, fake):
    assert {model.id for model in openai_client.models.list()} == CHAT_IDS | EMBEDDING_IDS


def test_a_named_clients_responses_and_embeddings_tokens_are_counted_under_its_name(start_router, fake):
    key = "rk-embedding-team-0123456789"
    server = start_router(models=CHAT_MODELS + EMBEDDING_MODELS, ROUTER_API_KEYS=f"search={key}")
    client = sdk(server, api_key=key)
    embedded = client.embeddings.create(model="any-model", input=["one", "two"]).usage
    answered = client.responses.create(model="any-model", input="Hello").usage
    metrics = scrape(server.base)
    prompt = metrics.value("router_tokens_total", client="search", kind="prompt")
    assert prompt == embedded.prompt_tokens + answered.input_tokens
    assert metrics.value("router_tokens_total", client="search", kind="completion") == answered.output_tokens
    for route in ("/v1/embeddings", "/v1/responses"):
        assert metrics.value("router_client_requests_total", client="search", route=route, status_class="2xx") == 1
