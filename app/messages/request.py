"""Turning a (validated) Anthropic Messages request into the chat-completions request sent to a vendor.

The chat request is built from scratch and holds exactly what the mapping below produces; fields
with no chat counterpart are left out, because a vendor that does not know a field answers 400
(Gemini: "Unknown name"). Left out on purpose: cache_control (chat vendors cache by themselves),
context_management, metadata, top_k, service_tier, a tool's defer_loading, thinking blocks of
earlier turns (chat has no place for them and their signatures are Anthropic's).

| Messages                                        | chat completions                                   |
|-------------------------------------------------|----------------------------------------------------|
| system, and system-role messages anywhere       | one leading system message (its text first)        |
| text / image (base64 -> data: URL, url) blocks  | text / image_url parts; blank text dropped         |
| document: base64 PDF / text / content source    | a file part (data: URL) / a text part              |
| assistant text + tool_use blocks                | one assistant message: content + tool_calls        |
| user tool_result blocks                         | one tool message each, in order (is_error ->       |
|                                                 | "Error: " first); then the turn's other blocks and |
|                                                 | the results' images as one user message            |
| tools[].input_schema                            | function parameters                                |
| tool_choice auto / any / none / tool            | "auto" / "required" / "none" / a function choice   |
| tool_choice.disable_parallel_tool_use           | parallel_tool_calls false                          |
| max_tokens                                      | max_completion_tokens (per model: lowered to its   |
|                                                 | max_output_tokens)                                 |
| stop_sequences, temperature, top_p              | stop, temperature, top_p                           |
| thinking / output_config.effort                 | reasoning_effort, only for models that support it  |
| output_config.format (json_schema)              | response_format                                    |
| stream                                          | stream + stream_options.include_usage              |

Tool names a vendor would refuse (over 64 characters, or characters outside ``[A-Za-z0-9_-]``, as
MCP tools' ``mcp__server__tool`` names often are) are renamed for the vendor and mapped back in
answers: see ``ToolNames``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.catalog import Model

__all__ = ["ToolNames", "Translated", "for_model", "to_chat_request"]

# What OpenAI and Gemini accept as a function name.
_VENDOR_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9_-]")
_HASH_DIGITS = 8
# Anthropic's effort levels above high have no chat counterpart: high is the most a vendor takes.
_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}
# thinking.budget_tokens -> effort: below the first bound low, below the second medium, else high.
_BUDGET_BOUNDS = ((4096, "low"), (16384, "medium"))
_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
_PDF_SUFFIX = ".pdf"


@dataclass(frozen=True)
class ToolNames:
    """The client's tool names and the names the vendor sees, both ways.

    A name the vendor accepts is kept; another becomes its safe characters, cut to fit, and a
    short hash of the whole name (``mcp__srv__a.b`` -> ``mcp__srv__a_b_1f2e3d4c``): deterministic,
    so the same name maps the same way in every request of a conversation.
    """

    to_vendor: Mapping[str, str] = field(default_factory=dict)
    to_client: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, names: Iterable[str]) -> ToolNames:
        """The mapping for these client names, unique on the vendor side."""
        names = list(dict.fromkeys(names))
        taken = {name for name in names if _VENDOR_NAME.match(name)}
        to_vendor = {name: name for name in taken}
        for name in names:
            if name in to_vendor:
                continue
            digits = _HASH_DIGITS
            candidate = _renamed(name, digits)
            # A clash (with a name the client really uses, or another renamed one) takes more of
            # the hash until it is unique; the order of names does not change the result for the
            # unclashing, which is every realistic case.
            while candidate in taken:
                digits += 4
                candidate = _renamed(name, digits)
            taken.add(candidate)
            to_vendor[name] = candidate
        return cls(to_vendor, {vendor: client for client, vendor in to_vendor.items()})

    def vendor(self, name: str) -> str:
        """The name the vendor sees for the client's ``name``."""
        known = self.to_vendor.get(name)
        if known is not None:
            return known
        return name if _VENDOR_NAME.match(name) else _renamed(name, _HASH_DIGITS)

    def client(self, name: str) -> str:
        """The client's name for a name the vendor used (unknown names are returned as they are)."""
        return self.to_client.get(name, name)


