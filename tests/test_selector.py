import random
from collections import Counter

import pytest

from app.catalog import load_catalog
from app.errors import InvalidRequest, NotFound, ServiceUnavailable
from app.selector import Selector

MODELS = [
    {"vendor": "openai", "model": "gpt-4o"},
    {"vendor": "openai", "model": "gpt-4o-mini"},
    {"vendor": "gemini", "model": "gemini-2.0-flash"},
]
CREDENTIALS = [
    {"platform": "openai", "value": "sk-first-key-aaaaaaaa"},
    {"platform": "openai", "value": "sk-second-key-bbbbbbb"},
    {"platform": "gemini", "value": "gemini-key-cccccccccc"},
]


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def catalog(write_config):
    return load_catalog(write_config(models=MODELS, credentials=CREDENTIALS), environ={})


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def selector(catalog, clock):
    return Selector(catalog, cooldown_seconds=30, max_cooldown_seconds=300, clock=clock, rng=random.Random(7))


def test_every_combination_is_equally_likely(selector):
    candidates = selector.candidates(None, "any-model")
    assert len(candidates) == 5  # 2 openai keys x 2 models + 1 gemini key x 1 model
    draws = 10_000
    counts = Counter(selector.choose(candidates).key for _ in range(draws))
    expected = draws / len(candidates)
    chi_square = sum((counts[c.key] - expected) ** 2 / expected for c in candidates)
    # 4 degrees of freedom: 18.47 is the 0.999 quantile; a biased selector lands far above it.
    assert chi_square < 18.47, counts


def test_vendor_filter_keeps_only_that_vendor(selector):
    assert {c.vendor.name for c in selector.candidates("gemini", None)} == {"gemini"}


def test_configured_model_name_routes_only_to_that_model(selector):
    assert {c.model.id for c in selector.candidates(None, "gpt-4o-mini")} == {"gpt-4o-mini"}
    assert len(selector.candidates(None, "gpt-4o-mini")) == 2


def test_unconfigured_model_name_lets_the_router_choose(selector):
    assert len(selector.candidates(None, "claude-9")) == 5


def test_unknown_vendor_is_a_404_naming_the_vendor(selector):
    with pytest.raises(NotFound, match="'mistral'") as caught:
        selector.candidates("mistral", None)
    assert caught.value.param == "vendor"


def test_model_of_another_vendor_with_vendor_filter_is_a_400(selector):
    with pytest.raises(InvalidRequest, match="not offered by vendor 'gemini'"):
        selector.candidates("gemini", "gpt-4o")


def test_vendor_without_credentials_is_a_503_naming_it(write_config):
    catalog = load_catalog(write_config(credentials=None), environ={})
    selector = Selector(catalog, 30, 300)
    with pytest.raises(ServiceUnavailable, match="No credentials configured for vendor openai, gemini"):
        selector.candidates(None, None)
    with pytest.raises(ServiceUnavailable, match="vendor gemini:"):
        selector.candidates(None, "gemini-2.0-flash")


def test_excluded_combinations_are_never_chosen(selector):
    candidates = selector.candidates("openai", None)
    excluded = {c.key for c in candidates[:3]}
    for _ in range(200):
        assert selector.choose(candidates, excluded).key not in excluded
    assert selector.choose(candidates, {c.key for c in candidates}) is None


def test_cooling_combination_is_skipped_until_cooldown_ends(selector, clock):
    candidates = selector.candidates("openai", "gpt-4o")
    failing = candidates[0]
    selector.cool_down(failing)
    assert all(selector.choose(candidates) is not failing for _ in range(100))
    assert selector.cooling_count() == 1
    clock.now += 30.1
    assert selector.cooling_count() == 0
    assert failing in {selector.choose(candidates) for _ in range(100)}


def test_longer_retry_after_wins_but_is_capped(selector, clock):
    combination = selector.candidates("gemini", None)[0]
    selector.cool_down(combination, retry_after=120)
    clock.now += 100
    assert selector.cooling_count() == 1
    selector.cool_down(combination, retry_after=10_000)
    clock.now += 299
    assert selector.cooling_count() == 1
    clock.now += 2
    assert selector.cooling_count() == 0


def test_when_all_are_cooling_the_one_ready_soonest_is_still_tried(selector, clock):
    candidates = selector.candidates("openai", "gpt-4o")
    first, second = candidates
    selector.cool_down(first)
    clock.now += 5
    selector.cool_down(second)
    assert selector.choose(candidates) is first


def test_refused_credential_cools_every_combination_using_it(selector):
    candidates = selector.candidates("openai", None)
    refused = candidates[0].credential
    selector.cool_down_credential(refused)
    chosen = {selector.choose(candidates).credential for _ in range(100)}
    assert chosen == {candidates[-1].credential}
    assert selector.cooling_count() == 2
