"""GET /openapi.json: the OpenAPI 3 description of the router's endpoints (app/openapi.json)."""

from pathlib import Path

from flask import Blueprint, Response

bp = Blueprint("openapi", __name__)

# Read once per worker: a static file that changes only with the code.
_DOCUMENT = (Path(__file__).resolve().parent.parent / "openapi.json").read_bytes()


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI document, as stored: importable into Postman, Swagger UI and code generators."""
    return Response(_DOCUMENT, mimetype="application/json")
