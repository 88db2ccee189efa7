"""The chat service: validate -> resolve the candidates -> forward -> a normalized answer.

What is particular to chat completions lives here: the request's validation, and how a vendor's
answer becomes the client's (normalized: ids, model name, tool calls, finish_reason). Attempts,
failover, deadlines and hedging are the shared pipeline's (app/forward.py).
"""

from __future__ import annotations

from typing import Any

import orjson

from app.calls import ClientCall
from app.capabilities import required_capabilities
from app.catalog import Vendor
from app.disconnect import ClientWatch
from app.forward import Call, Forwarder, UnusableAnswer, WholeAnswer
from app.normalize import normalize_completion
from app.relay import ChatEvents, StreamAnswer
from app.schemas import validate_chat_request
from app.selector import Selector

__all__ = ["ChatExchange", "ChatService", "chat_completion"]


def chat_completion(document: dict[str, Any], requested_model: str) -> dict[str, Any]:
    """A vendor's whole chat completion, normalized; raises UnusableAnswer if it holds no answer."""
    choices = document.get("choices")
    if not isinstance(choices, list) or not choices:
        raise UnusableAnswer("answered a chat completion without choices")
    return normalize_completion(document, requested_model)


class ChatExchange:
    """Chat completions on the vendor side, normalized on the way back."""

    def __init__(self, requested_model: str) -> None:
        self._model = requested_model

    def url(self, vendor: Vendor) -> str:
        return vendor.chat_url

    def answer(self, document: dict[str, Any]) -> bytes:
        return orjson.dumps(chat_completion(document, self._model))

    def translator(self) -> ChatEvents:
        return ChatEvents()


class ChatService:
    """Answers chat requests through the shared forwarding pipeline."""

    def __init__(self, selector: Selector, forwarder: Forwarder) -> None:
        self._selector = selector
        self._forwarder = forwarder

    def answer(self, call: ClientCall, watch: ClientWatch) -> WholeAnswer | StreamAnswer:
        """Validate and answer ``call``; raises RouterError (with trace headers) when it cannot."""
        body = call.body
        validate_chat_request(body)
        candidates = self._selector.candidates(call.vendor, body.get("model"), "chat", required_capabilities(body))
        model = call.requested_model
        forwarded = Call(body, model, candidates, ChatExchange(model), call.stream, call.client)
        return self._forwarder.forward(forwarded, watch)
