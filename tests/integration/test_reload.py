"""SIGHUP on the real gunicorn master: a broken config never takes the router down.

A reload whose config does not load is refused (the running workers keep serving the last good
config, one error line, ``router_config_reloads_total{result="failed"}``); the next reload with a
good config is served; a worker restarting while the files are broken waits for them instead of
stopping gunicorn; start-up with a broken config still fails.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.processes import FakeVendorProcess, RouterProcess, router_config, wait_until
from tests.support.prometheus import children, pids_with_files, scrape

GOOD = [{"vendor": "openai", "model": "gpt-4o"}, {"vendor": "gemini", "model": "gemini-2.0-flash"}]
BROKEN = [{"vendor": "openai", "model": "gpt-4o"}, {"vendor": "openai", "modle": "gpt-5"}]  # the typo: "modle"
FIXED = [{"vendor": "openai", "model": "gpt-4o"}, {"vendor": "openai", "model": "gpt-5"}]


def model_ids(router: RouterProcess) -> set[str]:
    """The models /v1/models lists, asked on a new connection so any worker may answer."""
    response = requests.get(router.url("/v1/models"), headers={"Connection": "close"}, timeout=10)
    assert response.status_code == 200, response.text
    return {model["id"] for model in response.json()["data"]}


@pytest.fixture
def models_file(tmp_path: Path) -> Path:
    return tmp_path / "config" / "models.json"


@pytest.fixture
def router(fake: FakeVendorProcess, models_file: Path, tmp_path: Path) -> Iterator[RouterProcess]:
    """A two-worker router on GOOD, once both workers have loaded it (each has written metric files)."""
    metrics = tmp_path / "metrics"
    env = router_config(models_file.parent, fake, models=GOOD)
    server = RouterProcess({**env, "PROMETHEUS_MULTIPROC_DIR": str(metrics)}, tmp_path / "router.log", workers=2)
    wait_until(
        lambda: len(workers := children(server.process.pid)) == 2 and workers <= pids_with_files(metrics),
        30,
        message="both workers booted",
    )
    yield server
    server.stop()


def reload_with(router: RouterProcess, models_file: Path, models: list[dict]) -> int:
    """Write ``models`` to ``models_file`` and send SIGHUP; return where the log stood before."""
    offset = len(router.logs())
    models_file.write_text(json.dumps(models))
    router.signal(signal.SIGHUP)
    return offset


def lines_since(router: RouterProcess, offset: int, containing: str) -> list[str]:
    """The log lines since ``offset`` that contain ``containing``; fails at once if gunicorn has stopped."""
    assert router.process.poll() is None, f"gunicorn exited; log:\n{router.logs()[-3000:]}"
    return [line for line in router.logs()[offset:].splitlines() if containing in line]


def error_lines(router: RouterProcess, offset: int) -> list[str]:
    return lines_since(router, offset, "ERROR")


def test_reload_with_a_broken_config_keeps_the_old_workers_serving_and_logs_one_error(router, models_file):
    workers = children(router.process.pid)
    before = scrape(router.base)  # both series exist from the start, at 0, for rate() and alerts
    assert [before.get(("router_config_reloads_total", frozenset({("result", r)}))) for r in ("ok", "failed")] == [0, 0]

    offset = reload_with(router, models_file, BROKEN)
    refused = wait_until(lambda: error_lines(router, offset), 60, message="reload refused")

    assert router.process.poll() is None
    [line] = refused
    assert f"{models_file}: entry 2: missing 'model'" in line
    for _ in range(4):  # fresh connections: both workers still serve the last good config
        assert model_ids(router) == {"gpt-4o", "gemini-2.0-flash"}
    chat = requests.post(
        router.url("/v1/chat/completions"),
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello"}]},
        timeout=30,
    )
    assert chat.status_code == 200, chat.text
    assert children(router.process.pid) == workers  # the old workers, neither replaced nor stopped
    scraped = scrape(router.base)
    assert scraped.value("router_config_reloads_total", result="failed") == 1
    assert scraped.value("router_config_reloads_total", result="ok") == 0
    assert error_lines(router, offset) == refused  # still one error line, nothing after it
    assert "Worker failed to boot" not in router.logs()


def test_a_good_reload_after_a_refused_one_serves_the_new_config(router, models_file):
    old_workers = children(router.process.pid)
    offset = reload_with(router, models_file, BROKEN)
    wait_until(lambda: error_lines(router, offset), 60, message="reload refused")

    reload_with(router, models_file, FIXED)

    wait_until(lambda: model_ids(router) == {"gpt-4o", "gpt-5"}, 60, message="new models served")
    wait_until(lambda: not children(router.process.pid) & old_workers, 60, message="old workers gone")
    for _ in range(4):  # every worker now serves the new config
        assert model_ids(router) == {"gpt-4o", "gpt-5"}
    scraped = scrape(router.base)
    assert scraped.value("router_config_reloads_total", result="ok") == 1
    assert scraped.value("router_config_reloads_total", result="failed") == 1
    # The master counted in its own metrics file before forking the new workers: they are still
    # fully monkey-patched by gevent.
    assert "MonkeyPatchWarning" not in router.logs()


def test_a_worker_restarting_while_the_config_is_broken_waits_for_it_and_the_router_keeps_serving(router, models_file):
    offset = reload_with(router, models_file, BROKEN)
    wait_until(lambda: error_lines(router, offset), 60, message="reload refused")
    survivor, victim = sorted(children(router.process.pid))

    os.kill(victim, signal.SIGKILL)  # a crash while the broken file is still on disk

    waiting = wait_until(
        lambda: lines_since(router, offset, "waits for config files"),
        60,
        message="the new worker waits",
    )
    assert f"{models_file}: entry 2: missing 'model'" in waiting[0]
    assert router.process.poll() is None
    for _ in range(4):  # the surviving worker serves; the waiting one takes no connections
        assert model_ids(router) == {"gpt-4o", "gemini-2.0-flash"}
    assert survivor in children(router.process.pid)

    models_file.write_text(json.dumps(FIXED))  # fixed, without a reload: the waiting worker boots

    wait_until(lambda: lines_since(router, offset, "loaded the config files and serves"), 60, message="booted")
    wait_until(lambda: model_ids(router) == {"gpt-4o", "gpt-5"}, 30, message="the new worker serves")
    assert router.process.poll() is None
    assert "Worker failed to boot" not in router.logs()


def test_start_with_a_broken_config_still_fails(fake, tmp_path):
    env = router_config(tmp_path, fake, models=BROKEN)

    with pytest.raises(RuntimeError, match=r"router exited with [1-9]"):
        RouterProcess(env, tmp_path / "router.log")
    assert f"{env['MODELS_FILE']}: entry 2: missing 'model'" in (tmp_path / "router.log").read_text()
