import pytest

from app.settings import ClientKey, Settings, SettingsError, rate_limit_variable


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
    assert settings.auth_failure_limit == "20/minute"


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
    assert settings.api_keys == (ClientKey("key-1", "key-one"), ClientKey("key-2", "key-two"))
    assert settings.log_level == "debug"


def test_api_keys_file_adds_one_key_per_line_ignoring_comments(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# team A\nkey-from-file\n\n  other-key  \n")
    settings = Settings.from_env({"ROUTER_API_KEYS": "inline-key", "ROUTER_API_KEYS_FILE": str(keys)})
    assert [client.key for client in settings.api_keys] == ["inline-key", "key-from-file", "other-key"]


def names(settings: Settings) -> list[tuple[str, str]]:
    return [(client.name, client.key) for client in settings.api_keys]


def test_keys_may_be_named_and_unnamed_ones_are_numbered_in_order_across_variable_and_file(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(
        "# name key, or a bare key\nbatch-jobs  rk-batch-0123\nrk-bare-file-0123\n\tweb.app\trk-web-0123 \n"
    )
    settings = Settings.from_env(
        {"ROUTER_API_KEYS": "team_alpha=rk-alpha-0123, rk-bare-env-0123", "ROUTER_API_KEYS_FILE": str(keys)}
    )
    assert names(settings) == [
        ("team_alpha", "rk-alpha-0123"),
        ("key-1", "rk-bare-env-0123"),
        ("batch-jobs", "rk-batch-0123"),
        ("key-2", "rk-bare-file-0123"),
        ("web.app", "rk-web-0123"),
    ]


def test_a_key_with_equals_signs_is_valid_when_named():
    settings = Settings.from_env({"ROUTER_API_KEYS": "legacy=cmstYWJjZGVm=="})
    assert names(settings) == [("legacy", "cmstYWJjZGVm==")]


SECRET = "rk-very-secret-0123456789"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (f"ok=rk-first-0123,bad name={SECRET}", "ROUTER_API_KEYS entry 2: a client name must be 1-64 characters"),
        (f"{'n' * 65}={SECRET}", "ROUTER_API_KEYS entry 1: a client name must be 1-64 characters"),
        (f"team/a={SECRET}", "ROUTER_API_KEYS entry 1: a client name must be 1-64"),
        # A base64 key's padding is not "name=key": its start must not become a client name.
        (f"{SECRET}==", "ROUTER_API_KEYS entry 1: expected key or name=key (a key containing '=' needs a name"),
        (f"{SECRET}=", "ROUTER_API_KEYS entry 1: expected key or name=key"),
        (f"a=rk-one-0123,,a={SECRET}", "ROUTER_API_KEYS entry 3 has the same name as ROUTER_API_KEYS entry 1"),
        (f"a={SECRET},b={SECRET}", "ROUTER_API_KEYS entry 2 has the same key as ROUTER_API_KEYS entry 1"),
        (f"{SECRET},key-1=rk-two-0123", "entry 2 has the same name as ROUTER_API_KEYS entry 1 (unnamed, so key-1)"),
        (f"team.a={SECRET},team-a=rk-two-0123", "entry 2 has the same limit variable RATE_LIMIT_TEAM_A as"),
        (f"Anonymous={SECRET}", "ROUTER_API_KEYS entry 1: the name anonymous is reserved"),
        (f"storage={SECRET}", "ROUTER_API_KEYS entry 1: the name storage is reserved (RATE_LIMIT_STORAGE"),
    ],
)
def test_a_bad_key_entry_stops_start_up_naming_its_position_never_the_key(value, message):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"ROUTER_API_KEYS": value})
    assert message in str(caught.value)
    assert SECRET not in str(caught.value) and "very-secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (f"# keys\nalpha rk-one-0123\nalpha {SECRET} extra\n", "line 3: expected 'key' or 'name key'"),
        (f"alpha rk-one-0123\n\nalpha {SECRET}\n", "line 3 has the same name as ROUTER_API_KEYS_FILE"),
        (f"bad!name {SECRET}\n", "line 1: a client name must be 1-64 characters"),
    ],
)
def test_a_bad_key_file_line_stops_start_up_naming_the_line_never_the_key(tmp_path, content, message):
    keys = tmp_path / "keys"
    keys.write_text(content)
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"ROUTER_API_KEYS_FILE": str(keys)})
    assert f"ROUTER_API_KEYS_FILE {keys} {message}" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_the_same_key_in_the_variable_and_the_file_stops_start_up(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(f"file-name {SECRET}\n")
    with pytest.raises(SettingsError, match="line 1 has the same key as ROUTER_API_KEYS entry 1") as caught:
        Settings.from_env({"ROUTER_API_KEYS": f"env-name={SECRET}", "ROUTER_API_KEYS_FILE": str(keys)})
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "variable"),
    [("alpha", "RATE_LIMIT_ALPHA"), ("team.a-1", "RATE_LIMIT_TEAM_A_1"), ("key-2", "RATE_LIMIT_KEY_2")],
)
def test_a_client_limit_variable_is_its_name_upper_cased_with_other_characters_as_underscores(name, variable):
    assert rate_limit_variable(name) == variable


def test_a_client_gets_its_own_rate_limit_and_the_others_none():
    settings = Settings.from_env(
        {
            "ROUTER_API_KEYS": "batch.jobs=rk-batch-0123,web=rk-web-0123,rk-bare-0123",
            "RATE_LIMIT_BATCH_JOBS": "5/second;100/hour",
            "RATE_LIMIT_KEY_1": "1/minute",
        }
    )
    assert [(client.name, client.rate_limit) for client in settings.api_keys] == [
        ("batch.jobs", "5/second;100/hour"),
        ("web", ""),
        ("key-1", "1/minute"),
    ]


@pytest.mark.parametrize("value", ["5 a minute", "0/minute"])
def test_a_bad_client_rate_limit_stops_start_up_naming_its_variable(value):
    with pytest.raises(SettingsError, match="RATE_LIMIT_WEB "):
        Settings.from_env({"ROUTER_API_KEYS": "web=rk-web-0123", "RATE_LIMIT_WEB": value})


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
        ("AUTH_FAILURE_LIMIT", "twenty"),
        ("AUTH_FAILURE_LIMIT", "0/minute"),
    ],
)
def test_bad_values_are_refused_naming_the_variable(name, value):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})
