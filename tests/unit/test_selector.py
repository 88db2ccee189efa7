import random
from collections import Counter

import pytest

from app.catalog import load_catalog
from app.chat import CHAT_FIELDS
from app.errors import InvalidRequest, NotFound, ServiceUnavailable
from app.selector import Selector, share, share_pools

# Where the app serves each model type (the recipes' paths), for "send it to ..." in errors.
PATHS = {"chat": "/v1/chat/completions", "embedding": "/v1/embeddings"}

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
    return Selector(
        catalog, cooldown_seconds=30, max_cooldown_seconds=300, clock=clock, rng=random.Random(7), paths=PATHS
    )


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


def chi_square(counts, expected):
    return sum((counts[key] - share) ** 2 / share for key, share in expected.items())


def routing_selector(write_config, models, credentials=CREDENTIALS, seed=11):
    catalog = load_catalog(write_config(models=models, credentials=credentials), environ={})
    return Selector(
        catalog, cooldown_seconds=30, max_cooldown_seconds=300, clock=Clock(), rng=random.Random(seed), paths=PATHS
    )


ROUTED_MODELS = [
    {"vendor": "openai", "model": "gpt-4o-mini", "weight": 3, "aliases": ["fast"]},
    {"vendor": "openai", "model": "gpt-4o", "aliases": ["smart"], "config": {"support_tools": True}},
    {"vendor": "gemini", "model": "gemini-2.0-flash", "aliases": ["fast"], "config": {"support_streaming": True}},
    {"vendor": "openai", "model": "text-embedding-3-small", "type": "embedding", "aliases": ["embed"]},
]
ONE_KEY_EACH = [
    {"platform": "openai", "value": "sk-first-key-aaaaaaaa"},
    {"platform": "gemini", "value": "gemini-key-cccccccccc"},
]


def test_weights_three_to_one_split_traffic_seventy_five_twenty_five(write_config):
    models = [{"vendor": "openai", "model": "gpt-4o-mini", "weight": 3}, {"vendor": "openai", "model": "gpt-4o"}]
    selector = routing_selector(write_config, models, ONE_KEY_EACH)
    candidates = selector.candidates(None, "any-model")
    draws = 8000
    counts = Counter(selector.choose(candidates).model.id for _ in range(draws))
    # 1 degree of freedom: 10.83 is the 0.999 quantile; an even split would score ~2,700.
    assert chi_square(counts, {"gpt-4o-mini": draws * 0.75, "gpt-4o": draws * 0.25}) < 10.83, counts


def test_credential_weight_multiplies_into_its_combinations(write_config):
    credentials = [
        {"platform": "openai", "value": "sk-tier-high-aaaaaaaa", "weight": 4},
        {"platform": "openai", "value": "sk-tier-low-bbbbbbbbb"},
    ]
    selector = routing_selector(write_config, [{"vendor": "openai", "model": "gpt-4o"}], credentials)
    candidates = selector.candidates(None, None)
    assert [c.weight for c in candidates] == [4.0, 1.0]
    draws = 5000
    counts = Counter(selector.choose(candidates).credential.label for _ in range(draws))
    assert chi_square(counts, {"openai#1": draws * 0.8, "openai#2": draws * 0.2}) < 10.83, counts


def test_cooling_combination_drops_out_and_the_rest_keep_their_proportions(write_config):
    models = [
        {"vendor": "openai", "model": "a", "weight": 5},
        {"vendor": "openai", "model": "b", "weight": 3},
        {"vendor": "openai", "model": "c"},
    ]
    selector = routing_selector(write_config, models, ONE_KEY_EACH)
    candidates = selector.candidates(None, None)
    selector.cool_down(candidates[0])
    draws = 4000
    counts = Counter(selector.choose(candidates).model.id for _ in range(draws))
    assert "a" not in counts
    assert chi_square(counts, {"b": draws * 0.75, "c": draws * 0.25}) < 10.83, counts
    counts = Counter(selector.choose(candidates, {candidates[1].key}).model.id for _ in range(100))
    assert counts == {"c": 100}


def test_share_is_the_percent_of_weight_among_candidates(write_config):
    selector = routing_selector(write_config, ROUTED_MODELS, ONE_KEY_EACH)
    mini, big, flash = selector.candidates(None, "any-model")
    assert share(mini, (mini, big, flash)) == 60.0
    assert share(big, selector.candidates(None, "any-model")) == 20.0
    assert share(mini, selector.candidates(None, "fast")) == 75.0


def test_alias_resolves_to_its_group_only(write_config):
    selector = routing_selector(write_config, ROUTED_MODELS, ONE_KEY_EACH)
    assert [c.model.id for c in selector.candidates(None, "fast")] == ["gpt-4o-mini", "gemini-2.0-flash"]
    assert [c.model.id for c in selector.candidates(None, "smart")] == ["gpt-4o"]
    assert [c.model.id for c in selector.candidates("gemini", "fast")] == ["gemini-2.0-flash"]
    with pytest.raises(InvalidRequest, match="Alias 'smart' has no model of vendor 'gemini'") as caught:
        selector.candidates("gemini", "smart")
    assert caught.value.param == "model"


