"""Validation of a Responses API request: the fields the translation onto chat relies on.

The router keeps no state and runs no tools, so the parts of the API that need either (stored
responses and conversations, background runs, stored prompts, item references, tools the server
would run) are refused with a message saying what to send instead, never dropped silently.
Everything else is checked for the shape the translation needs; fields it does not read are not
checked (they are echoed in the answer or not sent at all).
"""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, validate, validates_schema

from app.errors import InvalidRequest
from app.schemas import (
    MAX_MESSAGES,
    MAX_NAME_LENGTH,
    MAX_TOOLS,
    TOOL_NAME_RULE,
    FunctionFields,
)
from app.schemas import Content as ChatContent
from app.validation import JSONObject, StrictBoolean, StrictSchema, check, check_tool_choice

__all__ = ["MAX_INPUT_ITEMS", "validate_responses_request"]

MAX_INPUT_ITEMS = MAX_MESSAGES
ROLES = ("user", "assistant", "system", "developer")
# The part types chat can carry, per role: assistant history is text the model wrote.
PART_TYPES = {
    "user": ("input_text", "input_image", "input_file"),
    "system": ("input_text", "input_image", "input_file"),
    "developer": ("input_text", "input_image", "input_file"),
    "assistant": ("output_text", "refusal", "input_text"),
}

_STATELESS = "this router keeps no state between requests"
_UNSUPPORTED_FIELDS = {
    "previous_response_id": f"previous_response_id is not supported: {_STATELESS}. "
    "Send the whole conversation in input instead.",
    "conversation": f"conversation is not supported: {_STATELESS}. Send the whole conversation in input instead.",
    "prompt": "prompt (a stored prompt template) is not supported: this router stores no prompts. "
    "Send the prompt's text as instructions and input instead.",
}
_BACKGROUND = (
    f"background responses are not supported: {_STATELESS}, so there is nothing to poll. "
    "Leave background unset and wait for the answer, or stream it to see progress."
)
_ITEM_REFERENCE = f"Item references are not supported: {_STATELESS}. Send the item itself in input instead of its id."
# Tools OpenAI's servers run themselves; the router runs none.
_HOSTED_TOOLS = frozenset(
    {"file_search", "code_interpreter", "computer", "computer_use_preview", "image_generation", "mcp", "tool_search"}
)


def validate_responses_request(body: Any) -> None:
    """Raise InvalidRequest, with ``param`` naming the first bad field, unless ``body`` is valid."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    _refuse_unsupported(body)
    check(_RESPONSES_REQUEST, body)


def _refuse_unsupported(body: dict[str, Any]) -> None:
    """Refuse what needs state or server-run tools, and lists too long to load, before the schema."""
    for name, message in _UNSUPPORTED_FIELDS.items():
        if body.get(name) is not None:
            raise InvalidRequest(message, param=name, code="unsupported_parameter")
    if body.get("background") is True:
        raise InvalidRequest(_BACKGROUND, param="background", code="unsupported_parameter")
    items = body.get("input")
    if isinstance(items, list):
        if len(items) > MAX_INPUT_ITEMS:
            raise InvalidRequest(
                f"Invalid value for input: At most {MAX_INPUT_ITEMS} items are allowed.", param="input"
            )
        for index, item in enumerate(items):
            if isinstance(item, dict) and item.get("type") == "item_reference":
                raise InvalidRequest(_ITEM_REFERENCE, param=f"input[{index}]", code="unsupported_value")
    tools = body.get("tools")
    if isinstance(tools, list):
        if len(tools) > MAX_TOOLS:
            raise InvalidRequest(f"Invalid value for tools: At most {MAX_TOOLS} tools are allowed.", param="tools")
        for index, tool in enumerate(tools):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if isinstance(kind, str) and kind != "function":
                raise InvalidRequest(_tool_type_message(kind), param=f"tools[{index}].type", code="unsupported_value")


def _tool_type_message(kind: str) -> str:
    if kind in _HOSTED_TOOLS or kind.startswith("web_search"):
        return (
            f"Tool type {kind!r} is not supported: this router runs no tools of its own. "
            "Declare a function tool and run it yourself."
        )
    return (
        f"Tool type {kind!r} is not supported: only function tools can be translated onto chat completions. "
        "Declare it as a function tool instead."
    )


class Content(ChatContent):
    """A message's content: a string or a list of typed parts, each with the fields chat needs."""

    expected = "a string or a list of content parts"

    def part_problem(self, part: dict[str, Any]) -> dict[str, list[str]] | None:
        return _part_problem(part)


