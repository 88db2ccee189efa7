"""What the fuzz tests throw at the chat endpoint, through Flask's test client and at a real worker."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st

from tests.support.api import chat_body

# Every code point, surrogates and controls included: JSON escapes what it cannot carry.
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | ANY_TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(ANY_TEXT, children, max_size=4),
    max_leaves=12,
)
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "APPLICATION/JSON",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        "",
    ]
)
FULL_REQUEST = chat_body(
    messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny", "name": "get"},
    ],
    tools=[{"type": "function", "function": {"name": "get", "description": "d", "parameters": {"type": "object"}}}],
    tool_choice="auto",
    stream=False,
    stream_options={"include_usage": True},
)
# Every place a client could put a wrong type: (path of keys and indexes) in FULL_REQUEST.
FIELD_PATHS = [
    (),
    ("model",),
    ("messages",),
    ("messages", 0),
    ("messages", 0, "role"),
    ("messages", 1, "content"),
    ("messages", 1, "content", 0),
    ("messages", 1, "content", 0, "type"),
    ("messages", 1, "content", 0, "text"),
    ("messages", 2, "content"),
    ("messages", 2, "tool_calls"),
    ("messages", 2, "tool_calls", 0),
    ("messages", 2, "tool_calls", 0, "id"),
    ("messages", 2, "tool_calls", 0, "function"),
    ("messages", 2, "tool_calls", 0, "function", "arguments"),
    ("messages", 3, "tool_call_id"),
    ("messages", 3, "name"),
    ("tools",),
    ("tools", 0),
    ("tools", 0, "type"),
    ("tools", 0, "function"),
    ("tools", 0, "function", "name"),
    ("tools", 0, "function", "description"),
    ("tools", 0, "function", "parameters"),
    ("tools", 0, "function", "strict"),
    ("tool_choice",),
    ("stream",),
    ("stream_options",),
    ("temperature",),
]


def replaced(path: tuple, value: Any) -> Any:
    """FULL_REQUEST with the value at ``path`` replaced by ``value`` (the whole body for ``()``)."""
    if not path:
        return value
    body = copy.deepcopy(FULL_REQUEST)
    target = body
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return body
