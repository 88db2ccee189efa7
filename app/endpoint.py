"""An endpoint is a recipe; one generic service answers every recipe through the one pipeline.

A recipe holds what is particular to one API the router speaks:

- ``path`` and ``name``: where it is served, and the word logs and metrics use for it;
- ``model_type``: which configured models may answer ("chat" or "embedding");
- ``fields``: the client's field that asks for each capability, so that "no model supports
  images" names the field this API's clients send (``messages``, ``input``, ...);
- ``prepare``: validate a client body (raising InvalidRequest naming the field) and turn it into
  an ``Exchange``: the vendor request, and how the vendor's answers come back;
- ``error_shape``: how the router's errors look on this path (None: OpenAI's shape).

Everything else (candidates, failover, hedging, deadlines, relaying, metrics) is the same for all:
``Endpoint.serve`` resolves the candidates and hands the exchange to the forwarder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from app.catalog import OPTIONAL_FIELDS, Model, Vendor
from app.disconnect import ClientWatch
from app.errors import InvalidRequest, RouterError
from app.settings import ANONYMOUS_CLIENT

if TYPE_CHECKING:
    from app.forward import Forwarder, WholeAnswer
    from app.relay import StreamAnswer, StreamTranslator
    from app.selector import Selector

__all__ = [
    "DEFAULT_MODEL_NAME",
    "ClientRequest",
    "Endpoint",
    "ErrorShape",
    "Exchange",
    "Recipe",
    "UnusableAnswer",
]

# A client that names no model gets the router's choice, reported under this name.
DEFAULT_MODEL_NAME = "any-model"

# The router's error -> (status, JSON body, headers) on one endpoint's path, given the request id.
ErrorShape = Callable[[RouterError, str], tuple[int, dict[str, Any], dict[str, str]]]


class UnusableAnswer(Exception):
    """A vendor's 2xx answer that is not an answer (e.g. a completion without choices)."""


@dataclass(frozen=True)
class ClientRequest:
    """One client request as a view hands it over: the parsed JSON body, ``?vendor=``, the client's
    name and the session its headers name."""

    body: dict[str, Any]
    vendor: str | None = None
    client: str = ANONYMOUS_CLIENT  # the configured name of the client whose key was proven
    session: str | None = None  # X-Claude-Code-Session-Id or X-Session-Id, as sent

    @property
    def affinity_key(self) -> str | None:
        """The session this request belongs to for routing: its session header, else the body's
        ``prompt_cache_key`` (chat, Responses); None for a request that names none."""
        if self.session:
            return self.session
        key = self.body.get("prompt_cache_key")
        return key if isinstance(key, str) and key else None

    @property
    def requested_model(self) -> str:
        model = self.body.get("model")
        return model if isinstance(model, str) and model else DEFAULT_MODEL_NAME


@dataclass
class Exchange:
    """A client request on its way to vendors and back: the vendor body, and how answers return.

    The base forwards ``body`` to the vendor's chat completions with only the model replaced and
    leaves answers to subclasses: ``translate`` for a whole answer, ``translator`` for a stream.
    """

    body: dict[str, Any]  # the vendor request, before a model is chosen
    requested_model: str  # the name every answer carries
    stream: bool = False
    needs: frozenset[str] = field(default_factory=frozenset)  # capabilities (app.capabilities)

    def url(self, vendor: Vendor) -> str:
        """Where the vendor serves this exchange."""
        return vendor.chat_url

    def vendor_body(self, model: Model, vendor: Vendor) -> bytes:
        """The JSON sent when ``model`` of ``vendor`` is chosen: the body with the model replaced,
        without the optional fields (e.g. ``prompt_cache_key``) the vendor does not accept."""
        body = {**self.body, "model": model.id}
        for name in OPTIONAL_FIELDS - vendor.accepts:
            body.pop(name, None)
        try:
            return orjson.dumps(body)
        except TypeError:
            # orjson reads 1024 levels of nesting but writes only 254: the client's body is at fault.
            raise InvalidRequest("The request body is nested too deeply (at most 254 levels).") from None

    def translate(self, document: dict[str, Any]) -> bytes:
        """The client's body for a vendor's whole answer; raises UnusableAnswer if there is none."""
        raise NotImplementedError

    def translator(self) -> StreamTranslator:
        """A fresh StreamTranslator (app.relay) for one stream; only streaming exchanges have one."""
        raise NotImplementedError


class Recipe(Protocol):
    """What one API the router speaks adds to the shared pipeline (see the module docstring)."""

    name: str
    path: str
    model_type: str
    fields: Mapping[str, str]
    error_shape: ErrorShape | None

    def prepare(self, request: ClientRequest) -> Exchange:
        """Validate ``request`` and make its exchange; raises InvalidRequest naming the bad field."""


class Endpoint:
    """Serves one recipe: prepare -> resolve the candidates -> forward."""

    def __init__(self, recipe: Recipe, selector: Selector, forwarder: Forwarder) -> None:
        self.recipe = recipe
        self._selector = selector
        self._forwarder = forwarder

    def serve(self, request: ClientRequest, watch: ClientWatch) -> WholeAnswer | StreamAnswer:
        """The answer (WholeAnswer or StreamAnswer) to ``request``; raises RouterError when there is none."""
        recipe = self.recipe
        exchange = recipe.prepare(request)
        model = request.body.get("model")
        candidates = self._selector.candidates(request.vendor, model, recipe.model_type, exchange.needs, recipe.fields)
        return self._forwarder.forward(exchange, candidates, request.client, watch, request.affinity_key)