def _part_problem(part: dict[str, Any]) -> dict[str, list[str]] | None:
    """What is wrong with one content part, as marshmallow reports it, or None."""
    kind = part["type"]
    if kind in ("input_text", "output_text") and not isinstance(part.get("text"), str):
        return {"text": ["Must be a string."]}
    if kind == "refusal" and not isinstance(part.get("refusal"), str):
        return {"refusal": ["Must be a string."]}
    if kind == "input_image" and not isinstance(part.get("image_url"), str):
        if part.get("file_id") is not None:
            return {"file_id": ["Uploaded files are not supported: send image_url (a URL or a data: URL) instead."]}
        return {"image_url": ["Must be a string (a URL or a data: URL)."]}
    if kind == "input_file" and not isinstance(part.get("file_data"), str):
        for other in ("file_id", "file_url"):
            if part.get(other) is not None:
                return {
                    other: [f"Not supported: send the file's content as file_data (a data: URL) instead of {other}."]
                }
        return {"file_data": ["Must be a string (a data: URL)."]}
    if kind == "input_file" and part.get("filename") is not None and not isinstance(part["filename"], str):
        return {"filename": ["Must be a string."]}
    return None


class MessageItem(StrictSchema):
    type = fields.String(validate=validate.Equal("message"))
    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    content = Content(required=True)

    @validates_schema
    def _parts_fit_role(self, data: dict, **kwargs: Any) -> None:
        content, role = data.get("content"), data.get("role")
        if not isinstance(content, list):
            return
        allowed = PART_TYPES[role]
        for index, part in enumerate(content):
            if part["type"] not in allowed:
                kinds = ", ".join(allowed)
                raise ValidationError({index: {"type": [f"A {role} message may hold only {kinds} parts."]}}, "content")


class FunctionCallItem(StrictSchema):
    type = fields.String(required=True)
    call_id = fields.String(required=True, validate=validate.Length(min=1, max=MAX_NAME_LENGTH))
    name = fields.String(required=True, validate=TOOL_NAME_RULE)
    arguments = fields.String(required=True)


class ToolOutput(fields.Field):
    """A function's output: a string, or text parts (chat's tool messages carry text only)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise ValidationError("Must be a string or a list of input_text parts.")
        for index, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "input_text":
                raise ValidationError({index: ["Must be an input_text part: chat tool messages carry only text."]})
            if not isinstance(part.get("text"), str):
                raise ValidationError({index: {"text": ["Must be a string."]}})
        return value


class FunctionCallOutputItem(StrictSchema):
    type = fields.String(required=True)
    call_id = fields.String(required=True, validate=validate.Length(min=1, max=MAX_NAME_LENGTH))
    output = ToolOutput(required=True)


_ITEM_SCHEMAS = {
    "message": MessageItem(),
    "function_call": FunctionCallItem(),
    "function_call_output": FunctionCallOutputItem(),
}
# Reasoning items are dropped by the translation (chat has no place for them), so any shape passes.
_DROPPED_ITEMS = frozenset({"reasoning"})


class Input(fields.Field):
    """A string (one user message) or a list of items: messages, function calls and their outputs."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str):
            return value
        if not isinstance(value, list) or not value:
            raise ValidationError("Must be a string or a non-empty list of items.")
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise ValidationError({index: ["Must be an object."]})
            kind = item.get("type", "message" if "role" in item else None)
            if not isinstance(kind, str):
                raise ValidationError({index: {"type": ["Must be a string."]}})
            if kind in _DROPPED_ITEMS:
                continue
            schema = _ITEM_SCHEMAS.get(kind)
            if schema is None:
                known = ", ".join([*_ITEM_SCHEMAS, *sorted(_DROPPED_ITEMS)])
                raise ValidationError({index: {"type": [f"Must be one of: {known}."]}})
            try:
                schema.load(item)
            except ValidationError as exc:
                raise ValidationError({index: exc.messages}) from None
        return value


class FunctionTool(StrictSchema, FunctionFields):
    type = fields.String(required=True, validate=validate.Equal("function"))
    name = fields.String(required=True, validate=TOOL_NAME_RULE)


