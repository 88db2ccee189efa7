"""Parallel tool calls in a stream reach the official SDK as separate calls, whatever the vendor's style.

OpenAI streams a header delta per call and then its argument fragments, each under the call's
index. Gemini sends every call whole in a chunk of its own with an empty id, and with no index,
index 0 every time, or 0, 1, 2. Through the router, the SDK's accumulated stream must see each
call with its own index, id and arguments either way.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.support.processes import FakeVendorProcess

pytestmark = pytest.mark.timeout(60)


def tool(name: str, required: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "parameters": {"type": "object", "properties": required, "required": list(required)},
        },
    }


# The fake calls tool i for call i, with a value per required property (string -> "example").
TOOLS = [
    tool("get_weather", {"location": {"type": "string"}}),
    tool("get_time", {"zone": {"enum": ["UTC", "CET"]}, "days": {"type": "integer"}}),
    tool("get_news", {"topic": {"type": "string"}, "fresh": {"type": "boolean"}}),
]
EXPECTED = [
    ("get_weather", {"location": "example"}),
    ("get_time", {"zone": "UTC", "days": 1}),
    ("get_news", {"topic": "example", "fresh": True}),
]


@pytest.mark.parametrize(
    ("vendor", "behaviour"),
    [
        ("gemini", {"tool_call_index": "absent"}),
        ("gemini", {"tool_call_index": "zero"}),
        ("gemini", {"tool_call_index": "sequential"}),
        ("openai", {}),
    ],
    ids=["gemini-no-index", "gemini-index-zero", "gemini-sequential-index", "openai-fragments"],
)
def test_parallel_tool_calls_stream_into_three_separate_calls_in_the_sdk(
    openai_client: openai.OpenAI, fake: FakeVendorProcess, vendor: str, behaviour: dict[str, Any]
) -> None:
    fake.behave(vendor, parallel=3, **behaviour)
    with openai_client.chat.completions.stream(
        model="any-model",
        messages=[{"role": "user", "content": "Weather, time and news, please."}],
        tools=TOOLS,
        extra_query={"vendor": vendor},
    ) as stream:
        final = stream.get_final_completion()

    (choice,) = final.choices
    calls = choice.message.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == EXPECTED
    ids = [c.id for c in calls]
    assert all(i.startswith("call_") for i in ids)
    assert len(set(ids)) == 3
    assert choice.finish_reason == "tool_calls"
    (request,) = fake.requests(vendor)
    assert request["body"]["stream"] is True
