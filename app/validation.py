"""What every endpoint's validation shares: the strict base schema, exact field types, one helper
that turns marshmallow's first complaint into a 400 naming the field, and the tool-choice rule.

Each endpoint's schema checks only the fields the router relies on; the loaded result is thrown
away (the router forwards or translates the client's original JSON), so unknown fields are
neither rejected nor copied.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields

from app.errors import InvalidRequest

__all__ = ["JSONObject", "StrictBoolean", "StrictSchema", "check", "check_tool_choice", "first_error"]


class StrictSchema(Schema):
    """The base of every request schema: an object, whose unknown fields are left alone."""

    error_messages = {"type": "Must be an object."}

    class Meta:
        unknown = EXCLUDE


class StrictBoolean(fields.Field):
    """true or false, not "true", 1 or "yes" (marshmallow's Boolean coerces those)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("Must be true or false.")
        return value


class JSONObject(fields.Field):
    """Any JSON object, kept as is."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dict:
        if not isinstance(value, dict):
            raise ValidationError("Must be an object.")
        return value


def check(
    schema: Schema,
    body: Any,
    *,
    spell: Callable[[str], str] = lambda param: param,
    say: Callable[[str, str], str] = lambda param, message: f"Invalid value for {param}: {message}",
) -> None:
    """Raise InvalidRequest naming the first bad field unless ``schema`` accepts ``body``.

    ``spell`` writes a field path as the endpoint's clients know it (``messages[2].content``
    by default); ``say`` words the message for a path and marshmallow's complaint.
    """
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        schema.load(body)
    except ValidationError as exc:
        param, message = first_error(exc.messages)
        if param is None:
            raise InvalidRequest(message) from None
        param = spell(param)
        raise InvalidRequest(say(param, message), param=param) from None


def first_error(messages: Any, path: str = "") -> tuple[str | None, str]:
    """The path (``tools[0].function.name``) and text of the first error marshmallow reported."""
    if isinstance(messages, dict):
        key, inner = next(iter(messages.items()))
        if key == "_schema":
            step = path
        elif isinstance(key, int):
            step = f"{path}[{key}]"
        else:
            step = f"{path}.{key}" if path else str(key)
        return first_error(inner, step)
    if isinstance(messages, list) and messages:
        first = messages[0]
        if isinstance(first, (dict, list)):
            return first_error(first, path)
        return path or None, str(first)
    return path or None, str(messages)


def check_tool_choice(
    kind: str,
    name: str | None,
    tool_names: Collection[str],
    name_at: Callable[[Any], Any],
    kind_at: Callable[[Any], Any] = lambda messages: messages,
) -> None:
    """Raise ValidationError (at ``tool_choice``) for a tool choice that cannot be honoured.

    The one rule, in every API's terms: ``kind`` is "none", "auto", "required" (Anthropic's
    "any") or "named" (one tool, ``name``). Letting the model decide, or forbidding tools, needs
    no tools; requiring one does; a named choice must name one of them. Each complaint is put
    where the API spells what it is about: ``kind_at(messages)``, ``name_at(messages)``.
    """
    if kind in ("none", "auto"):
        return
    if not tool_names:
        raise ValidationError(kind_at(["Only allowed when tools are given."]), "tool_choice")
    if kind == "named" and name not in tool_names:
        raise ValidationError(name_at([f"No tool named {name!r} in tools."]), "tool_choice")
