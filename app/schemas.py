"""Validation of the chat request with marshmallow: the fields the router relies on, nothing more.

Only the structure is checked (messages, tools, tool_choice, stream, stream_options); every other
field is the vendor's to judge and passes untouched, because the router forwards the client's
original JSON, not what marshmallow loaded. Bounds on counts and sizes keep one request from
pinning a worker's CPU.
"""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from app.errors import InvalidRequest
from app.validation import JSONObject, StrictBoolean, StrictSchema, check, check_tool_choice

__all__ = ["MAX_CONTENT_PARTS", "MAX_MESSAGES", "MAX_TOOLS", "MAX_TOOL_CALLS", "is_plain_chat", "validate_chat_request"]

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_MESSAGES = 4096
MAX_CONTENT_PARTS = 1024
MAX_TOOLS = 512
# Tool calls in the whole conversation. Each costs a nested schema load (~17 us), so without a
# total 10 MB of them would hold a worker for seconds.
MAX_TOOL_CALLS = 4096
MAX_NAME_LENGTH = 256
# \Z, not $: "$" would accept a name ending in a newline.
TOOL_NAME = r"^[a-zA-Z0-9_-]{1,64}\Z"


class Content(fields.Field):
    """A message's content: a string, a list of typed parts, or null (checked per role)."""

    expected = "a string, a list of content parts, or null"

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise ValidationError(f"Must be {self.expected}.")
        if len(value) > MAX_CONTENT_PARTS:
            raise ValidationError(f"At most {MAX_CONTENT_PARTS} content parts are allowed.")
        # A plain loop, not a nested schema: parts can number in the thousands.
        for index, part in enumerate(value):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise ValidationError({index: ['Must be an object with a string "type".']})
            problem = self.part_problem(part)
            if problem is not None:
                raise ValidationError({index: problem})
        return value

    def part_problem(self, part: dict[str, Any]) -> dict[str, list[str]] | None:
        """What is wrong with one typed part, or None (chat checks only that text is a string)."""
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            return {"text": ["Must be a string."]}
        return None


class ToolChoice(fields.Field):
    """ "none", "auto", "required", or {"type": "function", "function": {"name": ...}}."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str):
            if value not in ("none", "auto", "required"):
                raise ValidationError('Must be "none", "auto", "required" or a function choice object.')
            return value
        if not isinstance(value, dict):
            raise ValidationError('Must be "none", "auto", "required" or a function choice object.')
        return _FUNCTION_CHOICE.load(value)


_TOOL_NAME_ERROR = "Must be 1-64 letters, digits, underscores or dashes (^[a-zA-Z0-9_-]{{1,64}}$)."
# A function tool's name, the same rule in every API the router speaks.
TOOL_NAME_RULE = validate.Regexp(TOOL_NAME, error=_TOOL_NAME_ERROR)


class FunctionName(StrictSchema):
    name = fields.String(required=True, validate=TOOL_NAME_RULE)


class FunctionChoice(StrictSchema):
    type = fields.String(required=True, validate=validate.Equal("function"))
    function = fields.Nested(FunctionName, required=True)


_FUNCTION_CHOICE = FunctionChoice()


class FunctionFields(Schema):
    """A function tool's fields beside its name: the same in chat's nested form and in the
    Responses API's flat one."""

    description = fields.String(allow_none=True)
    parameters = JSONObject(allow_none=True)
    strict = StrictBoolean(allow_none=True)

    @validates_schema
    def _parameters_describe_an_object(self, data: dict, **kwargs: Any) -> None:
        kind = (data.get("parameters") or {}).get("type", "object")
        if kind != "object":
            raise ValidationError('Must be a JSON Schema with "type": "object".', "parameters")


class FunctionDefinition(FunctionName, FunctionFields):
    pass


class Tool(StrictSchema):
    type = fields.String(required=True, validate=validate.Equal("function"))
    function = fields.Nested(FunctionDefinition, required=True)


class ToolCallFunction(StrictSchema):
    name = fields.String(required=True)
    arguments = fields.String(required=True)


class ToolCall(StrictSchema):
    id = fields.String(required=True)
    type = fields.String(required=True)
    function = fields.Nested(ToolCallFunction)


