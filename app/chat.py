"""The chat service: validate -> resolve the candidates -> forward -> a normalized answer.

What is particular to chat completions lives here: the request's validation, and how a vendor's
answer becomes the client's (normalized: ids, model name, tool calls, finish_reason). Attempts,
failover, deadlines and hedging are the shared pipeline's (app/forward.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from app.capabilities import required_capabilities
from app.catalog import Vendor
from app.disconnect import ClientWatch
from app.forward import Call, Forwarder, UnusableAnswer, WholeAnswer
from app.normalize import normalize_completion
from app.relay import ChatEvents, StreamAnswer
from app.schemas import validate_chat_request
from app.selector import Selector

__all__ = ["DEFAULT_MODEL_NAME", "ChatCall", "ChatExchange", "ChatService"]

# A client that names no model gets the router's choice, reported under this name.
DEFAULT_MODEL_NAME = "any-model"


@dataclass(frozen=True)
class ChatCall:
    """One client request: its parsed JSON body and the ``?vendor=`` filter."""

    body: dict[str, Any]
    vendor: str | None = None
    client: str = "anonymous"

    @property
    def requested_model(self) -> str:
        model = self.body.get("model")
        return model if isinstance(model, str) and model else DEFAULT_MODEL_NAME

    @property
    def stream(self) -> bool:
        return self.body.get("stream") is True


class ChatExchange:
    """Chat completions on the vendor side, normalized on the way back."""

    def __init__(self, requested_model: str) -> None:
        self._model = requested_model

    def url(self, vendor: Vendor) -> str:
        return vendor.chat_url

    def answer(self, document: dict[str, Any]) -> bytes:
        choices = document.get("choices")
        if not isinstance(choices, list) or not choices:
            raise UnusableAnswer("answered a chat completion without choices")
        return orjson.dumps(normalize_completion(document, self._model))

    def translator(self) -> ChatEvents:
        return ChatEvents()


class ChatService:
    """Answers chat requests through the shared forwarding pipeline."""

    def __init__(self, selector: Selector, forwarder: Forwarder) -> None:
        self._selector = selector
        self._forwarder = forwarder

    def answer(self, call: ChatCall, watch: ClientWatch) -> WholeAnswer | StreamAnswer:
        """Validate and answer ``call``; raises RouterError (with trace headers) when it cannot."""
        body = call.body
        validate_chat_request(body)
        candidates = self._selector.candidates(call.vendor, body.get("model"), "chat", required_capabilities(body))
        model = call.requested_model
        forwarded = Call(body, model, candidates, ChatExchange(model), call.stream, call.client)
        return self._forwarder.forward(forwarded, watch)
