"""The embeddings service: validate -> resolve the embedding models -> forward.

Embedding requests go only to models of type "embedding" (chat requests never do), through the
same pipeline as chat: failover, cooldown, deadlines, metrics and token counts. The client's JSON
reaches the vendor with only ``model`` replaced; the answer carries the requested model name.
"""

from __future__ import annotations

from typing import Any

import orjson

from app.calls import ClientCall
from app.catalog import Vendor
from app.disconnect import ClientWatch
from app.embeddings_schema import validate_embeddings_request
from app.forward import Call, Forwarder, UnusableAnswer, WholeAnswer
from app.relay import StreamAnswer, StreamTranslator
from app.selector import Selector

__all__ = ["EmbeddingsExchange", "EmbeddingsService"]


class EmbeddingsExchange:
    """The vendor's embeddings endpoint; its answer relayed with the requested model name."""

    def __init__(self, requested_model: str) -> None:
        self._model = requested_model

    def url(self, vendor: Vendor) -> str:
        return vendor.embeddings_url

    def answer(self, document: dict[str, Any]) -> bytes:
        if not isinstance(document.get("data"), list):
            raise UnusableAnswer("answered embeddings without a data list")
        return orjson.dumps({**document, "model": self._model})

    def translator(self) -> StreamTranslator:
        raise AssertionError("embeddings are never streamed")  # the service never asks for a stream


class EmbeddingsService:
    """Answers embeddings requests through the shared forwarding pipeline."""

    def __init__(self, selector: Selector, forwarder: Forwarder) -> None:
        self._selector = selector
        self._forwarder = forwarder

    def answer(self, call: ClientCall, watch: ClientWatch) -> WholeAnswer | StreamAnswer:
        """Validate and answer ``call``; raises RouterError (with trace headers) when it cannot."""
        body = call.body
        validate_embeddings_request(body)
        candidates = self._selector.candidates(call.vendor, body.get("model"), "embedding")
        model = call.requested_model
        forwarded = Call(body, model, candidates, EmbeddingsExchange(model), stream=False, client=call.client)
        return self._forwarder.forward(forwarded, watch)