def test_unknown_name_chooses_among_models_of_the_request_type(write_config):
    selector = routing_selector(write_config, ROUTED_MODELS, ONE_KEY_EACH)
    chat = {c.model.id for c in selector.candidates(None, "any-model")}
    assert chat == {"gpt-4o-mini", "gpt-4o", "gemini-2.0-flash"}
    assert [c.model.id for c in selector.candidates(None, "any-model", kind="embedding")] == ["text-embedding-3-small"]
    assert [c.model.id for c in selector.candidates(None, "embed", kind="embedding")] == ["text-embedding-3-small"]
    with pytest.raises(InvalidRequest, match="No embedding model of vendor gemini is configured"):
        selector.candidates("gemini", None, kind="embedding")


def test_a_model_or_alias_of_the_other_type_is_a_400_pointing_to_the_right_endpoint(write_config):
    selector = routing_selector(write_config, ROUTED_MODELS, ONE_KEY_EACH)
    with pytest.raises(
        InvalidRequest, match=r"'text-embedding-3-small' has type 'embedding'; send it to /v1/embeddings"
    ):
        selector.candidates(None, "text-embedding-3-small")
    with pytest.raises(InvalidRequest, match=r"Alias 'fast' stands for models of type 'chat'; send it to /v1/chat"):
        selector.candidates(None, "fast", kind="embedding")


def test_requests_go_only_to_models_that_support_what_they_need(write_config):
    selector = routing_selector(write_config, ROUTED_MODELS, ONE_KEY_EACH)
    images = selector.candidates(None, None, needs=frozenset({"image"}))
    assert [c.model.id for c in images] == ["gpt-4o-mini"]
    tools = selector.candidates(None, None, needs=frozenset({"tools"}))
    assert [c.model.id for c in tools] == ["gpt-4o-mini", "gpt-4o"]
    streams = selector.candidates(None, "fast", needs=frozenset({"streaming"}))
    assert [c.model.id for c in streams] == ["gpt-4o-mini", "gemini-2.0-flash"]


NO_FIT = {
    "vendor filter": ("gemini", None, {"image"}, "messages", "No configured model of vendor gemini supports images"),
    "alias": (None, "smart", {"streaming"}, "stream", "No configured model in alias 'smart' supports streaming"),
    "model": (
        None,
        "gemini-2.0-flash",
        {"tools"},
        "tools",
        "No configured model named 'gemini-2.0-flash' supports tools",
    ),
    "vendor and alias": ("gemini", "fast", {"video"}, "messages", "of vendor gemini in alias 'fast' supports video"),
    "each exists, not together": (
        None,
        "any-model",
        {"tools", "streaming"},
        "tools",
        "No configured model supports tools and streaming together",
    ),
}


@pytest.mark.parametrize("case", list(NO_FIT))
def test_no_model_fitting_the_request_is_a_400_naming_capability_and_filter(write_config, case):
    models = [*ROUTED_MODELS[1:], {"vendor": "openai", "model": "o1", "config": {"support_streaming": True}}]
    selector = routing_selector(write_config, models, ONE_KEY_EACH)
    vendor, model, needs, param, message = NO_FIT[case]
    with pytest.raises(InvalidRequest, match=message) as caught:
        selector.candidates(vendor, model, needs=frozenset(needs), fields=CHAT_FIELDS)
    assert caught.value.param == param
    assert caught.value.code == "capability_not_supported"


def test_candidates_are_cached_per_filter_and_unknown_names_share_one_entry(write_config):
    selector = routing_selector(write_config, ROUTED_MODELS, ONE_KEY_EACH)
    assert selector.candidates(None, "claude-9") is selector.candidates(None, "anything-else")
    assert selector.candidates(None, "fast") is selector.candidates(None, "fast")
    needs = frozenset({"tools"})
    assert selector.candidates(None, None, needs=needs) is selector.candidates(None, "x", needs=frozenset({"tools"}))


def test_share_pools_cover_each_type_and_each_alias(write_config):
    pools = share_pools(load_catalog(write_config(models=ROUTED_MODELS, credentials=ONE_KEY_EACH), environ={}))
    assert list(pools) == ["chat", "embedding", "alias fast", "alias smart", "alias embed"]
    assert [round(share(c, pools["chat"]), 1) for c in pools["chat"]] == [60.0, 20.0, 20.0]
    assert [share(c, pools["alias fast"]) for c in pools["alias fast"]] == [75.0, 25.0]


# -- affinity: weighted rendezvous for requests that name a session ----------------------------

FOUR_KEYS = [{"platform": "openai", "value": f"sk-affinity-key-{n}-aaaaaaaa"} for n in range(4)]


