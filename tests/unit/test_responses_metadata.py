"""Responses ``metadata`` is held to OpenAI's limits before anything is sent to a vendor."""

from __future__ import annotations

from typing import Any

import pytest

from app.errors import InvalidRequest
from app.responses.schema import validate_responses_request


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": "x"}
    for _ in range(depth):
        value = {"a": value}
    return value


BAD_METADATA = {
    "nested 300 deep": nested(300),
    "an object value": {"a": {"b": "c"}},
    "a number value": {"a": 1},
    "a null value": {"a": None},
    "17 keys": {f"k{i}": "v" for i in range(17)},
    "a 65-character key": {"k" * 65: "v"},
    "a 513-character value": {"k": "v" * 513},
    "a list": ["a"],
    "a string": "a",
}


@pytest.mark.parametrize("metadata", list(BAD_METADATA.values()), ids=list(BAD_METADATA))
def test_metadata_beyond_openais_limits_is_refused_naming_metadata(metadata: Any) -> None:
    with pytest.raises(InvalidRequest) as refused:
        validate_responses_request({"model": "m", "input": "Hi", "metadata": metadata})
    assert refused.value.status == 400
    assert refused.value.param == "metadata"
    assert refused.value.message.startswith("Invalid value for metadata: ")


@pytest.mark.parametrize(
    "metadata",
    [None, {}, {f"k{i:02d}" + "k" * 61: "v" * 512 for i in range(16)}],
    ids=["null", "empty", "16 keys of 64 characters, values of 512"],
)
def test_metadata_within_openais_limits_is_accepted(metadata: Any) -> None:
    validate_responses_request({"model": "m", "input": "Hi", "metadata": metadata})
