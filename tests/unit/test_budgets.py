"""Budgets: parsing, calendar windows, the reservation rule, and whole answers through the Flask
test client (streams, Redis and several workers: tests/integration/test_budgets.py)."""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime

import pytest
import responses

from app.budgets.ledger import Line, MemoryLedger
from app.budgets.limits import BudgetLimit, parse_budget, window_span
from app.budgets.tokens import Usage
from app.catalog import ConfigError
from app.settings import ClientKey, Settings, SettingsError
from tests.support.api import GEMINI_URL, OPENAI_URL, assert_openai_error, chat_body, completion

KEY = "rk-budget-client-0123456789"
OTHER_KEY = "rk-budget-other-0123456789"
PRICED_MODELS = [
    {"vendor": "openai", "model": "gpt-4o", "price": {"input": 2.5, "output": 10.0, "cached_input": 1.25}},
    {"vendor": "gemini", "model": "gemini-2.0-flash", "price": {"input": 0.1, "output": 0.4}},
]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def used(prompt: int, completion_tokens: int, cached: int | None = None) -> dict:
    answer = completion()
    answer["usage"] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
    }
    if cached is not None:
        answer["usage"]["prompt_tokens_details"] = {"cached_tokens": cached}
    return answer


# -- configuration ----------------------------------------------------------------------------


def test_budget_syntax_reads_several_limits_in_tokens_and_usd():
    assert parse_budget("2000000 tokens per day; 50 usd per month", "BUDGET") == (
        BudgetLimit(2000000, "tokens", "day"),
        BudgetLimit(50, "usd", "month"),
    )
    assert parse_budget("0.5 USD per hour", "BUDGET") == (BudgetLimit(0.5, "usd", "hour"),)


@pytest.mark.parametrize(
    "value",
    ["100 tokens", "100 tokens per week", "-1 tokens per day", "0 usd per day", "1.5 tokens per day", "lots", ";"],
)
def test_a_bad_budget_stops_start_up_naming_the_variable(value):
    with pytest.raises(SettingsError, match=r"^BUDGET"):
        Settings.from_env({"BUDGET": value})


def test_the_same_unit_and_window_twice_is_refused():
    with pytest.raises(SettingsError, match="tokens per day twice"):
        parse_budget("10 tokens per day;20 tokens per day", "BUDGET")


def test_a_client_budget_replaces_budget_and_anonymous_gets_budget_without_keys():
    env = {
        "ROUTER_API_KEYS": f"batch.jobs={KEY},web={OTHER_KEY}",
        "BUDGET": "100 tokens per day",
        "BUDGET_BATCH_JOBS": "5 usd per month",
    }
    settings = Settings.from_env(env)
    assert settings.budgets() == {
        "batch.jobs": (BudgetLimit(5, "usd", "month"),),
        "web": (BudgetLimit(100, "tokens", "day"),),
    }
    assert Settings.from_env({"BUDGET": "100 tokens per day"}).budgets() == {
        "anonymous": (BudgetLimit(100, "tokens", "day"),)
    }
    assert Settings.from_env({}).budgets() == {}


def test_a_client_budget_variable_naming_no_configured_client_stops_start_up():
    with pytest.raises(SettingsError, match="BUDGET_WEBB names no configured client"):
        Settings.from_env({"ROUTER_API_KEYS": f"web={KEY}", "BUDGET_WEBB": "10 tokens per day"})
    with pytest.raises(SettingsError, match="BUDGET_ANONYMOUS names no configured client"):
        Settings.from_env({"BUDGET_ANONYMOUS": "10 tokens per day"})


def test_budget_storage_must_be_memory_or_a_redis_url():
    assert Settings.from_env({"BUDGET_STORAGE": "redis://localhost:6379/0"}).budget_storage.startswith("redis://")
    with pytest.raises(SettingsError, match=r"^BUDGET_STORAGE"):
        Settings.from_env({"BUDGET_STORAGE": "memcached://x"})


def test_a_usd_budget_with_an_unpriced_model_stops_start_up_naming_the_model(make_app):
    models = [PRICED_MODELS[0], {"vendor": "gemini", "model": "gemini-2.0-flash"}]
    with pytest.raises(SettingsError, match=r"model gemini/gemini-2\.0-flash has no price"):
        make_app(models=models, budget=parse_budget("1 usd per day", "BUDGET"))
    make_app(models=models, budget=parse_budget("100 tokens per day", "BUDGET"))  # tokens need no price


@pytest.mark.parametrize(
    "price",
    [{"input": 1}, {"input": -1, "output": 1}, {"input": 1, "output": "2"}, {"input": 1, "output": 2, "x": 1}, 3],
)
def test_a_bad_price_stops_start_up_naming_the_entry(make_app, price):
    with pytest.raises(ConfigError, match="entry 1 \\(openai/gpt-4o\\)"):
        make_app(models=[{"vendor": "openai", "model": "gpt-4o", "price": price}])