def _renamed(name: str, digits: int) -> str:
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:digits]
    stem = _UNSAFE_CHARACTERS.sub("_", name)[: 64 - digits - 1]
    return f"{stem}_{digest}"


@dataclass(frozen=True)
class Translated:
    """A Messages request as chat: the body (``model`` as the client sent it), the tool names'
    mapping for the answer, and the reasoning effort to send to models that support one."""

    chat: dict[str, Any]
    tool_names: ToolNames
    effort: str | None


def to_chat_request(body: dict[str, Any]) -> Translated:
    """The chat-completions request for a Messages request that passed validation."""
    names = ToolNames.of(_tool_names(body))
    chat: dict[str, Any] = {"model": body["model"], "messages": _messages(body, names)}
    tools = body.get("tools")
    if tools:
        chat["tools"] = [_chat_tool(tool, names) for tool in tools]
    choice = body.get("tool_choice")
    if tools and choice:
        kind = choice["type"]
        if kind == "tool":
            chat["tool_choice"] = {"type": "function", "function": {"name": names.vendor(choice["name"])}}
        else:
            chat["tool_choice"] = _TOOL_CHOICES[kind]
        # True is chat's default too; sending only false keeps the field from vendors that may not
        # know it unless the client really asked for one call at a time.
        if choice.get("disable_parallel_tool_use") is True:
            chat["parallel_tool_calls"] = False
    if body.get("max_tokens") is not None:
        # Not max_tokens: OpenAI refuses it for reasoning models, and Gemini's OpenAI-compatible
        # endpoint takes max_completion_tokens as well.
        chat["max_completion_tokens"] = body["max_tokens"]
    if body.get("stop_sequences"):
        chat["stop"] = body["stop_sequences"]
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            chat[name] = body[name]
    output = body.get("output_config") or {}
    if output.get("format"):
        chat["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": output["format"]["schema"]},
        }
    if body.get("stream") is True:
        chat["stream"] = True
        # The usage chunk is what message_delta reports as usage.
        chat["stream_options"] = {"include_usage": True}
    return Translated(chat, names, _effort(body))


def for_model(translated: Translated, model: Model) -> dict[str, Any]:
    """The chat body for one configured model: its id, max tokens within its limit, and
    ``reasoning_effort`` only when its config says it supports reasoning."""
    chat = {**translated.chat, "model": model.id}
    limit = chat.get("max_completion_tokens")
    if limit is not None and model.max_output_tokens is not None and limit > model.max_output_tokens:
        chat["max_completion_tokens"] = model.max_output_tokens
    if translated.effort is not None and model.reasoning:
        chat["reasoning_effort"] = translated.effort
    return chat


def _effort(body: dict[str, Any]) -> str | None:
    """The reasoning effort a request asks for, or None when it asks none."""
    thinking = body.get("thinking") or {}
    kind = thinking.get("type")
    if kind == "disabled":
        return "none"
    effort = (body.get("output_config") or {}).get("effort")
    if effort is not None:
        return _EFFORTS[effort]
    if kind == "enabled":
        budget = thinking["budget_tokens"]
        return next((effort for bound, effort in _BUDGET_BOUNDS if budget < bound), "high")
    if kind == "adaptive":
        return "medium"
    return None


def _tool_names(body: dict[str, Any]) -> list[str]:
    """Every tool name of the request: declared tools, then those called in history."""
    names = [tool["name"] for tool in body.get("tools") or ()]
    for message in body["messages"]:
        content = message["content"]
        if message["role"] == "assistant" and isinstance(content, list):
            names.extend(block["name"] for block in content if block["type"] == "tool_use")
    return names


def _chat_tool(tool: dict[str, Any], names: ToolNames) -> dict[str, Any]:
    function: dict[str, Any] = {"name": names.vendor(tool["name"])}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    # Anthropic's tool "strict" is not sent: OpenAI's strict mode refuses schemas Anthropic takes.
    function["parameters"] = tool["input_schema"]
    return {"type": "function", "function": function}


