"""Reading a vendor's usage: input includes cached input, as OpenAI reports it."""

from __future__ import annotations

import pytest

from app.usage import TokenCounts, token_counts


@pytest.mark.parametrize(
    ("usage", "counts"),
    [
        pytest.param(
            {"prompt_tokens": 1200, "completion_tokens": 30, "prompt_tokens_details": {"cached_tokens": 1024}},
            TokenCounts(1200, 1024, 30),
            id="cached tokens are part of the prompt's",
        ),
        pytest.param({"prompt_tokens": 9, "completion_tokens": 4}, TokenCounts(9, 0, 4), id="no details: none cached"),
        pytest.param(
            {"prompt_tokens": 9, "prompt_tokens_details": None, "completion_tokens": 4},
            TokenCounts(9, 0, 4),
            id="null details",
        ),
        pytest.param(
            {"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 64}},
            TokenCounts(10, 10, 0),
            id="never more cached than the prompt",
        ),
        pytest.param(
            {"prompt_tokens": "9", "completion_tokens": True, "prompt_tokens_details": {"cached_tokens": -3}},
            TokenCounts(0, 0, 0),
            id="what is not a count counts 0",
        ),
        pytest.param(None, None, id="no usage"),
    ],
)
def test_token_counts_of_a_vendors_usage(usage, counts):
    assert token_counts(usage) == counts
