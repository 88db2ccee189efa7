"""GET /v1/models[?vendor=X] and GET /v1/models/<id>: the configured models, OpenAI's list form."""

from flask import Blueprint, current_app, request

from app.catalog import Catalog, Model
from app.errors import NotFound

bp = Blueprint("models", __name__)


@bp.get("/v1/models")
def list_models() -> dict:
    """Every configured model, or those of ``?vendor=``; an empty list (never null) if none match."""
    catalog: Catalog = current_app.extensions["router"].catalog
    vendor = request.args.get("vendor") or None
    return {
        "object": "list",
        "data": [_describe(model, catalog) for model in catalog.models if vendor in (None, model.vendor)],
    }


@bp.get("/v1/models/<path:model_id>")
def retrieve_model(model_id: str) -> dict:
    """One configured model (the first vendor's, if several offer the same id)."""
    catalog: Catalog = current_app.extensions["router"].catalog
    for model in catalog.models:
        if model.id == model_id:
            return _describe(model, catalog)
    raise NotFound(f"The model {model_id!r} is not configured.", param="model", code="model_not_found")


def _describe(model: Model, catalog: Catalog) -> dict:
    return {"id": model.id, "object": "model", "created": catalog.models_created, "owned_by": model.vendor}