def _messages(body: dict[str, Any], names: ToolNames) -> list[dict[str, Any]]:
    system = _texts(body.get("system"))
    messages: list[dict[str, Any]] = []
    for message in body["messages"]:
        role, content = message["role"], message["content"]
        if role == "system":
            # Claude Code sends part of its system prompt as system-role messages; chat vendors
            # want the system text first (Gemini takes it only there).
            system.extend(_texts(content))
        elif role == "assistant":
            answer = _assistant(content, names)
            if answer is not None:
                messages.append(answer)
        else:
            messages.extend(_user(content))
    if system:
        messages.insert(0, {"role": "system", "content": "\n\n".join(system)})
    return messages


def _texts(content: str | list[dict[str, Any]] | None) -> list[str]:
    """The non-blank texts of a content (a string or text blocks)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content] if content.strip() else []
    return [block["text"] for block in content if block["type"] == "text" and block["text"].strip()]


def _assistant(content: str | list[dict[str, Any]], names: ToolNames) -> dict[str, Any] | None:
    """The chat message of an assistant turn, or None when nothing of it is left (thinking only)."""
    if isinstance(content, str):
        return {"role": "assistant", "content": content} if content.strip() else None
    calls = [
        {
            "id": block["id"],
            "type": "function",
            "function": {"name": names.vendor(block["name"]), "arguments": orjson.dumps(block["input"]).decode()},
        }
        for block in content
        if block["type"] == "tool_use"
    ]
    text = "\n\n".join(_texts(content))
    if not text and not calls:
        return None
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _user(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A user turn as chat messages: a tool message per tool_result first (chat wants them right
    after the calls), then one user message with the rest, in the order the client sent it."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}] if content.strip() else []
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in content:
        if block["type"] == "tool_result":
            results.append(_tool_message(block, parts))
        else:
            part = _part(block)
            if part is not None:
                parts.append(part)
    if parts:
        results.append({"role": "user", "content": parts})
    return results


def _tool_message(block: dict[str, Any], parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The tool message of one tool_result; its images and documents are added to ``parts``."""
    content = block.get("content")
    if isinstance(content, str):
        text = content
    else:
        texts = []
        moved = 0
        for inner in content or ():
            if inner["type"] == "text":
                texts.append(inner["text"])
                continue
            part = _part(inner)
            if part is not None:
                parts.append(part)
                moved += 1
        text = "\n".join(texts)
        if moved and not text.strip():
            # Chat tool messages carry text only: say where the rest went, or the model sees nothing.
            text = "(The result is in the next user message.)"
    if block.get("is_error") is True:
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": text}


def _part(block: dict[str, Any]) -> dict[str, Any] | None:
    """The chat content part of a text, image or document block; None for a blank text."""
    kind = block["type"]
    if kind == "text":
        return {"type": "text", "text": block["text"]} if block["text"].strip() else None
    source = block["source"]
    if kind == "image":
        if source["type"] == "url":
            return {"type": "image_url", "image_url": {"url": source["url"]}}
        return {"type": "image_url", "image_url": {"url": f"data:{source['media_type']};base64,{source['data']}"}}
    # A document.
    title = block.get("title") if isinstance(block.get("title"), str) else None
    if source["type"] == "base64":
        filename = title or "document"
        if not filename.lower().endswith(_PDF_SUFFIX):
            filename += _PDF_SUFFIX  # vendors tell the file's type by its name
        return {
            "type": "file",
            "file": {"filename": filename, "file_data": f"data:application/pdf;base64,{source['data']}"},
        }
    if source["type"] == "content":
        inner = source["content"]
        text = inner if isinstance(inner, str) else "\n".join(item["text"] for item in inner)
    else:
        text = source["data"]
    if title:
        text = f"{title}\n\n{text}"
    return {"type": "text", "text": text} if text.strip() else None
