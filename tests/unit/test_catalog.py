import json
import os

import pytest

from app.catalog import BUILTIN_VENDORS, CAPABILITIES, ConfigError, load_catalog
from tests.support.keys import DEFAULT_CREDENTIALS, OPENAI_KEY


def test_seed_formats_load_into_one_combination_per_credential_and_model(write_config):
    settings = write_config(
        models=[
            {"vendor": "openai", "model": "gpt-4o"},
            {"vendor": "openai", "model": "gpt-4o-mini"},
            {"vendor": "gemini", "model": "gemini-2.0-flash"},
        ],
        credentials=[
            {"platform": "openai", "type": "api-key", "value": "sk-one-aaaaaaaaaaaa"},
            {"platform": "openai", "type": "api-key", "value": "sk-two-bbbbbbbbbbbb"},
            {"platform": "gemini", "type": "api-key", "value": "gemini-key-cccccccc"},
        ],
    )
    catalog = load_catalog(settings, environ={})
    keys = [c.key for c in catalog.combinations]
    assert keys == [
        "openai#1/gpt-4o",
        "openai#1/gpt-4o-mini",
        "openai#2/gpt-4o",
        "openai#2/gpt-4o-mini",
        "gemini#1/gemini-2.0-flash",
    ]


def test_builtin_vendors_are_known_without_a_vendors_file(tmp_path):
    from app.settings import Settings

    models = tmp_path / "models.json"
    models.write_text(json.dumps([{"vendor": "gemini", "model": "gemini-2.0-flash"}]))
    settings = Settings(
        models_file=str(models),
        credentials_file=str(tmp_path / "absent.json"),
        vendors_file=str(tmp_path / "absent-vendors.json"),
    )
    catalog = load_catalog(settings, environ={})
    assert catalog.vendors["gemini"].chat_url == BUILTIN_VENDORS["gemini"] + "/chat/completions"
    assert catalog.vendors["openai"].base_url == "https://api.openai.com/v1"


def test_env_reference_in_credential_is_read_from_environment(write_config):
    settings = write_config(
        credentials=[
            {"platform": "openai", "type": "api-key", "value": "${MY_OPENAI_KEY}"},
            {"platform": "gemini", "value": "gemini-key-cccccccc"},
        ]
    )
    catalog = load_catalog(settings, environ={"MY_OPENAI_KEY": OPENAI_KEY})
    assert catalog.credentials[0].secret == OPENAI_KEY


def test_missing_env_reference_names_variable_and_entry_not_a_value(write_config):
    settings = write_config(credentials=[{"platform": "openai", "type": "api-key", "value": "${NOT_SET_ANYWHERE}"}])
    with pytest.raises(ConfigError) as caught:
        load_catalog(settings, environ={})
    message = str(caught.value)
    assert "credentials.json: entry 1" in message
    assert "NOT_SET_ANYWHERE" in message


def test_base_url_precedence_is_env_over_vendors_file_over_builtin(write_config):
    settings = write_config(vendors=[{"name": "openai", "base_url": "http://from-file.test/v1/"}])
    assert load_catalog(settings, environ={}).vendors["openai"].base_url == "http://from-file.test/v1"
    environ = {"OPENAI_BASE_URL": "http://from-env.test/v1"}
    assert load_catalog(settings, environ=environ).vendors["openai"].base_url == "http://from-env.test/v1"


def test_vendors_file_adds_an_openai_compatible_vendor_in_either_form(write_config):
    models = [{"vendor": "groq", "model": "llama-3.3-70b"}]
    credentials = [{"platform": "groq", "type": "api-key", "value": "gsk-groq-key-123456"}]
    for vendors in (
        [{"name": "groq", "base_url": "https://api.groq.com/openai/v1"}],
        {"groq": "https://api.groq.com/openai/v1"},
    ):
        settings = write_config(models=models, credentials=credentials, vendors=vendors)
        catalog = load_catalog(settings, environ={})
        assert catalog.combinations[0].vendor.chat_url == "https://api.groq.com/openai/v1/chat/completions"