class Message(StrictSchema):
    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    content = Content(allow_none=True)
    name = fields.String(allow_none=True, validate=validate.Length(max=MAX_NAME_LENGTH))
    tool_calls = fields.List(fields.Nested(ToolCall), allow_none=True, validate=validate.Length(max=MAX_TOOLS))
    tool_call_id = fields.String(allow_none=True)

    @validates_schema
    def _content_fits_role(self, data: dict, **kwargs: Any) -> None:
        role = data.get("role")
        if data.get("content") is None:
            # An assistant turn that only calls tools (or refused) has no content: that is the
            # standard tool-calling history and must pass.
            if role != "assistant":
                raise ValidationError(f"Required for {role} messages.", "content")
            if not (data.get("tool_calls") or data.get("function_call") or data.get("refusal")):
                raise ValidationError("Required unless the assistant message has tool_calls.", "content")
        if role == "tool" and not data.get("tool_call_id"):
            raise ValidationError("Required for tool messages.", "tool_call_id")
        if data.get("tool_calls") and role != "assistant":
            raise ValidationError("Only assistant messages may carry tool_calls.", "tool_calls")


class ChatRequest(StrictSchema):
    model = fields.String(allow_none=True, validate=validate.Length(max=MAX_NAME_LENGTH))
    messages = fields.List(
        fields.Nested(Message),
        required=True,
        validate=validate.Length(min=1, max=MAX_MESSAGES, error="Must hold between {min} and {max} messages."),
    )
    tools = fields.List(fields.Nested(Tool), allow_none=True, validate=validate.Length(max=MAX_TOOLS))
    tool_choice = ToolChoice(allow_none=True)
    stream = StrictBoolean(allow_none=True)
    stream_options = JSONObject(allow_none=True)

    @validates_schema
    def _tool_choice_names_a_tool(self, data: dict, **kwargs: Any) -> None:
        choice = data.get("tool_choice")
        if choice is None:
            return
        names = {tool["function"]["name"] for tool in data.get("tools") or []}
        if isinstance(choice, dict):
            check_tool_choice("named", choice["function"]["name"], names, lambda m: {"function": {"name": m}})
        else:
            check_tool_choice(choice, None, names, lambda m: m)


_CHAT_REQUEST = ChatRequest()


def validate_chat_request(body: Any) -> None:
    """Raise InvalidRequest, with ``param`` naming the first bad field, unless ``body`` is valid."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    if is_plain_chat(body):
        return
    _check_counts(body)
    check(_CHAT_REQUEST, body)


# The everyday request: text messages, no tools. For it the schema's answer is known in advance.
_PLAIN_ROLES = frozenset({"system", "developer", "user", "assistant"})
_PLAIN_MESSAGE_KEYS = frozenset({"role", "content", "name"})


def is_plain_chat(body: dict) -> bool:
    """True only for requests the schema accepts: text messages, no tools (a fast path, ~2 us).

    Not a second validator: it says yes to a strict subset of what marshmallow accepts (a
    hypothesis test holds it to that) and everything else goes through marshmallow, which
    costs ~60 us per request on the hot path.
    """
    if "tools" in body or "tool_choice" in body:
        return False
    model = body.get("model")
    if model is not None and (type(model) is not str or len(model) > MAX_NAME_LENGTH):
        return False
    stream = body.get("stream")
    if stream is not None and type(stream) is not bool:
        return False
    options = body.get("stream_options")
    if options is not None and type(options) is not dict:
        return False
    messages = body.get("messages")
    if type(messages) is not list or not 0 < len(messages) <= MAX_MESSAGES:
        return False
    for message in messages:
        if (
            type(message) is not dict
            or type(message.get("content")) is not str
            or type(message.get("role")) is not str
            or message["role"] not in _PLAIN_ROLES
            or not message.keys() <= _PLAIN_MESSAGE_KEYS
        ):
            return False
        name = message.get("name")
        if name is not None and (type(name) is not str or len(name) > MAX_NAME_LENGTH):
            return False
    return True


def _check_counts(body: dict) -> None:
    """Refuse oversized lists before marshmallow loads them: it checks a list's length only after
    loading every item, which for 10 MB of tiny messages is seconds of CPU."""
    messages, tools = body.get("messages"), body.get("tools")
    if isinstance(messages, list) and len(messages) > MAX_MESSAGES:
        text = f"Invalid value for messages: At most {MAX_MESSAGES} messages are allowed."
        raise InvalidRequest(text, param="messages")
    if isinstance(tools, list) and len(tools) > MAX_TOOLS:
        raise InvalidRequest(f"Invalid value for tools: At most {MAX_TOOLS} tools are allowed.", param="tools")
    if not isinstance(messages, list):
        return
    total = 0
    for index, message in enumerate(messages):
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        if not isinstance(calls, list):
            continue
        if len(calls) > MAX_TOOLS:
            param = f"messages[{index}].tool_calls"
            raise InvalidRequest(f"Invalid value for {param}: At most {MAX_TOOLS} tool calls are allowed.", param=param)
        total += len(calls)
    if total > MAX_TOOL_CALLS:
        raise InvalidRequest(
            f"Invalid value for messages: At most {MAX_TOOL_CALLS} tool calls are allowed in one request.",
            param="messages",
        )
