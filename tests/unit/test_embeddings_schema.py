"""Embeddings request validation: the inputs OpenAI embeds pass, the rest is refused naming the field."""

from __future__ import annotations

import pytest

from app.embeddings_schema import MAX_INPUTS, validate_embeddings_request
from app.errors import InvalidRequest


@pytest.mark.parametrize(
    "body",
    [
        {"model": "any-model", "input": "The food was delicious"},
        {"input": ["first", "second"]},
        {"input": [1, 2, 3]},
        {"input": [0]},
        {"input": [[1, 2], [3]]},
        {"input": ["x"] * MAX_INPUTS},
        {"input": "x", "encoding_format": "float"},
        {"input": "x", "encoding_format": "base64", "dimensions": 256},
        {"input": "x", "user": "u-1", "vendor_option": {"anything": True}},
    ],
)
def test_valid_requests_pass(body):
    validate_embeddings_request(body)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "input"),
        ({"input": None}, "input"),
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": 5}, "input"),
        ({"input": {"text": "x"}}, "input"),
        ({"input": ["x"] * (MAX_INPUTS + 1)}, "input"),
        ({"input": ["ok", ""]}, "input[1]"),
        ({"input": ["ok", 5]}, "input[1]"),
        ({"input": [1, "two"]}, "input[1]"),
        ({"input": [1, -1]}, "input[1]"),
        ({"input": [1, 2.5]}, "input[1]"),
        ({"input": [True]}, "input[0]"),
        ({"input": [1, True]}, "input[1]"),
        ({"input": [[1], []]}, "input[1]"),
        ({"input": [[1], [2, "x"]]}, "input[1]"),
        ({"input": [[1], 2]}, "input[1]"),
        ({"input": [None]}, "input[0]"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "x", "encoding_format": None}, "encoding_format"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x", "dimensions": -3}, "dimensions"),
        ({"input": "x", "dimensions": "256"}, "dimensions"),
        ({"input": "x", "dimensions": 256.0}, "dimensions"),
        ({"input": "x", "dimensions": True}, "dimensions"),
        ({"input": "x", "model": 3}, "model"),
    ],
)
def test_invalid_requests_name_the_field(body, param):
    with pytest.raises(InvalidRequest) as caught:
        validate_embeddings_request(body)
    assert (caught.value.status, caught.value.type, caught.value.param) == (400, "invalid_request_error", param)
    assert caught.value.message.startswith(f"Invalid value for {param}: ")


def test_body_that_is_not_an_object_is_refused():
    with pytest.raises(InvalidRequest) as caught:
        validate_embeddings_request(["input"])
    assert caught.value.status == 400