def test_calendar_windows_are_utc_hours_days_and_months():
    moment = datetime(2026, 12, 31, 23, 59, 30, tzinfo=UTC).timestamp()
    assert window_span("hour", moment) == (datetime(2026, 12, 31, 23, tzinfo=UTC).timestamp(), moment + 30)
    assert window_span("day", moment)[1] == moment + 30
    start, end = window_span("month", moment)
    assert (start, end) == (datetime(2026, 12, 1, tzinfo=UTC).timestamp(), moment + 30)
    assert (
        window_span("month", datetime(2026, 2, 10, tzinfo=UTC).timestamp())[1]
        == datetime(2026, 3, 1, tzinfo=UTC).timestamp()
    )


# -- the reservation rule ---------------------------------------------------------------------


def line(limit: float, fixed: float, per_token: float = 1.0) -> Line:
    return Line("k", limit, time.time() + 3600, fixed, per_token)


def test_a_reservation_grants_the_allowance_when_it_fits_and_lowers_it_to_what_is_left():
    ledger = MemoryLedger()
    assert ledger.reserve([line(100, 10)], 50, 1).tokens == 50  # 60 spent
    assert ledger.reserve([line(100, 10)], 50, 1).tokens == 30  # only 40 left: input 10 + 30
    refused = ledger.reserve([line(100, 1)], 50, 1)
    assert refused.tokens is None and refused.refused == (0,)
    assert ledger.spent(["k"]) == (100.0,)


def test_a_call_starts_only_when_its_input_and_one_output_token_fit():
    ledger = MemoryLedger()
    ledger.adjust([line(100, 0)], [90])
    assert ledger.reserve([line(100, 10)], 50, 1).tokens is None  # 10 left: input alone fills it
    assert ledger.reserve([line(100, 9)], 50, 1).tokens == 1


def test_usage_counts_cached_input_apart():
    assert Usage.from_vendor({"prompt_tokens": 10, "completion_tokens": 5}) == Usage(10, 0, 5)
    assert Usage.from_vendor(
        {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 4}}
    ) == Usage(10, 4, 5)
    assert Usage.from_vendor(None) is None


# -- whole answers through the app ------------------------------------------------------------


@responses.activate
def test_a_spent_token_budget_rejects_the_call_with_429_and_retry_after_to_the_window_end(make_app):
    responses.post(OPENAI_URL, json=used(40, 50))
    client = make_app(budget=parse_budget("100 tokens per hour", "BUDGET")).test_client()
    body = chat_body(max_tokens=20)
    assert client.post("/v1/chat/completions?vendor=openai", json=body).status_code == 200
    assert client.post("/v1/chat/completions?vendor=openai", json=body).status_code == 200  # 90 spent, 10 left
    refused = client.post("/v1/chat/completions?vendor=openai", json=body)
    error = assert_openai_error(refused, 429)
    assert error["type"] == "insufficient_quota"
    assert error["code"] == "budget_exceeded"
    assert error["message"].startswith("budget exceeded")
    assert "100 tokens per hour" in error["message"]
    end = window_span("hour", time.time())[1]
    assert int(refused.headers["Retry-After"]) == pytest.approx(math.ceil(end - time.time()), abs=2)
    assert len(responses.calls) == 2  # the refused call never reached a vendor


@responses.activate
def test_less_left_than_the_allowance_lowers_the_max_tokens_the_vendor_gets(make_app, capsys):
    responses.post(OPENAI_URL, json=used(4, 2))
    client = make_app(budget=parse_budget("100 tokens per day", "BUDGET")).test_client()
    client.post("/v1/chat/completions?vendor=openai", json=chat_body(max_tokens=1000)).close()
    sent = json.loads(responses.calls[0].request.body)
    assert sent["max_tokens"] == 100 - 6  # "Hello": 2 tokens + 4 of framing, then the rest for output
    assert "max_completion_tokens" not in sent  # the field the client used
    assert "budget_max_tokens=94" in capsys.readouterr().out
    # A request that names no max tokens gets one, in the field every vendor takes.
    client.post("/v1/chat/completions?vendor=openai", json=chat_body())
    assert json.loads(responses.calls[1].request.body)["max_completion_tokens"] == 100 - 6 - 6  # 6 spent, 6 of input