def test_openai_accepts_prompt_cache_key_and_gemini_and_added_vendors_do_not_by_default(write_config):
    models = [
        {"vendor": "openai", "model": "gpt-4o"},
        {"vendor": "gemini", "model": "gemini-2.0-flash"},
        {"vendor": "groq", "model": "llama-3.3-70b"},
    ]
    credentials = [*DEFAULT_CREDENTIALS, {"platform": "groq", "value": "gsk-groq-key-123456"}]
    vendors = [{"name": "groq", "base_url": "https://api.groq.com/openai/v1"}]
    catalog = load_catalog(write_config(models=models, credentials=credentials, vendors=vendors), environ={})
    assert catalog.vendors["openai"].accepts == {"prompt_cache_key"}
    assert catalog.vendors["gemini"].accepts == frozenset()
    assert catalog.vendors["groq"].accepts == frozenset()


def test_vendors_file_says_which_optional_fields_a_vendor_accepts_built_in_ones_without_a_url(write_config):
    vendors = [
        {"name": "gemini", "accepts": ["prompt_cache_key"]},
        {"name": "openai", "base_url": "https://proxy.test/v1", "accepts": []},
    ]
    catalog = load_catalog(write_config(vendors=vendors), environ={})
    assert catalog.vendors["gemini"].accepts == {"prompt_cache_key"}
    assert catalog.vendors["gemini"].base_url == "https://generativelanguage.googleapis.com/v1beta/openai"
    assert catalog.vendors["openai"].accepts == frozenset()
    assert catalog.vendors["openai"].base_url == "https://proxy.test/v1"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "groq"}, r"entry 1 \(groq\): missing 'base_url' \(only built-in vendors may leave it out\)"),
        ({"name": "openai", "accepts": "prompt_cache_key"}, r"'accepts' must be a list of field names"),
        ({"name": "openai", "accepts": ["seed"]}, r"'accepts' names unknown field 'seed'; known: prompt_cache_key"),
    ],
)
def test_a_wrong_accepts_or_a_missing_url_stops_start_up_naming_the_entry(write_config, entry, message):
    with pytest.raises(ConfigError, match=message):
        load_catalog(write_config(vendors=[entry]), environ={})


def test_missing_credentials_file_leaves_vendors_listed_as_uncovered(write_config):
    catalog = load_catalog(write_config(credentials=None), environ={})
    assert catalog.credentials_file_missing
    assert catalog.combinations == ()
    assert catalog.vendors_without_credentials == ("openai", "gemini")


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"models": '[{"vendor": "openai", '}, r"models.json: not valid JSON: .* line 1"),
        ({"models": {"vendor": "openai"}}, r"models.json: expected a list"),
        (
            {"models": [{"vendor": "openai", "model": "gpt-4o", "weights": 2}]},
            r"models.json: entry 1: unknown key 'weights'",
        ),
        ({"models": [{"vendor": "openai"}]}, r"models.json: entry 1: missing 'model'"),
        (
            {"models": [{"vendor": "openai", "model": "gpt-4o"}, {"vendor": "openai", "model": "gpt-4o"}]},
            r"models.json: entry 2 \(openai/gpt-4o\): listed twice",
        ),
        (
            {"models": [{"vendor": "mistral", "model": "large"}]},
            r"entry 1 \(mistral/large\): unknown vendor 'mistral'.*MISTRAL_BASE_URL",
        ),
        ({"models": []}, r"models.json: no models configured"),
        (
            {"credentials": [{"platform": "openai", "value": "sk-aaaaaaaaaaaaaaaa"}]},
            r"model 'gemini-2.0-flash' of vendor 'gemini' has no credential",
        ),
        (
            {"credentials": [{"platform": "openai", "type": "oauth", "value": "x"}]},
            r"entry 1 \(platform openai\): 'type' must be",
        ),
        (
            {"credentials": [{"platform": "openai", "value": ""}]},
            r"entry 1 \(platform openai\): 'value' must be a non-empty",
        ),
        (
            {"vendors": [{"name": "x", "base_url": "ftp://x"}]},
            r"vendors.json: entry 1 \(x\): base URL must start with http",
        ),
        ({"vendors": [{"name": "x", "base_url": "https://x.test/v1?key=abc"}]}, r"must not carry a query"),
    ],
)
def test_invalid_files_stop_start_up_naming_file_and_entry(write_config, files, expected):
    with pytest.raises(ConfigError, match=expected):
        load_catalog(write_config(**files), environ={})


