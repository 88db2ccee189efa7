"""The Responses recipe: validate -> translate onto chat -> a response object or Responses events.

A Responses request becomes a chat-completions request for whichever vendor is chosen, and goes
through the same pipeline as chat (failover, cooldown, deadlines, hedging, metrics). Only the two
ends differ: the vendor's chat answer is normalized as chat's is, then reshaped into a response
object (whole) or Responses events (stream).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from app.capabilities import required_capabilities
from app.chat import ChatExchange, chat_completion
from app.endpoint import ClientRequest
from app.responses.answer import to_response
from app.responses.request import to_chat_request
from app.responses.schema import validate_responses_request
from app.responses.stream import ResponsesStream

__all__ = ["RESPONSES", "ResponsesExchange", "ResponsesRecipe"]


@dataclass
class ResponsesExchange(ChatExchange):
    """Chat completions on the vendor side; a response object or Responses events for the client."""

    request: dict[str, Any] = field(default_factory=dict)  # the client's Responses request, echoed back

    def translate(self, document: dict[str, Any]) -> bytes:
        completion = chat_completion(document, self.requested_model)
        return orjson.dumps(to_response(completion, self.request, self.requested_model))

    def translator(self) -> ResponsesStream:
        return ResponsesStream(self.request, self.requested_model)


class ResponsesRecipe:
    """POST /v1/responses: the Responses API, stateless, on any vendor's chat completions."""

    name = "responses"
    path = "/v1/responses"
    model_type = "chat"
    # Images and video come from the client's input items, tools from its tools.
    fields = {"image": "input", "video": "input", "tools": "tools", "streaming": "stream"}
    error_shape = None

    def prepare(self, request: ClientRequest) -> ResponsesExchange:
        body = request.body
        validate_responses_request(body)
        chat = to_chat_request(body)
        stream = body.get("stream") is True
        return ResponsesExchange(chat, request.requested_model, stream, required_capabilities(chat), body)


RESPONSES = ResponsesRecipe()