@responses.activate
def test_each_answer_asked_for_with_n_is_reserved_and_shares_what_is_left(make_app, capsys):
    # The vendor bills n answers of up to max tokens each: n times the allowance is reserved, and
    # when less is left each answer gets its share.
    responses.post(OPENAI_URL, json=used(6, 40))
    client = make_app(budget=parse_budget("1000 tokens per day", "BUDGET")).test_client()
    client.post("/v1/chat/completions?vendor=openai", json=chat_body(n=8)).close()
    sent = json.loads(responses.calls[0].request.body)
    assert sent["max_completion_tokens"] == (1000 - 6) // 8
    assert "budget_max_tokens=124" in capsys.readouterr().out
    client.post("/v1/chat/completions?vendor=openai", json=chat_body(n=8, max_tokens=10)).close()
    assert json.loads(responses.calls[1].request.body)["max_tokens"] == 10  # 8 x 10 fit: untouched


@pytest.mark.parametrize("n", ["8", 8.0])
@responses.activate
def test_n_is_read_as_leniently_as_a_vendor_would(make_app, n):
    responses.post(OPENAI_URL, json=used(6, 40))
    client = make_app(budget=parse_budget("1000 tokens per day", "BUDGET")).test_client()
    client.post("/v1/chat/completions?vendor=openai", json=chat_body(n=n)).close()
    assert json.loads(responses.calls[0].request.body)["max_completion_tokens"] == (1000 - 6) // 8


@responses.activate
def test_input_outside_the_messages_is_reserved_too(make_app):
    # A schema of 40,000 characters is input the vendor bills: about 10,000 tokens, more than the
    # whole budget, so the call never reaches a vendor.
    responses.post(OPENAI_URL, json=used(6, 2))
    client = make_app(budget=parse_budget("1000 tokens per day", "BUDGET")).test_client()
    schema = {"type": "object", "description": "x" * 40_000}
    body = chat_body(
        max_tokens=10, response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    )
    refused = client.post("/v1/chat/completions?vendor=openai", json=body)
    error = assert_openai_error(refused, 429)
    assert "has 1000 tokens left of its 1000 tokens per day" in error["message"]
    assert "more than the whole limit" in error["message"]
    assert len(responses.calls) == 0


@responses.activate
def test_a_refusal_says_what_is_left_and_what_the_request_needs(make_app):
    responses.post(OPENAI_URL, json=used(40, 50))
    client = make_app(budget=parse_budget("100 tokens per hour", "BUDGET")).test_client()
    assert client.post("/v1/chat/completions?vendor=openai", json=chat_body(max_tokens=20)).status_code == 200
    long = chat_body(max_tokens=20, messages=[{"role": "user", "content": "x" * 200}])  # 4 + 50 of input
    error = assert_openai_error(client.post("/v1/chat/completions?vendor=openai", json=long), 429)
    assert "has 10 tokens left of its 100 tokens per hour, and this request needs at least 55" in error["message"]
    assert "more than the whole limit" not in error["message"]


