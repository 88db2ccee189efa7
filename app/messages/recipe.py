"""The Messages recipe: Anthropic's Messages API on any vendor's chat completions.

A Messages request is validated, translated onto a chat-completions request (tool names a vendor
would refuse are renamed, and named back in every answer), and goes through the same pipeline as
chat: failover, cooldown, deadlines, hedging, limits and metrics. The vendor's chat answer is
normalized as chat's is, then reshaped into a Message (whole) or Messages events (stream). Errors
on this endpoint's paths are Anthropic-shaped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from app.capabilities import required_capabilities
from app.catalog import Model, Vendor
from app.chat import ChatExchange, chat_completion
from app.endpoint import ClientRequest, limit_max_tokens
from app.errors import InvalidRequest
from app.messages.answer import to_message
from app.messages.count import estimate_input_tokens
from app.messages.errors import anthropic_error
from app.messages.request import Translated, for_model, to_chat_request
from app.messages.schema import validate_messages_request
from app.messages.stream import MessagesStream

__all__ = ["MESSAGES", "MessagesExchange", "MessagesRecipe", "count_tokens"]


@dataclass
class MessagesExchange(ChatExchange):
    """Chat completions on the vendor side; a Message or Messages events for the client."""

    translated: Translated | None = None
    input_tokens: int = 0  # the request's estimated input tokens, until a vendor reports usage
    _bodies: dict[str, bytes] = field(default_factory=dict)

    def vendor_body(self, model: Model, vendor: Vendor) -> bytes:
        """The chat body for ``model``: its max tokens within the model's limit, reasoning only where
        supported (the translation sends no optional field, so every vendor gets the same)."""
        body = self._bodies.get(model.id)
        if body is None:
            assert self.translated is not None
            chat = for_model(self.translated, model)
            if self.output_limit is not None:
                chat = limit_max_tokens(chat, self.output_limit)
            try:
                body = orjson.dumps(chat)
            except TypeError:
                raise InvalidRequest("The request body is nested too deeply (at most 254 levels).") from None
            self._bodies[model.id] = body
        return body

    def estimated_input_tokens(self) -> int:
        return self.input_tokens

    def translate(self, document: dict) -> bytes:
        assert self.translated is not None
        completion = chat_completion(document, self.requested_model)
        message = to_message(
            completion, self.requested_model, self.translated.tool_names, estimated_input_tokens=self.input_tokens
        )
        return orjson.dumps(message)

    def translator(self) -> MessagesStream:
        assert self.translated is not None
        return MessagesStream(self.requested_model, self.translated.tool_names, self.input_tokens)


class MessagesRecipe:
    """POST /v1/messages: Anthropic's Messages API, whole or streamed, on any vendor."""

    name = "messages"
    path = "/v1/messages"
    model_type = "chat"
    # Images and documents come from the client's messages, tools from its tools.
    fields = {"image": "messages", "video": "messages", "tools": "tools", "streaming": "stream"}
    error_shape = staticmethod(anthropic_error)

    def prepare(self, request: ClientRequest) -> MessagesExchange:
        body = request.body
        validate_messages_request(body)
        translated = to_chat_request(body)
        chat = translated.chat
        stream = chat.get("stream") is True
        return MessagesExchange(
            chat,
            request.requested_model,
            stream,
            required_capabilities(chat),
            translated=translated,
            input_tokens=estimate_input_tokens(chat),
        )


def count_tokens(body: dict) -> int:
    """The estimated input tokens of a Messages request (without ``max_tokens``), as translated for a vendor."""
    validate_messages_request(body, counting=True)
    return estimate_input_tokens(to_chat_request(body).chat)


MESSAGES = MessagesRecipe()
