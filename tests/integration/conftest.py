"""Fixtures that start real processes: the fake vendor and the router under gunicorn + gevent."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.processes import FakeVendorProcess, RouterProcess, router_config
from tests.support.sdk import sdk


@pytest.fixture(scope="session")
def fake_vendor() -> Iterator[FakeVendorProcess]:
    fake = FakeVendorProcess()
    yield fake
    fake.stop()


@pytest.fixture
def fake(fake_vendor: FakeVendorProcess) -> FakeVendorProcess:
    """The shared fake vendor, with no behaviours and no records left from earlier tests."""
    fake_vendor.reset()
    return fake_vendor


@pytest.fixture(scope="session")
def router(fake_vendor: FakeVendorProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    """One router for tests that need no special settings: two workers, as on a 2-CPU host."""
    directory = tmp_path_factory.mktemp("router")
    server = RouterProcess(router_config(directory, fake_vendor), directory / "router.log", workers=2)
    yield server
    server.stop()


@pytest.fixture
def start_router(fake: FakeVendorProcess, tmp_path: Path) -> Iterator[Callable[..., RouterProcess]]:
    """Start a router with its own config and settings: ``start_router(models=..., ENV=value)``."""
    started: list[RouterProcess] = []

    def start(
        models: Any = None, credentials: Any = None, vendors: Any = None, workers: int = 1, **env: str
    ) -> RouterProcess:
        directory = tmp_path / f"router{len(started)}"
        config = router_config(directory, fake, models=models, credentials=credentials, vendors=vendors)
        server = RouterProcess({**config, **env}, directory / "router.log", workers=workers)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def openai_client(router: RouterProcess, fake: FakeVendorProcess) -> openai.OpenAI:
    return sdk(router)
