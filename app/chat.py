"""The chat-completions recipe: validate, forward the client's own JSON, normalize the answer.

What is particular to chat completions lives here: the request's validation, and how a vendor's
answer becomes the client's (normalized: ids, model name, tool calls, finish_reason). Attempts,
failover, deadlines and hedging are the shared pipeline's (app/forward.py).
"""

from __future__ import annotations

from typing import Any

import orjson

from app.capabilities import required_capabilities
from app.endpoint import ClientRequest, StreamingExchange, UnusableAnswer
from app.normalize import normalize_completion
from app.relay import ChatEvents, StreamTranslator
from app.schemas import validate_chat_request

__all__ = ["CHAT", "ChatExchange", "ChatRecipe", "chat_completion"]

# The chat field that asks for each capability, named in "no model supports ..." errors.
CHAT_FIELDS = {"image": "messages", "video": "messages", "tools": "tools", "streaming": "stream"}


def chat_completion(document: dict[str, Any], requested_model: str) -> dict[str, Any]:
    """A vendor's whole chat completion, normalized; raises UnusableAnswer if it holds no answer."""
    choices = document.get("choices")
    if not isinstance(choices, list) or not choices:
        raise UnusableAnswer("answered a chat completion without choices")
    return normalize_completion(document, requested_model)


class ChatExchange(StreamingExchange):
    """Chat completions on the vendor side, normalized on the way back."""

    def translate(self, document: dict[str, Any]) -> bytes:
        return orjson.dumps(chat_completion(document, self.requested_model))

    def translator(self) -> StreamTranslator:
        return ChatEvents()


class ChatRecipe:
    """POST /v1/chat/completions: the client's JSON reaches the vendor with only the model replaced."""

    name = "chat"
    path = "/v1/chat/completions"
    model_type = "chat"
    fields = CHAT_FIELDS
    error_shape = None

    def prepare(self, request: ClientRequest) -> ChatExchange:
        body = request.body
        validate_chat_request(body)
        stream = body.get("stream") is True
        return ChatExchange(body, request.requested_model, stream, required_capabilities(body))


CHAT = ChatRecipe()