def test_a_session_reaches_the_same_combination_from_every_worker(write_config):
    workers = [routing_selector(write_config, MODELS, seed=seed) for seed in (1, 2, 3)]
    for session in (f"session-{n}" for n in range(50)):
        chosen = {worker.choose(worker.candidates(None, None), session=session).cooldown_key for worker in workers}
        assert len(chosen) == 1, session


def test_the_digest_of_a_session_is_fixed_so_upgrades_and_restarts_move_no_session(write_config):
    selector = routing_selector(write_config, [{"vendor": "openai", "model": "gpt-4o"}], FOUR_KEYS)
    candidates = selector.candidates(None, None)
    chosen = [selector.choose(candidates, session=f"pinned-{n}").credential.label for n in range(6)]
    assert chosen == ["openai#4", "openai#2", "openai#2", "openai#1", "openai#3", "openai#4"]


def test_reordering_the_credentials_file_moves_no_session(write_config, tmp_path):
    before = routing_selector(write_config, [{"vendor": "openai", "model": "gpt-4o"}], FOUR_KEYS)
    after = routing_selector(write_config, [{"vendor": "openai", "model": "gpt-4o"}], FOUR_KEYS[::-1])
    for session in (f"s{n}" for n in range(100)):
        first = before.choose(before.candidates(None, None), session=session)
        second = after.choose(after.candidates(None, None), session=session)
        assert first.credential.secret == second.credential.secret


def test_over_many_sessions_the_shares_follow_the_weights(write_config):
    credentials = [
        {"platform": "openai", "value": "sk-tier-high-aaaaaaaa", "weight": 3},
        {"platform": "openai", "value": "sk-tier-low-bbbbbbbbb"},
    ]
    models = [{"vendor": "openai", "model": "gpt-4o", "weight": 2}, {"vendor": "openai", "model": "gpt-4o-mini"}]
    selector = routing_selector(write_config, models, credentials)
    candidates = selector.candidates(None, None)
    sessions = 12_000
    counts = Counter(selector.choose(candidates, session=f"user-{n}").key for n in range(sessions))
    total = sum(c.weight for c in candidates)
    expected = {c.key: sessions * c.weight / total for c in candidates}
    # 3 degrees of freedom: 16.27 is the 0.999 quantile; an even split would score in the thousands.
    assert chi_square(counts, expected) < 16.27, counts


def test_a_cooled_combinations_sessions_move_and_only_they_and_come_back_after(write_config):
    selector = routing_selector(write_config, [{"vendor": "openai", "model": "gpt-4o"}], FOUR_KEYS)
    candidates = selector.candidates(None, None)
    sessions = [f"agent-{n}" for n in range(400)]
    before = {s: selector.choose(candidates, session=s) for s in sessions}
    cooled = candidates[1]
    selector.cool_down(cooled)
    during = {s: selector.choose(candidates, session=s) for s in sessions}
    moved = {s for s in sessions if during[s] is not before[s]}
    assert moved == {s for s in sessions if before[s] is cooled}
    assert 60 < len(moved) < 140  # about a quarter
    # Each moved session goes where a failover from the cooled combination sends it too.
    assert all(during[s] is selector.choose(candidates, {cooled.key}, session=s) for s in moved)
    # The moved sessions spread over the three others rather than piling onto one.
    assert len({during[s].key for s in moved}) == 3
    selector._clock.now += 30.1
    assert {s: selector.choose(candidates, session=s) for s in sessions} == before


def test_failover_and_hedges_of_a_session_go_to_its_next_choices_in_order(write_config):
    selector = routing_selector(write_config, [{"vendor": "openai", "model": "gpt-4o"}], FOUR_KEYS)
    candidates = selector.candidates(None, None)
    tried: set[str] = set()
    order = []
    while (combination := selector.choose(candidates, tried, session="agent-7")) is not None:
        order.append(combination.key)
        tried.add(combination.key)
    assert sorted(order) == sorted(c.key for c in candidates)
    other = routing_selector(write_config, [{"vendor": "openai", "model": "gpt-4o"}], FOUR_KEYS, seed=99)
    assert [other.choose(candidates, set(order[:n]), session="agent-7").key for n in range(4)] == order


def test_requests_without_a_session_are_still_drawn_at_random(selector):
    candidates = selector.candidates("openai", None)
    assert len({selector.choose(candidates).key for _ in range(200)}) == len(candidates)


def test_affinity_off_spreads_a_sessions_requests_as_before(write_config):
    catalog = load_catalog(write_config(models=MODELS, credentials=CREDENTIALS), environ={})
    selector = Selector(catalog, 30, 300, rng=random.Random(5), paths=PATHS, affinity=False)
    candidates = selector.candidates(None, None)
    draws = 5000
    counts = Counter(selector.choose(candidates, session="one-session").key for _ in range(draws))
    assert chi_square(counts, {c.key: draws / len(candidates) for c in candidates}) < 18.47, counts
