"""The Responses service: validate -> translate onto chat -> resolve the candidates -> forward.

A Responses request becomes a chat-completions request for whichever vendor is chosen, and goes
through the same pipeline as chat (failover, cooldown, deadlines, hedging, metrics). Only the two
ends differ: the vendor's chat answer is normalized as chat's is, then reshaped into a response
object (whole) or Responses events (stream).
"""

from __future__ import annotations

from typing import Any

import orjson

from app.calls import ClientCall
from app.capabilities import required_capabilities
from app.catalog import Vendor
from app.chat import chat_completion
from app.disconnect import ClientWatch
from app.errors import InvalidRequest
from app.forward import Call, Forwarder, WholeAnswer
from app.relay import StreamAnswer
from app.responses.answer import to_response
from app.responses.request import to_chat_request
from app.responses.schema import validate_responses_request
from app.responses.stream import ResponsesStream
from app.selector import Selector

__all__ = ["ResponsesExchange", "ResponsesService"]


class ResponsesExchange:
    """Chat completions on the vendor side; a response object or Responses events for the client."""

    def __init__(self, request: dict[str, Any], requested_model: str) -> None:
        self._request = request
        self._model = requested_model

    def url(self, vendor: Vendor) -> str:
        return vendor.chat_url

    def answer(self, document: dict[str, Any]) -> bytes:
        completion = chat_completion(document, self._model)
        return orjson.dumps(to_response(completion, self._request, self._model))

    def translator(self) -> ResponsesStream:
        return ResponsesStream(self._request, self._model)


class ResponsesService:
    """Answers Responses API requests through the shared forwarding pipeline."""

    def __init__(self, selector: Selector, forwarder: Forwarder) -> None:
        self._selector = selector
        self._forwarder = forwarder

    def answer(self, call: ClientCall, watch: ClientWatch) -> WholeAnswer | StreamAnswer:
        """Validate, translate and answer ``call``; raises RouterError (with trace headers) when it cannot."""
        body = call.body
        validate_responses_request(body)
        chat = to_chat_request(body)
        try:
            candidates = self._selector.candidates(call.vendor, body.get("model"), "chat", required_capabilities(chat))
        except InvalidRequest as error:
            # A capability the chat messages need comes from the client's input items.
            if error.param == "messages":
                error.param = "input"
            raise
        model = call.requested_model
        forwarded = Call(chat, model, candidates, ResponsesExchange(body, model), call.stream, call.client)
        return self._forwarder.forward(forwarded, watch)
