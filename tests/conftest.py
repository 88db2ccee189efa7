"""Shared fixtures: config files written to a temporary directory, and apps built from them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# Helpers in tests/support assert too: pytest explains their failures as it does a test's.
pytest.register_assert_rewrite("tests.support")

from app.application import create_app  # noqa: E402
from app.settings import Settings  # noqa: E402
from tests.support.keys import DEFAULT_CREDENTIALS  # noqa: E402

DEFAULT_MODELS = [
    {"vendor": "openai", "model": "gpt-4o"},
    {"vendor": "gemini", "model": "gemini-2.0-flash"},
]
# Unit tests mock these hosts with `responses`; nothing ever resolves them.
UNIT_BASE_URLS = {"openai": "http://openai.test/v1", "gemini": "http://gemini.test/v1beta/openai"}


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Settings]:
    """Write models/credentials/vendors files and return Settings pointing at them.

    Pass ``credentials=None`` to leave the credentials file out, as on a fresh checkout.
    """

    def write(
        models: Any = DEFAULT_MODELS,
        credentials: Any = DEFAULT_CREDENTIALS,
        vendors: Any = None,
        **overrides: Any,
    ) -> Settings:
        paths = {}
        for name, content in (("models", models), ("credentials", credentials), ("vendors", vendors)):
            path = tmp_path / f"{name}.json"
            if content is not None:
                path.write_text(content if isinstance(content, str) else json.dumps(content))
            paths[name] = str(path)
        if vendors is None:
            vendors_content = [{"name": name, "base_url": url} for name, url in UNIT_BASE_URLS.items()]
            Path(paths["vendors"]).write_text(json.dumps(vendors_content))
        return Settings(
            models_file=paths["models"],
            credentials_file=paths["credentials"],
            vendors_file=paths["vendors"],
            **overrides,
        )

    return write


@pytest.fixture
def make_app(write_config: Callable[..., Settings]) -> Callable[..., Any]:
    """Build an app from config written by ``write_config`` (same keyword arguments)."""

    def make(**kwargs: Any):
        app = create_app(write_config(**kwargs))
        app.testing = True
        return app

    return make


@pytest.fixture
def flask_client(make_app: Callable[..., Any]):
    """A test client of an app with one OpenAI and one Gemini credential and model."""
    return make_app().test_client()
