"""The official OpenAI SDK as a client of a router started by the tests."""

from __future__ import annotations

from typing import Any

import openai

from tests.support.processes import RouterProcess


def sdk(server: RouterProcess, **options: Any) -> openai.OpenAI:
    """The official OpenAI SDK pointed at ``server``; no retries, so every failure is visible."""
    options.setdefault("api_key", "unused-client-key")
    return openai.OpenAI(base_url=server.url("/v1"), max_retries=0, **options)
