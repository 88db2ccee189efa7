import pytest

from app.settings import Settings, SettingsError


def test_defaults_match_the_documented_contract():
    settings = Settings.from_env({})
    assert settings.models_file == "configs/models.json"
    assert settings.credentials_file == "configs/credentials.json"
    assert settings.upstream_connect_timeout == 5
    assert settings.upstream_read_timeout == 300
    assert settings.max_attempts == 3
    assert settings.cooldown_seconds == 30
    assert settings.max_body_bytes == 10485760
    assert settings.stream_keepalive_seconds == 15
    assert settings.rate_limit_storage == "memory://"
    assert settings.api_keys == ()


def test_environment_overrides_defaults():
    settings = Settings.from_env(
        {
            "MODELS_FILE": "/etc/router/models.json",
            "UPSTREAM_READ_TIMEOUT": "2.5",
            "MAX_ATTEMPTS": "5",
            "ROUTER_API_KEYS": " key-one , key-two,,",
            "LOG_LEVEL": "DEBUG",
        }
    )
    assert settings.models_file == "/etc/router/models.json"
    assert settings.upstream_read_timeout == 2.5
    assert settings.max_attempts == 5
    assert settings.api_keys == ("key-one", "key-two")
    assert settings.log_level == "debug"


def test_api_keys_file_adds_one_key_per_line_ignoring_comments(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# team A\nkey-from-file\n\n  other-key  \n")
    settings = Settings.from_env({"ROUTER_API_KEYS": "inline-key", "ROUTER_API_KEYS_FILE": str(keys)})
    assert settings.api_keys == ("inline-key", "key-from-file", "other-key")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_ATTEMPTS", "zero"),
        ("MAX_ATTEMPTS", "0"),
        ("UPSTREAM_READ_TIMEOUT", "-1"),
        ("UPSTREAM_CONNECT_TIMEOUT", "inf"),
        ("LOG_LEVEL", "verbose"),
        ("METRICS_REQUIRE_KEY", "maybe"),
        ("ROUTER_API_KEYS_FILE", "/nonexistent/keys"),
    ],
)
def test_bad_values_are_refused_naming_the_variable(name, value):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})