def test_duplicate_credential_is_refused_without_echoing_the_key(write_config):
    secret = "sk-duplicated-secret-value-1234"
    settings = write_config(
        credentials=[
            {"platform": "openai", "value": secret},
            {"platform": "gemini", "value": "gemini-key-cccccccc"},
            {"platform": "openai", "value": secret},
        ]
    )
    with pytest.raises(ConfigError, match=r"entry 3 \(platform openai\): same key as entry 1") as caught:
        load_catalog(settings, environ={})
    assert secret not in str(caught.value)


def test_credential_repr_and_errors_never_show_the_secret(write_config):
    catalog = load_catalog(write_config(), environ={})
    credential = catalog.credentials[0]
    assert credential.secret not in repr(credential)
    assert credential.secret not in repr(catalog.combinations[0])
    assert credential.masked().endswith(credential.secret[-4:])
    assert credential.masked().count("*") == 4


def test_models_created_is_the_models_file_modification_time(write_config):
    settings = write_config()
    os.utime(settings.models_file, (1_700_000_000, 1_700_000_000))
    assert load_catalog(settings, environ={}).models_created == 1_700_000_000


GEMINI_V3 = "gemini-2.5-flash"
# The original router's later (v3) models file, as operators have it.
V3_MODELS = {
    "vendors": {
        "openai": "https://api.openai.com/v1",
        "gemini": "https://generativelanguage.googleapis.com/v1beta/openai",
    },
    "models": [
        {
            "vendor": "gemini",
            "model": GEMINI_V3,
            "config": {"support_image": True, "support_video": True, "support_tools": True, "support_streaming": True},
        },
        {"vendor": "openai", "model": "gpt-4o-mini"},
    ],
}


def test_weights_aliases_types_and_config_load_from_the_list_format(write_config):
    settings = write_config(
        models=[
            {"vendor": "openai", "model": "gpt-4o-mini", "weight": 3, "aliases": ["fast", "cheap"]},
            {"vendor": "gemini", "model": "gemini-2.0-flash", "weight": 0.5, "aliases": ["fast"]},
            {"vendor": "openai", "model": "text-embedding-3-small", "type": "embedding"},
            {"vendor": "openai", "model": "gpt-4o", "config": {"support_image": True, "support_tools": True}},
        ],
        credentials=[
            {"platform": "openai", "value": "sk-tier-five-key-aaaaaaa", "weight": 2},
            {"platform": "gemini", "value": "gemini-key-cccccccc"},
        ],
    )
    catalog = load_catalog(settings, environ={})
    mini, flash, embedding, big = catalog.models
    assert (mini.weight, mini.aliases, mini.type) == (3.0, ("fast", "cheap"), "chat")
    assert embedding.type == "embedding"
    assert mini.capabilities == CAPABILITIES
    # A config lists what works: the flags it leaves out are off.
    assert big.capabilities == {"image", "tools"}
    assert catalog.aliases == {"fast": (mini, flash), "cheap": (mini,)}
    weights = {c.key: c.weight for c in catalog.combinations}
    assert weights == {
        "openai#1/gpt-4o-mini": 6.0,
        "openai#1/text-embedding-3-small": 2.0,
        "openai#1/gpt-4o": 2.0,
        "gemini#1/gemini-2.0-flash": 0.5,
    }
    assert catalog.models_format == "v1"


def test_v3_format_loads_its_vendors_and_capabilities(write_config, tmp_path):
    settings = write_config(models=V3_MODELS, vendors=[])
    catalog = load_catalog(settings, environ={})
    assert catalog.models_format == "v3"
    gemini, openai = catalog.models
    assert gemini.capabilities == CAPABILITIES
    assert openai.capabilities == CAPABILITIES  # no config: supports everything
    assert catalog.vendors["gemini"].base_url == "https://generativelanguage.googleapis.com/v1beta/openai"
    assert [c.key for c in catalog.combinations] == ["openai#1/gpt-4o-mini", f"gemini#1/{GEMINI_V3}"]


