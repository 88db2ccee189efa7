"""The embeddings recipe: validate, forward the client's own JSON, name the requested model.

Embedding requests go only to models of type "embedding" (chat requests never do), through the
same pipeline as chat: failover, cooldown, deadlines, metrics and token counts. The client's JSON
reaches the vendor with only ``model`` replaced; the answer carries the requested model name.
Embeddings are never streamed.
"""

from __future__ import annotations

from typing import Any

import orjson

from app.budgets.tokens import text_tokens
from app.catalog import Vendor
from app.embeddings_schema import validate_embeddings_request
from app.endpoint import ClientRequest, Exchange, UnusableAnswer

__all__ = ["EMBEDDINGS", "EmbeddingsExchange", "EmbeddingsRecipe"]


class EmbeddingsExchange(Exchange):
    """The vendor's embeddings endpoint; its answer relayed with the requested model name."""

    def url(self, vendor: Vendor) -> str:
        return vendor.embeddings_url

    def estimated_input_tokens(self) -> int:
        """Each string at about 4 characters a token, each token list its length; at least 1."""
        items = self.body.get("input")
        if not isinstance(items, list) or (items and isinstance(items[0], int)):
            items = [items]
        tokens = 0
        for item in items:
            tokens += len(item) if isinstance(item, list) else text_tokens(len(item)) if isinstance(item, str) else 1
        return max(tokens, 1)

    def output_allowance(self) -> int:
        return 0  # embeddings are all input

    def translate(self, document: dict[str, Any]) -> bytes:
        if not isinstance(document.get("data"), list):
            raise UnusableAnswer("answered embeddings without a data list")
        return orjson.dumps({**document, "model": self.requested_model})


class EmbeddingsRecipe:
    """POST /v1/embeddings: OpenAI embeddings from the configured embedding models."""

    name = "embeddings"
    path = "/v1/embeddings"
    model_type = "embedding"
    fields: dict[str, str] = {}  # embedding models need no capabilities
    error_shape = None

    def prepare(self, request: ClientRequest) -> EmbeddingsExchange:
        validate_embeddings_request(request.body)
        return EmbeddingsExchange(request.body, request.requested_model)


EMBEDDINGS = EmbeddingsRecipe()
