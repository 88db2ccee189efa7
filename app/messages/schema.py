"""Validation of an Anthropic Messages request: the fields the translation onto chat relies on.

The router runs no tools of its own and keeps no files, so what needs either (server tools, MCP
servers, containers, Files API uploads, documents by URL) is refused with a 400 naming the field,
never dropped silently. Everything the translation reads is checked for the shape it needs;
fields it does not read (metadata, top_k, service_tier, context_management, cache_control, ...)
are not checked, since nothing of them reaches a vendor. ``param`` is a dotted path as Anthropic
writes it: ``messages.2.content.0.source``.
"""

from __future__ import annotations

import re
from typing import Any

from marshmallow import ValidationError, fields, validate, validates_schema

from app.errors import InvalidRequest
from app.schemas import (
    MAX_CONTENT_PARTS,
    MAX_MESSAGES,
    MAX_NAME_LENGTH,
    MAX_TOOLS,
)
from app.validation import JSONObject, StrictBoolean, StrictSchema, check, check_tool_choice

__all__ = ["EFFORTS", "is_plain_message_request", "validate_messages_request"]

ROLES = ("user", "assistant", "system")
# The block types each role may hold; thinking blocks in history are accepted and dropped later.
BLOCK_TYPES = {
    "user": ("text", "image", "document", "tool_result"),
    "assistant": ("text", "tool_use", "thinking", "redacted_thinking"),
    "system": ("text",),
}
# What a tool_result's content may hold: its text goes to the tool message, the rest to the user.
TOOL_RESULT_BLOCK_TYPES = ("text", "image", "document")
EFFORTS = ("low", "medium", "high", "xhigh", "max")
THINKING_TYPES = ("enabled", "adaptive", "disabled")
TOOL_CHOICE_TYPES = ("auto", "any", "none", "tool")

_NO_TOOLS = "this router runs no tools of its own"
# Blocks only server tools produce: a conversation holding them was run with tools the router lacks.
_SERVER_BLOCKS = re.compile(r"server_tool_use|.*_tool_result|mcp_tool_use|container_upload")
_UNSUPPORTED_FIELDS = {
    "mcp_servers": f"mcp_servers is not supported: {_NO_TOOLS}. Run the MCP servers in the client and "
    "declare their tools in tools instead.",
    "container": f"container is not supported: {_NO_TOOLS}, so there is no container to reuse.",
}
_FILE_SOURCE = "Uploaded files (Files API) are not supported: send the content as base64 instead of a file_id."


def validate_messages_request(body: Any, *, counting: bool = False) -> None:
    """Raise InvalidRequest, with ``param`` naming the first bad field, unless ``body`` is valid.

    ``counting``: the body of ``/v1/messages/count_tokens``, which has no ``max_tokens``.
    """
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    if not counting and is_plain_message_request(body):
        return
    _refuse_unsupported(body)
    # Anthropic writes paths dotted and puts the path first: "messages.2.content: ...".
    check(_COUNT_REQUEST if counting else _MESSAGES_REQUEST, body, spell=_dotted, say=lambda p, m: f"{p}: {m}")


# The everyday request: text turns, a system text, no tools. For it the schema's answer is known.
_PLAIN_KEYS = frozenset({"model", "max_tokens", "messages", "system", "stream", "temperature", "top_p", "metadata"})
_PLAIN_ROLES = frozenset({"user", "assistant"})


def is_plain_message_request(body: dict[str, Any]) -> bool:
    """True only for requests the schema accepts: text turns, no tools (a fast path of a few us).

    Not a second validator: it says yes to a strict subset of what marshmallow accepts (a
    hypothesis test holds it to that), and everything else goes through marshmallow, which costs
    ~60 us even for the smallest request.
    """
    if not body.keys() <= _PLAIN_KEYS:
        return False
    model, limit = body.get("model"), body.get("max_tokens")
    if type(model) is not str or not 0 < len(model) <= MAX_NAME_LENGTH or type(limit) is not int or limit < 1:
        return False
    if body.get("stream") is not None and type(body["stream"]) is not bool:
        return False
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (type(value) not in (int, float) or not 0 <= value <= 1):
            return False
    if body.get("system") is not None and type(body["system"]) is not str:
        return False
    messages = body.get("messages")
    if type(messages) is not list or not 0 < len(messages) <= MAX_MESSAGES:
        return False
    for message in messages:
        if type(message) is not dict or message.keys() != {"role", "content"}:
            return False
        if message["role"] not in _PLAIN_ROLES or type(message["content"]) is not str:
            return False
    return True


def _dotted(param: str | None) -> str | None:
    """marshmallow's ``messages[2].content[0]`` written as Anthropic does: ``messages.2.content.0``."""
    return re.sub(r"\[(\d+)\]", r".\1", param) if param else param


