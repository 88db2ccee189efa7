"""Turning a (validated) Responses request into the chat-completions request sent to a vendor.

The chat request holds exactly what the mapping below produces; Responses fields with no chat
counterpart (metadata, store, include, truncation, service_tier, ...) are left out, because a
vendor that does not know a field answers 400 (Gemini: "Unknown name"). ``prompt_cache_key`` is
chat's too, and is kept: the pipeline sends it only to vendors that accept it (app/catalog.py).

| Responses                                   | chat completions                                  |
|---------------------------------------------|---------------------------------------------------|
| instructions                                | a leading system message                          |
| input (string)                              | one user message                                  |
| message items (developer -> system)         | messages; input_text -> text, input_image ->      |
|                                             | image_url (detail kept), input_file -> file;      |
|                                             | assistant output_text / refusal -> its text       |
| adjacent function_call items                | one assistant message with tool_calls (the one    |
|                                             | holding the assistant's text just before, if any) |
| function_call_output                        | a tool message                                    |
| reasoning items                             | dropped                                           |
| tools (flat function) / tool_choice{name}   | tools / tool_choice nested under "function"       |
| parallel_tool_calls false (with tools)      | parallel_tool_calls false                         |
| max_output_tokens                           | max_completion_tokens                             |
| text.format json_schema / json_object       | response_format                                   |
| text.verbosity, reasoning.effort            | verbosity, reasoning_effort                       |
| temperature, top_p, user, safety_identifier,| the same                                          |
| prompt_cache_key                            |                                                   |
| stream                                      | stream + stream_options.include_usage             |
"""

from __future__ import annotations

from typing import Any

__all__ = ["to_chat_request"]

_PASSED = ("temperature", "top_p", "user", "safety_identifier", "prompt_cache_key")
# Chat knows "developer" only on OpenAI; "system" means the same there and works on every vendor.
_CHAT_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}


def to_chat_request(body: dict[str, Any]) -> dict[str, Any]:
    """The chat-completions request for a Responses request that passed validation."""
    chat: dict[str, Any] = {}
    if "model" in body:
        chat["model"] = body["model"]  # the pipeline replaces it with the chosen model
    chat["messages"] = _messages(body)
    for name in _PASSED:
        if name in body:
            chat[name] = body[name]
    tools = body.get("tools")
    if tools:
        chat["tools"] = [_chat_tool(tool) for tool in tools]
        choice = body.get("tool_choice")
        if choice is not None:
            chat["tool_choice"] = _chat_tool_choice(choice)
        # True is chat's default too; sending only false keeps the field away from vendors that
        # may not know it unless the client really asked for one call at a time.
        if body.get("parallel_tool_calls") is False:
            chat["parallel_tool_calls"] = False
    limit = body.get("max_output_tokens")
    if limit is not None:
        # Not max_tokens: OpenAI refuses it for reasoning models, and Gemini's OpenAI-compatible
        # endpoint takes max_completion_tokens as well.
        chat["max_completion_tokens"] = limit
    text = body.get("text") or {}
    response_format = _response_format(text.get("format"))
    if response_format is not None:
        chat["response_format"] = response_format
    if text.get("verbosity") is not None:
        chat["verbosity"] = text["verbosity"]
    effort = (body.get("reasoning") or {}).get("effort")
    if effort is not None:
        chat["reasoning_effort"] = effort
    if body.get("stream") is True:
        chat["stream"] = True
        # The usage chunk is what response.completed reports as usage.
        chat["stream_options"] = {"include_usage": True}
    return chat


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions:
        messages.append({"role": "system", "content": instructions})
    source = body["input"]
    if isinstance(source, str):
        messages.append({"role": "user", "content": source})
        return messages
    for item in source:
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item))
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            previous = messages[-1] if messages else None
            if previous is not None and previous["role"] == "assistant":
                # The calls a model made in one turn (after its text, if any) are one chat message.
                previous.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": _text(item["output"])})
        # reasoning items: chat has no place for them, and the model does not need them back
    return messages


def _message(item: dict[str, Any]) -> dict[str, Any]:
    role = _CHAT_ROLES[item["role"]]
    content = item["content"]
    if isinstance(content, list):
        # Assistant history is the model's own text; every vendor takes it as a plain string.
        content = _text(content) if role == "assistant" else [_chat_part(part) for part in content]
    return {"role": role, "content": content}


def _text(content: str | list[dict[str, Any]]) -> str:
    if isinstance(content, str):
        return content
    return "".join(part["refusal"] if part["type"] == "refusal" else part["text"] for part in content)


def _chat_part(part: dict[str, Any]) -> dict[str, Any]:
    kind = part["type"]
    if kind == "input_image":
        image = {"url": part["image_url"]}
        if part.get("detail") is not None:
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        file = {"file_data": part["file_data"]}
        if part.get("filename") is not None:
            file["filename"] = part["filename"]
        return {"type": "file", "file": file}
    return {"type": "text", "text": part["text"]}


def _chat_tool(tool: dict[str, Any]) -> dict[str, Any]:
    function = {"name": tool["name"]}
    for field in ("description", "parameters", "strict"):
        if tool.get(field) is not None:
            function[field] = tool[field]
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        return choice
    return {"type": "function", "function": {"name": choice["name"]}}


def _response_format(text_format: dict[str, Any] | None) -> dict[str, Any] | None:
    if not text_format or text_format["type"] == "text":
        return None  # plain text is chat's default
    if text_format["type"] == "json_object":
        return {"type": "json_object"}
    schema = {"name": text_format["name"], "schema": text_format["schema"]}
    for field in ("strict", "description"):
        if text_format.get(field) is not None:
            schema[field] = text_format[field]
    return {"type": "json_schema", "json_schema": schema}
