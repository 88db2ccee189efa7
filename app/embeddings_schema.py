"""Validation of an embeddings request: input, encoding_format and dimensions, as OpenAI checks them.

``input`` is one non-empty string, or a list (at most 2048 items) of non-empty strings, of token
ids, or of non-empty lists of token ids. Other fields (``user``, vendor extras) are the vendor's
to judge and pass untouched.
"""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, validate

from app.schemas import MAX_NAME_LENGTH
from app.validation import StrictSchema, check

__all__ = ["MAX_INPUTS", "validate_embeddings_request"]

MAX_INPUTS = 2048
_INPUT_ERROR = "Must be a non-empty string, or a list of strings, of token ids, or of lists of token ids."


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class EmbeddingInput(fields.Field):
    """What OpenAI embeds: text or token ids, one or a batch; never empty."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str):
            if not value:
                raise ValidationError("Must not be an empty string.")
            return value
        if not isinstance(value, list) or not value:
            raise ValidationError(_INPUT_ERROR)
        if len(value) > MAX_INPUTS:
            raise ValidationError(f"At most {MAX_INPUTS} items are allowed.")
        # The first item decides the kind of batch; a plain loop, since batches are large.
        first = value[0]
        if isinstance(first, str):
            check, error = _is_text, "Must be a non-empty string."
        elif isinstance(first, list):
            check, error = _is_token_list, "Must be a non-empty list of token ids (integers >= 0)."
        elif _is_token(first):
            check, error = _is_token, "Must be a token id (an integer >= 0)."
        else:
            raise ValidationError({0: [_INPUT_ERROR]})
        for index, item in enumerate(value):
            if not check(item):
                raise ValidationError({index: [error]})
        return value


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _is_token_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(map(_is_token, value))


class EmbeddingsRequest(StrictSchema):
    model = fields.String(allow_none=True, validate=validate.Length(max=MAX_NAME_LENGTH))
    input = EmbeddingInput(required=True)
    encoding_format = fields.String(validate=validate.OneOf(("float", "base64")))
    dimensions = fields.Integer(strict=True, validate=validate.Range(min=1))


_EMBEDDINGS_REQUEST = EmbeddingsRequest()


def validate_embeddings_request(body: Any) -> None:
    """Raise InvalidRequest, with ``param`` naming the first bad field, unless ``body`` is valid."""
    check(_EMBEDDINGS_REQUEST, body)