def test_v3_vendors_beat_the_vendors_file_and_base_url_variables_beat_both(write_config):
    models = {"vendors": {"groq": "https://api.groq.com/openai/v1"}, "models": [{"vendor": "groq", "model": "llama"}]}
    credentials = [{"platform": "groq", "value": "gsk-groq-key-123456"}]
    settings = write_config(models=models, credentials=credentials, vendors={"groq": "http://vendors-file.test/v1"})
    catalog = load_catalog(settings, environ={})
    assert catalog.vendors["groq"].chat_url == "https://api.groq.com/openai/v1/chat/completions"
    assert catalog.vendors["groq"].embeddings_url == "https://api.groq.com/openai/v1/embeddings"
    catalog = load_catalog(settings, environ={"GROQ_BASE_URL": "http://env.test/v1"})
    assert catalog.vendors["groq"].base_url == "http://env.test/v1"


def test_weight_aliases_and_type_work_in_the_v3_format(write_config):
    models = {"models": [{"vendor": "gemini", "model": "gemini-2.0-flash", "weight": 2, "aliases": ["fast"]}]}
    catalog = load_catalog(write_config(models=models), environ={})
    assert catalog.models[0].weight == 2.0
    assert catalog.aliases["fast"] == catalog.models


def test_max_output_tokens_and_reasoning_are_read_and_default_to_none_and_off(write_config):
    models = [
        {"vendor": "openai", "model": "gpt-4o", "max_output_tokens": 16384},
        {"vendor": "openai", "model": "o4-mini", "config": {"support_reasoning": True}},
        {"vendor": "gemini", "model": "gemini-2.5-flash", "config": {"support_tools": True, "support_reasoning": True}},
        {"vendor": "gemini", "model": "gemini-2.0-flash", "config": {"support_reasoning": False}},
    ]
    plain, reasoner, gemini, off = load_catalog(write_config(models=models), environ={}).models
    assert (plain.max_output_tokens, plain.reasoning) == (16384, False)
    assert (reasoner.max_output_tokens, reasoner.reasoning) == (None, True)
    # Reasoning is not a capability: a config holding only it keeps everything, as no config does.
    assert reasoner.capabilities == CAPABILITIES
    assert off.capabilities == CAPABILITIES and not off.reasoning
    assert gemini.capabilities == {"tools"} and gemini.reasoning