@responses.activate
def test_spend_is_the_vendors_usage_and_get_budget_shows_it(make_app):
    responses.post(OPENAI_URL, json=used(7, 11))
    app = make_app(
        api_keys=(ClientKey("web", KEY),),
        budget=parse_budget("1000 tokens per day;20000 tokens per month", "BUDGET"),
    )
    client = app.test_client()
    for _ in range(3):
        client.post("/v1/chat/completions?vendor=openai", json=chat_body(), headers=bearer(KEY))
    shown = client.get("/v1/budget", headers=bearer(KEY)).get_json()
    assert shown["client"] == "web"
    day, month = shown["budgets"]
    assert day == {
        "limit": 1000,
        "unit": "tokens",
        "window": "day",
        "spent": 54,
        "remaining": 946,
        "resets_at": datetime.fromtimestamp(window_span("day", time.time())[1], UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    assert (month["window"], month["spent"], month["remaining"]) == ("month", 54, 19946)


@responses.activate
def test_usd_budgets_price_input_cached_input_and_output_per_model(make_app):
    responses.post(OPENAI_URL, json=used(1_000_000, 100_000, cached=400_000))
    client = make_app(models=PRICED_MODELS, budget=parse_budget("10 usd per day", "BUDGET")).test_client()
    assert client.post("/v1/chat/completions?vendor=openai", json=chat_body()).status_code == 200
    [shown] = client.get("/v1/budget").get_json()["budgets"]
    # 600,000 fresh input at 2.5, 400,000 cached at 1.25, 100,000 output at 10 (USD per million)
    assert shown["spent"] == pytest.approx(1.5 + 0.5 + 1.0)
    assert shown["remaining"] == pytest.approx(7.0)
    assert shown["unit"] == "usd"


@responses.activate
def test_remaining_never_goes_below_zero(make_app):
    responses.post(OPENAI_URL, json=used(500, 500))  # the vendor used more than was reserved
    client = make_app(budget=parse_budget("100 tokens per day", "BUDGET")).test_client()
    client.post("/v1/chat/completions?vendor=openai", json=chat_body())
    [shown] = client.get("/v1/budget").get_json()["budgets"]
    assert (shown["spent"], shown["remaining"]) == (1000, 0)


@responses.activate
def test_a_failed_over_request_pays_only_for_the_attempt_that_answered(make_app):
    responses.post(OPENAI_URL, json={"error": {"message": "down"}}, status=500)
    responses.post(GEMINI_URL, json=used(3, 4))
    client = make_app(budget=parse_budget("1000 tokens per day", "BUDGET"), cooldown_seconds=0).test_client()
    for _ in range(8):
        assert client.post("/v1/chat/completions", json=chat_body()).status_code == 200
    assert any(call.request.url == OPENAI_URL for call in responses.calls)  # some failed over
    assert client.get("/v1/budget").get_json()["budgets"][0]["spent"] == 8 * 7


@responses.activate
def test_a_request_no_vendor_answered_costs_nothing(make_app):
    responses.post(OPENAI_URL, json={"error": {"message": "down"}}, status=500)
    client = make_app(budget=parse_budget("1000 tokens per day", "BUDGET")).test_client()
    assert client.post("/v1/chat/completions?vendor=openai", json=chat_body()).status_code == 500
    assert client.get("/v1/budget").get_json()["budgets"][0]["spent"] == 0


@responses.activate
def test_budgets_of_named_clients_are_independent(make_app):
    responses.post(OPENAI_URL, json=used(40, 60))
    app = make_app(
        api_keys=(ClientKey("web", KEY), ClientKey("batch", OTHER_KEY, budget=parse_budget("500 tokens per day", "B"))),
        budget=parse_budget("100 tokens per day", "BUDGET"),
    )
    client = app.test_client()
    call = lambda key: client.post("/v1/chat/completions?vendor=openai", json=chat_body(), headers=bearer(key))  # noqa: E731
    assert [call(KEY).status_code for _ in range(2)] == [200, 429]
    assert [call(OTHER_KEY).status_code for _ in range(5)] == [200] * 5
    assert client.get("/v1/budget", headers=bearer(KEY)).get_json()["budgets"][0]["spent"] == 100
    batch = client.get("/v1/budget", headers=bearer(OTHER_KEY)).get_json()
    assert batch["client"] == "batch" and batch["budgets"][0]["spent"] == 500


def test_a_client_without_a_budget_sees_an_empty_list(make_app):
    client = make_app().test_client()
    assert client.get("/v1/budget").get_json() == {"client": "anonymous", "budgets": []}


@responses.activate
def test_messages_refusal_is_anthropic_shaped(make_app):
    responses.post(OPENAI_URL, json=used(40, 60))
    client = make_app(budget=parse_budget("100 tokens per day", "BUDGET")).test_client()
    body = {"model": "gpt-4o", "max_tokens": 50, "messages": [{"role": "user", "content": "Hello"}]}
    assert client.post("/v1/messages", json=body).status_code == 200
    refused = client.post("/v1/messages", json=body)
    assert refused.status_code == 429
    error = refused.get_json()
    assert error["type"] == "error" and error["error"]["type"] == "rate_limit_error"
    assert error["error"]["message"].startswith("budget exceeded")
    assert int(refused.headers["retry-after"]) >= 1


@responses.activate
def test_responses_and_messages_lower_max_completion_tokens(make_app):
    responses.post(OPENAI_URL, json=used(1, 1))
    client = make_app(budget=parse_budget("60 tokens per day", "BUDGET")).test_client()
    client.post("/v1/responses", json={"model": "gpt-4o", "input": "Hello", "max_output_tokens": 500})
    assert json.loads(responses.calls[0].request.body)["max_completion_tokens"] == 60 - 6  # 6 of input
    body = {"model": "gpt-4o", "max_tokens": 500, "messages": [{"role": "user", "content": "Hi"}]}
    client.post("/v1/messages", json=body)
    assert json.loads(responses.calls[1].request.body)["max_completion_tokens"] == 60 - 2 - 5  # 2 spent, 5 of input


@responses.activate
def test_embeddings_reserve_their_input(make_app):
    url = "http://openai.test/v1/embeddings"
    usage = {"prompt_tokens": 30, "total_tokens": 30}
    responses.post(url, json={"object": "list", "data": [], "model": "m", "usage": usage})
    models = [{"vendor": "openai", "model": "text-embedding-3-small", "type": "embedding"}]
    client = make_app(models=models, budget=parse_budget("50 tokens per day", "BUDGET")).test_client()
    body = {"model": "text-embedding-3-small", "input": "x" * 80}
    assert client.post("/v1/embeddings", json=body).status_code == 200
    assert client.post("/v1/embeddings", json=body).status_code == 200  # 30 spent, 20 left: 20 estimated
    assert client.post("/v1/embeddings", json=body).status_code == 429
