"""GET /health: the process is up and serving."""

from flask import Blueprint, Response

bp = Blueprint("health", __name__)


@bp.get("/health")
def health() -> Response:
    """200 OK while the worker can serve; it touches no vendor, so it stays cheap and honest."""
    return Response("OK", mimetype="text/plain")