class ToolChoice(fields.Field):
    """ "none", "auto", "required", or {"type": "function", "name": ...}."""

    _ERROR = 'Must be "none", "auto", "required" or {"type": "function", "name": ...}.'

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str):
            if value not in ("none", "auto", "required"):
                raise ValidationError(self._ERROR)
            return value
        if not isinstance(value, dict):
            raise ValidationError(self._ERROR)
        if value.get("type") != "function":
            raise ValidationError({"type": [f"{self._ERROR} To allow only some tools, send only those in tools."]})
        if not isinstance(value.get("name"), str):
            raise ValidationError({"name": ["Must be a string."]})
        return value


class TextFormat(StrictSchema):
    type = fields.String(required=True, validate=validate.OneOf(("text", "json_object", "json_schema")))
    name = fields.String(validate=TOOL_NAME_RULE)
    schema = JSONObject()
    strict = StrictBoolean(allow_none=True)
    description = fields.String(allow_none=True)

    @validates_schema
    def _json_schema_has_name_and_schema(self, data: dict, **kwargs: Any) -> None:
        if data.get("type") != "json_schema":
            return
        for field in ("name", "schema"):
            if field not in data:
                raise ValidationError("Required when type is json_schema.", field)


# OpenAI's limits on metadata: it is echoed in every answer, so it must stay small and flat (a
# deeply nested object cannot even be serialized, and would fail after the vendor was paid).
MAX_METADATA_KEYS = 16
MAX_METADATA_KEY_LENGTH = 64
MAX_METADATA_VALUE_LENGTH = 512


class Metadata(fields.Field):
    """OpenAI's metadata: at most 16 string keys of at most 64 characters, each a string of at most 512."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dict[str, str]:
        if not isinstance(value, dict):
            raise ValidationError("Must be an object of strings.")
        if len(value) > MAX_METADATA_KEYS:
            raise ValidationError(f"At most {MAX_METADATA_KEYS} keys are allowed; got {len(value)}.")
        for key, item in value.items():
            if len(key) > MAX_METADATA_KEY_LENGTH:
                raise ValidationError(f"Keys must be at most {MAX_METADATA_KEY_LENGTH} characters long.")
            if not isinstance(item, str):
                raise ValidationError("Values must be strings.")
            if len(item) > MAX_METADATA_VALUE_LENGTH:
                raise ValidationError(f"Values must be at most {MAX_METADATA_VALUE_LENGTH} characters long.")
        return value


class TextOptions(StrictSchema):
    format = fields.Nested(TextFormat, allow_none=True)
    verbosity = fields.String(allow_none=True)


class ReasoningOptions(StrictSchema):
    effort = fields.String(allow_none=True)


class ResponsesRequest(StrictSchema):
    model = fields.String(allow_none=True, validate=validate.Length(max=MAX_NAME_LENGTH))
    input = Input(required=True)
    instructions = fields.String(allow_none=True)
    tools = fields.List(fields.Nested(FunctionTool), allow_none=True)
    tool_choice = ToolChoice(allow_none=True)
    parallel_tool_calls = StrictBoolean(allow_none=True)
    stream = StrictBoolean(allow_none=True)
    store = StrictBoolean(allow_none=True)
    background = StrictBoolean(allow_none=True)
    max_output_tokens = fields.Integer(strict=True, allow_none=True, validate=validate.Range(min=1))
    text = fields.Nested(TextOptions, allow_none=True)
    reasoning = fields.Nested(ReasoningOptions, allow_none=True)
    metadata = Metadata(allow_none=True)
    prompt_cache_key = fields.String(allow_none=True)

    @validates_schema
    def _tool_choice_names_a_tool(self, data: dict, **kwargs: Any) -> None:
        choice = data.get("tool_choice")
        if choice is None:
            return
        names = {tool["name"] for tool in data.get("tools") or []}
        if isinstance(choice, dict):
            check_tool_choice("named", choice["name"], names, lambda m: {"name": m})
        else:
            check_tool_choice(choice, None, names, lambda m: m)

    @validates_schema
    def _outputs_answer_earlier_calls(self, data: dict, **kwargs: Any) -> None:
        items = data.get("input")
        if not isinstance(items, list):
            return
        calls: set[str] = set()
        for index, item in enumerate(items):
            kind = item.get("type")
            if kind == "function_call":
                calls.add(item["call_id"])
            elif kind == "function_call_output" and item["call_id"] not in calls:
                message = "No function_call with this call_id comes before this output in input."
                raise ValidationError({index: {"call_id": [message]}}, "input")


_RESPONSES_REQUEST = ResponsesRequest()
