import json
import os

import pytest

from app.catalog import BUILTIN_VENDORS, ConfigError, load_catalog
from tests.conftest import OPENAI_KEY


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
            {"models": [{"vendor": "openai", "model": "gpt-4o", "weight": 2}]},
            r"models.json: entry 1: unknown key 'weight'",
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
