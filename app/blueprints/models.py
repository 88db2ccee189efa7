"""GET /v1/models[?vendor=X] and GET /v1/models/<id>: configured models and aliases.

OpenAI's list form by default; Anthropic's when the request carries ``anthropic-version`` or
``x-api-key`` (the Anthropic SDKs and Claude Code send one or both), because those clients read
``type``/``display_name``/``created_at`` and the list's ``has_more``/``first_id``/``last_id``.
"""

from datetime import UTC, datetime

from flask import Blueprint, current_app, request

from app.catalog import Catalog, Model
from app.errors import NotFound

bp = Blueprint("models", __name__)

# The owner shown for an alias: a name the router resolves, not one any vendor knows.
ALIAS_OWNER = "router"


@bp.get("/v1/models")
def list_models() -> dict:
    """Every configured model (chat and embedding), then every alias; with ``?vendor=``, those of
    that vendor and the aliases with a model of it. An empty list (never null) if none match."""
    catalog: Catalog = current_app.extensions["router"].catalog
    vendor = request.args.get("vendor") or None
    models = [model for model in catalog.models if vendor in (None, model.vendor)]
    aliases = [
        alias
        for alias, group in catalog.aliases.items()
        if vendor is None or any(model.vendor == vendor for model in group)
    ]
    if _wants_anthropic_shape():
        # Only what /v1/messages can answer with: embedding models (and their aliases) cannot.
        ids = [model.id for model in models if model.type == "chat"]
        ids += [alias for alias in aliases if catalog.aliases[alias][0].type == "chat"]
        data = [_describe_anthropic(name, catalog) for name in ids]
        return {
            "data": data,
            "has_more": False,
            "first_id": ids[0] if ids else None,
            "last_id": ids[-1] if ids else None,
        }
    described = [_describe(model, catalog) for model in models]
    return {"object": "list", "data": described + [_describe_alias(alias, catalog) for alias in aliases]}


@bp.get("/v1/models/<path:model_id>")
def retrieve_model(model_id: str) -> dict:
    """One configured model (the first vendor's, if several offer the same id), or an alias."""
    catalog: Catalog = current_app.extensions["router"].catalog
    anthropic = _wants_anthropic_shape()
    for model in catalog.models:
        if model.id == model_id:
            return _describe_anthropic(model_id, catalog) if anthropic else _describe(model, catalog)
    if model_id in catalog.aliases:
        return _describe_anthropic(model_id, catalog) if anthropic else _describe_alias(model_id, catalog)
    raise NotFound(f"The model {model_id!r} is not configured.", param="model", code="model_not_found")


def _wants_anthropic_shape() -> bool:
    return "anthropic-version" in request.headers or "x-api-key" in request.headers


def _describe(model: Model, catalog: Catalog) -> dict:
    return {"id": model.id, "object": "model", "created": catalog.models_created, "owned_by": model.vendor}


def _describe_alias(alias: str, catalog: Catalog) -> dict:
    return {"id": alias, "object": "model", "created": catalog.models_created, "owned_by": ALIAS_OWNER}


def _describe_anthropic(name: str, catalog: Catalog) -> dict:
    created = datetime.fromtimestamp(catalog.models_created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"type": "model", "id": name, "display_name": name, "created_at": created}