def _refuse_unsupported(body: dict[str, Any]) -> None:
    """Refuse what needs tools the router lacks, and lists too long to load, before the schema."""
    for name, message in _UNSUPPORTED_FIELDS.items():
        if body.get(name) not in (None, [], {}):
            raise InvalidRequest(message, param=name)
    messages = body.get("messages")
    if isinstance(messages, list) and len(messages) > MAX_MESSAGES:
        raise InvalidRequest(f"messages: At most {MAX_MESSAGES} messages are allowed.", param="messages")
    tools = body.get("tools")
    if not isinstance(tools, list):
        return
    if len(tools) > MAX_TOOLS:
        raise InvalidRequest(f"tools: At most {MAX_TOOLS} tools are allowed.", param="tools")
    for index, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind is not None and kind != "custom":
            name = tool.get("name") if isinstance(tool.get("name"), str) else "it"
            raise InvalidRequest(
                f"tools.{index}.type: Server tool {kind!r} is not supported: {_NO_TOOLS} and the vendors it "
                f"routes to cannot run Anthropic's. Declare {name} as a custom tool (name, description, "
                "input_schema) and run it in the client.",
                param=f"tools.{index}.type",
            )


def _block_problem(block: dict[str, Any], allowed: tuple[str, ...], owner: str) -> dict[str, Any] | None:
    """What is wrong with one content block, as marshmallow reports it, or None."""
    kind = block["type"]
    if kind not in allowed:
        if _SERVER_BLOCKS.fullmatch(kind):
            return {"type": [f"{kind} blocks are not supported: {_NO_TOOLS}."]}
        return {"type": [f"{owner} may hold only {', '.join(allowed)} blocks."]}
    if kind == "text" and not isinstance(block.get("text"), str):
        return {"text": ["Must be a string."]}
    if kind == "image":
        return _source_problem(block.get("source"), image=True)
    if kind == "document":
        return _source_problem(block.get("source"), image=False)
    if kind == "tool_use":
        if not isinstance(block.get("id"), str) or not block["id"]:
            return {"id": ["Must be a non-empty string."]}
        name = block.get("name")
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH:
            return {"name": [f"Must be a string of 1-{MAX_NAME_LENGTH} characters."]}
        if not isinstance(block.get("input"), dict):
            return {"input": ["Must be an object."]}
    if kind == "tool_result":
        return _tool_result_problem(block)
    return None


def _source_problem(source: Any, *, image: bool) -> dict[str, Any] | None:
    if not isinstance(source, dict):
        return {"source": ["Must be an object."]}
    kind = source.get("type")
    if kind == "file":
        return {"source": {"type": [_FILE_SOURCE]}}
    if image:
        if kind == "url":
            return None if isinstance(source.get("url"), str) else {"source": {"url": ["Must be a string."]}}
        if kind != "base64":
            return {"source": {"type": ['Must be "base64" or "url".']}}
    else:
        if kind == "url":
            return {"source": {"type": ["Documents by URL are not supported: send the PDF as base64."]}}
        if kind == "content":
            content = source.get("content")
            if isinstance(content, str):
                return None
            if not isinstance(content, list):
                return {"source": {"content": ["Must be a string or a list of text blocks."]}}
            for index, block in enumerate(content):
                if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
                    return {"source": {"content": {index: ["Must be a text block with a string text."]}}}
            return None
        if kind not in ("base64", "text"):
            return {"source": {"type": ['Must be "base64", "text" or "content".']}}
        if kind == "base64" and source.get("media_type") != "application/pdf":
            return {"source": {"media_type": ['Must be "application/pdf" (send other text as a text source).']}}
    if not isinstance(source.get("media_type"), str) and kind == "base64":
        return {"source": {"media_type": ["Must be a string."]}}
    if not isinstance(source.get("data"), str):
        return {"source": {"data": ["Must be a string."]}}
    return None


def _tool_result_problem(block: dict[str, Any]) -> dict[str, Any] | None:
    if not isinstance(block.get("tool_use_id"), str) or not block["tool_use_id"]:
        return {"tool_use_id": ["Must be a non-empty string."]}
    if "is_error" in block and block["is_error"] is not None and not isinstance(block["is_error"], bool):
        return {"is_error": ["Must be true or false."]}
    content = block.get("content")
    if content is None or isinstance(content, str):
        return None
    if not isinstance(content, list):
        return {"content": ["Must be a string or a list of blocks."]}
    for index, inner in enumerate(content):
        if not isinstance(inner, dict) or not isinstance(inner.get("type"), str):
            return {"content": {index: ['Must be an object with a string "type".']}}
        problem = _block_problem(inner, TOOL_RESULT_BLOCK_TYPES, "A tool_result's content")
        if problem is not None:
            return {"content": {index: problem}}
    return None


