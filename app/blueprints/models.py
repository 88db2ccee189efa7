"""GET /v1/models[?vendor=X] and GET /v1/models/<id>: configured models and aliases, OpenAI's list form."""

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
    models = [_describe(model, catalog) for model in catalog.models if vendor in (None, model.vendor)]
    aliases = [
        _describe_alias(alias, catalog)
        for alias, group in catalog.aliases.items()
        if vendor is None or any(model.vendor == vendor for model in group)
    ]
    return {"object": "list", "data": models + aliases}


@bp.get("/v1/models/<path:model_id>")
def retrieve_model(model_id: str) -> dict:
    """One configured model (the first vendor's, if several offer the same id), or an alias."""
    catalog: Catalog = current_app.extensions["router"].catalog
    for model in catalog.models:
        if model.id == model_id:
            return _describe(model, catalog)
    if model_id in catalog.aliases:
        return _describe_alias(model_id, catalog)
    raise NotFound(f"The model {model_id!r} is not configured.", param="model", code="model_not_found")


def _describe(model: Model, catalog: Catalog) -> dict:
    return {"id": model.id, "object": "model", "created": catalog.models_created, "owned_by": model.vendor}


def _describe_alias(alias: str, catalog: Catalog) -> dict:
    return {"id": alias, "object": "model", "created": catalog.models_created, "owned_by": ALIAS_OWNER}
