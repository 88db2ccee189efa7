"""``python -m app check-config``: the combinations with masked keys, or start-up's own error and exit 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import ROOT, RouterProcess, router_config

OPENAI_KEYS = ("sk-check-openai-first-0123456789AAAA", "sk-check-openai-second-0123456789BBBB")
GEMINI_KEY = "AIzaCheckGemini012345678CCCC"
MODELS = [{"vendor": "openai", "model": "gpt-4o"}, {"vendor": "gemini", "model": "gemini-2.0-flash"}]


def check_config(env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ROUTER_", "RATE_", "PROMETHEUS_", "BUDGET"))}
    return subprocess.run(
        [sys.executable, "-m", "app", "check-config"],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_good_config_prints_every_combination_with_its_key_masked(tmp_path):
    credentials = [{"platform": "openai", "type": "api-key", "value": key} for key in OPENAI_KEYS]
    credentials.append({"platform": "gemini", "type": "api-key", "value": "${CHECK_GEMINI_KEY}"})
    env = router_config(tmp_path, None, models=MODELS, credentials=credentials)

    result = check_config({**env, "CHECK_GEMINI_KEY": GEMINI_KEY})

    assert result.returncode == 0, result.stderr
    assert "3 combinations;" in result.stdout
    combinations = [line.split()[:3] for line in result.stdout.splitlines() if " key ****" in line]
    assert combinations == [
        ["openai#1/gpt-4o", "key", "****AAAA"],
        ["openai#2/gpt-4o", "key", "****BBBB"],
        ["gemini#1/gemini-2.0-flash", "key", "****CCCC"],
    ]
    for key in (*OPENAI_KEYS, GEMINI_KEY):
        assert key[:-4] not in result.stdout + result.stderr


def test_failure_handling_settings_are_printed(tmp_path):
    credentials = [{"platform": "openai", "type": "api-key", "value": OPENAI_KEYS[0]}]
    env = router_config(tmp_path, None, models=MODELS[:1], credentials=credentials)
    result = check_config({**env, "REQUEST_TIMEOUT": "45", "HEDGE_AFTER_SECONDS": "1.5", "CLIENT_SEND_TIMEOUT": "20"})
    assert result.returncode == 0, result.stderr
    assert "request deadline (REQUEST_TIMEOUT)           45 s" in result.stdout
    assert "first token, streams (FIRST_TOKEN_TIMEOUT)   off" in result.stdout
    assert "hedge after (HEDGE_AFTER_SECONDS)            1.5 s" in result.stdout
    assert "sessions keep their combination (AFFINITY)   on" in result.stdout
    assert "vendor openai: " in result.stdout and "(sends prompt_cache_key)" in result.stdout
    assert "silent client (CLIENT_SEND_TIMEOUT)          20 s" in result.stdout


def test_budgets_of_each_client_and_each_models_price_are_printed(tmp_path):
    credentials = [{"platform": "openai", "type": "api-key", "value": OPENAI_KEYS[0]}]
    priced = [{"vendor": "openai", "model": "gpt-4o", "price": {"input": 2.5, "output": 10, "cached_input": 1.25}}]
    env = router_config(tmp_path, None, models=priced, credentials=credentials)
    env.update(
        ROUTER_API_KEYS="web=rk-check-web-0123456789,batch.jobs=rk-check-batch-0123456789",
        BUDGET="2000000 tokens per day;50 usd per month",
        BUDGET_BATCH_JOBS="10 usd per day",
    )
    result = check_config(env)
    assert result.returncode == 0, result.stderr
    assert "price input 2.5, cached input 1.25, output 10 USD per 1M tokens" in result.stdout
    assert "budgets, counted in memory://:" in result.stdout
    lines = [line.split(None, 1) for line in result.stdout.splitlines() if line.startswith("  web ")]
    assert lines == [["web", "2000000 tokens per day; 50 usd per month"]]
    assert any(line.split() == ["batch.jobs", "10", "usd", "per", "day"] for line in result.stdout.splitlines())

    unpriced = router_config(tmp_path / "unpriced", None, models=MODELS[:1], credentials=credentials)
    result = check_config({**unpriced, "BUDGET": "5 usd per day"})
    assert result.returncode == 1
    assert "model openai/gpt-4o has no price" in result.stderr
    result = check_config({**unpriced, "BUDGET": "5 dollars per day"})
    assert result.returncode == 1 and "BUDGET must be" in result.stderr


def test_routing_config_prints_shares_aliases_types_capabilities_and_key_variables(tmp_path):
    models = {
        "models": [
            {"vendor": "openai", "model": "gpt-4o-mini", "weight": 3, "aliases": ["fast"]},
            {"vendor": "gemini", "model": "gemini-2.0-flash", "aliases": ["fast"], "config": {"support_tools": True}},
            {"vendor": "openai", "model": "text-embedding-3-small", "type": "embedding"},
        ]
    }
    env = router_config(tmp_path, None, models=models, credentials="absent")
    gemini_key = "AIzaCheckEnvGemini0123456789"
    result = check_config({**env, "OPENAI_API_KEY": OPENAI_KEYS[0], "GEMINI_API_KEY_2": gemini_key})

    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "(3, v3 format)" in out
    assert "missing; keys from environment variables OPENAI_API_KEY, GEMINI_API_KEY_2" in out
    assert "alias fast: openai/gpt-4o-mini, gemini/gemini-2.0-flash" in out
    lines = [line.split() for line in out.splitlines()]
    assert ["openai/text-embedding-3-small", "embedding", "weight", "1"] in lines
    assert ["supports", "tools"] in lines
    assert ["supports", "image,", "streaming,", "tools,", "video"] in lines
    shares = [(line[0], line[-1]) for line in lines if line and line[-2:-1] == ["share"]]
    assert shares == [
        ("openai#1/gpt-4o-mini", "75.0%"),  # chat: weights 3 and 1
        ("gemini#1/gemini-2.0-flash", "25.0%"),
        ("openai#1/text-embedding-3-small", "100.0%"),  # embedding
        ("openai#1/gpt-4o-mini", "75.0%"),  # alias fast
        ("gemini#1/gemini-2.0-flash", "25.0%"),
    ]
    assert OPENAI_KEYS[0][:-4] not in out + result.stderr
    assert gemini_key[:-4] not in out + result.stderr


BAD_CONFIGS = {
    "models file is not JSON": ({"models": "[{oops"}, {}),
    "unknown vendor": ({"credentials": [{"platform": "nobody", "type": "api-key", "value": "x" * 20}]}, {}),
    "unset ${VAR}": ({"credentials": [{"platform": "openai", "type": "api-key", "value": "${CHECK_UNSET}"}]}, {}),
    "bad setting": ({}, {"MAX_ATTEMPTS": "none"}),
    "key not sendable in a header": (
        {"credentials": [{"platform": "openai", "type": "api-key", "value": "sk-\u201cpasted\u201d-0123456789"}]},
        {},
    ),
    "weight zero": ({"models": '[{"vendor": "openai", "model": "gpt-4o", "weight": 0}]'}, {}),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_exits_1_with_the_message_start_up_gives(tmp_path, case):
    files, extra_env = BAD_CONFIGS[case]
    env = {**router_config(tmp_path / "config", None, models=MODELS, credentials=files.get("credentials")), **extra_env}
    if "models" in files:
        Path(env["MODELS_FILE"]).write_text(files["models"])

    result = check_config(env)

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("config error: ")
    message = result.stderr.removeprefix("config error: ").strip()
    assert message and "\n" not in message

    # The real server refuses to start with the same words.
    with pytest.raises(RuntimeError, match=r"did not start|exited"):
        RouterProcess(env, tmp_path / "router.log")
    log = (tmp_path / "router.log").read_text()
    assert message in log
    assert "pasted" not in result.stderr + log  # the refused key's text is never shown