class Content(fields.Field):
    """A message's content: a string or a list of typed blocks, each with the fields chat needs.

    A plain loop, not nested schemas: Claude Code's conversations run to thousands of blocks.
    """

    def __init__(self, role_field: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._fixed_role = role_field

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise ValidationError("Must be a string or a list of content blocks.")
        if len(value) > MAX_CONTENT_PARTS:
            raise ValidationError(f"At most {MAX_CONTENT_PARTS} content blocks are allowed.")
        role = self._fixed_role or (data.get("role") if isinstance(data, dict) else None)
        if role not in BLOCK_TYPES:
            return value  # the role is reported wrong by its own field
        owner = "system" if self._fixed_role else f"{'An' if role == 'assistant' else 'A'} {role} message"
        for index, block in enumerate(value):
            if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                raise ValidationError({index: ['Must be an object with a string "type".']})
            problem = _block_problem(block, BLOCK_TYPES[role], owner)
            if problem is not None:
                raise ValidationError({index: problem})
        return value


class Number(fields.Field):
    """A JSON number (not a numeric string or a boolean), as sent on to the vendor."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValidationError("Must be a number.")
        return value


class Message(StrictSchema):
    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    content = Content(required=True)


class Tool(StrictSchema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=MAX_NAME_LENGTH))
    description = fields.String(allow_none=True)
    input_schema = JSONObject(required=True)


class ToolChoice(StrictSchema):
    type = fields.String(required=True, validate=validate.OneOf(TOOL_CHOICE_TYPES))
    name = fields.String()
    disable_parallel_tool_use = StrictBoolean(allow_none=True)

    @validates_schema
    def _tool_has_a_name(self, data: dict, **kwargs: Any) -> None:
        if data.get("type") == "tool" and "name" not in data:
            raise ValidationError('Required when type is "tool".', "name")


class Thinking(StrictSchema):
    type = fields.String(required=True, validate=validate.OneOf(THINKING_TYPES))
    budget_tokens = fields.Integer(strict=True, validate=validate.Range(min=0))

    @validates_schema
    def _enabled_has_a_budget(self, data: dict, **kwargs: Any) -> None:
        if data.get("type") == "enabled" and "budget_tokens" not in data:
            raise ValidationError('Required when type is "enabled".', "budget_tokens")


class OutputFormat(StrictSchema):
    type = fields.String(required=True, validate=validate.Equal("json_schema"))
    schema = JSONObject(required=True)


class OutputConfig(StrictSchema):
    effort = fields.String(allow_none=True, validate=validate.OneOf(EFFORTS))
    format = fields.Nested(OutputFormat, allow_none=True)


class MessagesRequest(StrictSchema):
    model = fields.String(required=True, validate=validate.Length(min=1, max=MAX_NAME_LENGTH))
    max_tokens = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    messages = fields.List(
        fields.Nested(Message),
        required=True,
        validate=validate.Length(min=1, error="Must hold at least one message."),
    )
    system = Content(role_field="system", allow_none=True)
    tools = fields.List(fields.Nested(Tool), allow_none=True)
    tool_choice = fields.Nested(ToolChoice, allow_none=True)
    stop_sequences = fields.List(fields.String(), allow_none=True)
    temperature = Number(allow_none=True, validate=validate.Range(min=0, max=1))
    top_p = Number(allow_none=True, validate=validate.Range(min=0, max=1))
    stream = StrictBoolean(allow_none=True)
    thinking = fields.Nested(Thinking, allow_none=True)
    output_config = fields.Nested(OutputConfig, allow_none=True)

    @validates_schema
    def _tool_names_are_unique(self, data: dict, **kwargs: Any) -> None:
        seen: set[str] = set()
        for index, tool in enumerate(data.get("tools") or []):
            if tool["name"] in seen:
                raise ValidationError({index: {"name": [f"Another tool is named {tool['name']!r}."]}}, "tools")
            seen.add(tool["name"])

    @validates_schema
    def _tool_choice_names_a_tool(self, data: dict, **kwargs: Any) -> None:
        choice = data.get("tool_choice")
        if choice is None:
            return
        names = {tool["name"] for tool in data.get("tools") or []}
        kind = {"any": "required", "tool": "named"}.get(choice["type"], choice["type"])
        check_tool_choice(kind, choice.get("name"), names, lambda m: {"name": m}, lambda m: {"type": m})

    @validates_schema
    def _results_answer_earlier_calls(self, data: dict, **kwargs: Any) -> None:
        # Chat vendors refuse a tool message that answers no earlier call: say where, here.
        calls: set[str] = set()
        for number, message in enumerate(data.get("messages") or []):
            content = message["content"]
            if not isinstance(content, list):
                continue
            for index, block in enumerate(content):
                if block["type"] == "tool_use":
                    calls.add(block["id"])
                elif block["type"] == "tool_result" and block["tool_use_id"] not in calls:
                    problem = "No tool_use with this id comes before this tool_result in messages."
                    raise ValidationError({number: {"content": {index: {"tool_use_id": [problem]}}}}, "messages")


class CountTokensRequest(MessagesRequest):
    max_tokens = fields.Integer(strict=True, allow_none=True, validate=validate.Range(min=1))


_MESSAGES_REQUEST = MessagesRequest()
_COUNT_REQUEST = CountTokensRequest()