ENTRY = {"vendor": "openai", "model": "gpt-4o"}
BAD_VALUES = {
    "weight zero": ([{**ENTRY, "weight": 0}], r"entry 1 \(openai/gpt-4o\): 'weight' must be a number greater than 0"),
    "weight negative": ([{**ENTRY, "weight": -2}], r"entry 1 \(openai/gpt-4o\): 'weight' must be"),
    "weight string": ([{**ENTRY, "weight": "3"}], r"entry 1 \(openai/gpt-4o\): 'weight' must be .* got '3'"),
    "weight boolean": ([{**ENTRY, "weight": True}], r"entry 1 \(openai/gpt-4o\): 'weight' must be .* got True"),
    "weight infinite": ('[{"vendor": "openai", "model": "gpt-4o", "weight": Infinity}]', r"'weight' must be"),
    "alias is a model id": (
        [{**ENTRY, "aliases": ["gemini-2.0-flash"]}, {"vendor": "gemini", "model": "gemini-2.0-flash"}],
        r"entry 1 \(openai/gpt-4o\): alias 'gemini-2.0-flash' is the model id of another entry",
    ),
    "alias with a space": ([{**ENTRY, "aliases": ["my model"]}], r"entry 1 \(openai/gpt-4o\): alias 'my model' must"),
    "alias with a newline": ([{**ENTRY, "aliases": ["fast\n"]}], r"entry 1 \(openai/gpt-4o\): alias 'fast\\n' must"),
    "alias empty": ([{**ENTRY, "aliases": [""]}], r"entry 1 \(openai/gpt-4o\): alias '' must"),
    "aliases not a list": ([{**ENTRY, "aliases": "fast"}], r"entry 1 \(openai/gpt-4o\): 'aliases' must be a list"),
    "alias listed twice": (
        [{**ENTRY, "aliases": ["a", "a"]}],
        r"entry 1 \(openai/gpt-4o\): 'aliases' lists a name twice",
    ),
    "alias mixes types": (
        [{**ENTRY, "aliases": ["x"]}, {"vendor": "openai", "model": "emb", "type": "embedding", "aliases": ["x"]}],
        r"entry 2 \(openai/emb\): alias 'x' joins a embedding model to the chat model openai/gpt-4o",
    ),
    "unknown type": ([{**ENTRY, "type": "image"}], r"entry 1 \(openai/gpt-4o\): 'type' must be \"chat\" or"),
    "unknown capability": (
        [{**ENTRY, "config": {"support_audio": True}}],
        r"entry 1 \(openai/gpt-4o\): unknown capability 'support_audio'",
    ),
    "capability not a boolean": (
        [{**ENTRY, "config": {"support_image": "yes"}}],
        r"entry 1 \(openai/gpt-4o\): 'config.support_image' must be true or false",
    ),
    "config not an object": ([{**ENTRY, "config": True}], r"entry 1 \(openai/gpt-4o\): 'config' must be an object"),
    "reasoning flag not a boolean": (
        [{**ENTRY, "config": {"support_reasoning": 1}}],
        r"entry 1 \(openai/gpt-4o\): 'config.support_reasoning' must be true or false",
    ),
    "max_output_tokens zero": (
        [{**ENTRY, "max_output_tokens": 0}],
        r"entry 1 \(openai/gpt-4o\): 'max_output_tokens' must be a whole number of at least 1; got 0",
    ),
    "max_output_tokens a float": (
        [{**ENTRY, "max_output_tokens": 8192.5}],
        r"entry 1 \(openai/gpt-4o\): 'max_output_tokens' must be a whole number",
    ),
    "max_output_tokens a string": (
        [{**ENTRY, "max_output_tokens": "8192"}],
        r"entry 1 \(openai/gpt-4o\): 'max_output_tokens' must be .* got '8192'",
    ),
    "max_output_tokens a boolean": (
        [{**ENTRY, "max_output_tokens": True}],
        r"entry 1 \(openai/gpt-4o\): 'max_output_tokens' must be .* got True",
    ),
    "v3 models not a list": ({"models": {"vendor": "openai"}}, r"models.json: 'models' must be a list"),
    "v3 vendors not an object": ({"vendors": [], "models": [ENTRY]}, r"models.json: 'vendors' must be an object"),
    "v3 vendor URL wrong": (
        {"vendors": {"x": "ftp://x"}, "models": [ENTRY]},
        r"models.json: vendors.x: base URL must start with http",
    ),
    "v3 unknown top-level key": ({"models": [ENTRY], "settings": {}}, r"models.json: unknown key 'settings'"),
    "v3 entry wrong": ({"models": [{"vendor": "openai"}]}, r"models.json: entry 1: missing 'model'"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_routing_values_stop_start_up_with_one_message_naming_file_and_entry(write_config, case):
    models, expected = BAD_VALUES[case]
    credentials = [{"platform": "openai", "value": OPENAI_KEY}, {"platform": "gemini", "value": "gemini-key-cccc"}]
    with pytest.raises(ConfigError, match=expected) as caught:
        load_catalog(write_config(models=models, credentials=credentials), environ={})
    assert "models.json" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_credential_weight_must_be_positive_naming_the_entry(write_config):
    credentials = [{"platform": "openai", "value": OPENAI_KEY, "weight": 0}]
    with pytest.raises(ConfigError, match=r"credentials.json: entry 1 \(platform openai\): 'weight' must be"):
        load_catalog(write_config(models=[ENTRY], credentials=credentials), environ={})


def test_without_credentials_file_keys_come_from_vendor_api_key_variables(write_config):
    environ = {
        "OPENAI_API_KEY": "sk-env-openai-aaaaaaaa",
        "GEMINI_API_KEY_1": "gemini-env-one-bbbbbb",
        "GEMINI_API_KEY_20": "gemini-env-twenty-cccc",
        "GEMINI_API_KEY_21": "gemini-env-beyond-dddd",  # beyond the 20 slots: not read
        "GEMINI_API_KEY_3": "   ",  # blank: not a key
        "GROQ_API_KEY": "gsk-no-models-eeeeee",  # a vendor without models: not read
    }
    catalog = load_catalog(write_config(credentials=None), environ=environ)
    assert catalog.env_key_variables == ("OPENAI_API_KEY", "GEMINI_API_KEY_1", "GEMINI_API_KEY_20")
    assert [(c.label, c.secret) for c in catalog.credentials] == [
        ("openai#1", "sk-env-openai-aaaaaaaa"),
        ("gemini#1", "gemini-env-one-bbbbbb"),
        ("gemini#2", "gemini-env-twenty-cccc"),
    ]
    assert catalog.vendors_without_credentials == ()
    assert len(catalog.combinations) == 3


def test_vendor_names_become_variable_names_upper_cased_with_underscores(write_config):
    models = [{"vendor": "my-vendor.eu", "model": "m1"}]
    vendors = {"my-vendor.eu": "https://vendor.test/v1"}
    catalog = load_catalog(
        write_config(models=models, credentials=None, vendors=vendors),
        environ={"MY_VENDOR_EU_API_KEY_2": "mv-key-0123456789"},
    )
    assert catalog.env_key_variables == ("MY_VENDOR_EU_API_KEY_2",)


def test_same_key_in_two_variables_is_refused_naming_both_not_the_key(write_config):
    secret = "sk-twice-in-env-0123456789"
    with pytest.raises(ConfigError, match="OPENAI_API_KEY_2: same key as OPENAI_API_KEY; unset one") as caught:
        load_catalog(write_config(credentials=None), environ={"OPENAI_API_KEY": secret, "OPENAI_API_KEY_2": secret})
    assert secret not in str(caught.value)


def test_an_existing_credentials_file_wins_and_unread_key_variables_are_reported(write_config):
    credentials = [
        {"platform": "openai", "value": "${OPENAI_API_KEY}"},
        {"platform": "gemini", "value": "gemini-key-from-file-1"},
    ]
    environ = {"OPENAI_API_KEY": "sk-referenced-by-file-1", "GEMINI_API_KEY": "gemini-ignored-env-key"}
    catalog = load_catalog(write_config(credentials=credentials), environ=environ)
    assert [c.secret for c in catalog.credentials] == ["sk-referenced-by-file-1", "gemini-key-from-file-1"]
    assert catalog.env_key_variables == ()
    (warning,) = catalog.warnings
    assert "exists, so it alone supplies the keys: GEMINI_API_KEY is set but not read" in warning
    assert "gemini-ignored-env-key" not in warning


HEADER_UNSAFE = {
    "typographic quote": "sk-abc\u2019def0123456789",
    "emoji": "sk-abc\U0001f511def0123456789",
    "tab": "sk-abc\tdef0123456789",
    "DEL": "sk-abc\x7fdef0123456789",
    "C1 control": "sk-abc\x85def0123456789",
    "line break": "sk-abc\ndef0123456789",
}


@pytest.mark.parametrize("case", list(HEADER_UNSAFE))
def test_key_that_cannot_be_sent_in_a_header_is_refused_naming_the_entry_not_the_key(write_config, case):
    secret = HEADER_UNSAFE[case]
    credentials = [{"platform": "gemini", "value": "gemini-key-cccc"}, {"platform": "openai", "value": secret}]
    with pytest.raises(ConfigError, match=r"credentials.json: entry 2 \(platform openai\): the key contains") as caught:
        load_catalog(write_config(credentials=credentials), environ={})
    message = str(caught.value)
    assert "cannot be sent in an HTTP header" in message
    assert "sk-abc" not in message and "def0123456789" not in message


def test_header_unsafe_key_from_a_variable_names_the_variable(write_config):
    unsafe = "sk-env\u201cquoted\u201d-0123456789"
    credentials = [{"platform": "openai", "value": "${MY_KEY}"}, {"platform": "gemini", "value": "gemini-key-cccc"}]
    with pytest.raises(ConfigError, match=r"entry 1 \(platform openai\), environment variable MY_KEY: the key"):
        load_catalog(write_config(credentials=credentials), environ={"MY_KEY": unsafe})


def test_header_unsafe_key_from_an_api_key_variable_names_the_variable(write_config):
    unsafe = "sk-env\u201cquoted\u201d-0123456789"
    with pytest.raises(ConfigError, match=r"^environment variable GEMINI_API_KEY_4: the key contains") as caught:
        load_catalog(write_config(credentials=None), environ={"GEMINI_API_KEY_4": unsafe})
    assert "quoted" not in str(caught.value)


def test_latin1_key_is_accepted(write_config):
    credentials = [
        {"platform": "openai", "value": "sk-caf\u00e9-0123456789"},
        {"platform": "gemini", "value": "g" * 20},
    ]
    assert load_catalog(write_config(credentials=credentials), environ={}).credentials[0].secret.startswith("sk-caf")
