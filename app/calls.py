"""One client request to an answering endpoint, as its blueprint hands it to the service."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.settings import ANONYMOUS_CLIENT

__all__ = ["DEFAULT_MODEL_NAME", "ClientCall"]

# A client that names no model gets the router's choice, reported under this name.
DEFAULT_MODEL_NAME = "any-model"


@dataclass(frozen=True)
class ClientCall:
    """One client request: its parsed JSON body and the ``?vendor=`` filter."""

    body: dict[str, Any]
    vendor: str | None = None
    client: str = ANONYMOUS_CLIENT  # the configured name of the client whose key was proven

    @property
    def requested_model(self) -> str:
        model = self.body.get("model")
        return model if isinstance(model, str) and model else DEFAULT_MODEL_NAME

    @property
    def stream(self) -> bool:
        return self.body.get("stream") is True
