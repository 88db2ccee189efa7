"""GET /v1/budget: the calling client's own budgets, spent and remaining in the current windows."""

import orjson
from flask import Blueprint, Response, current_app

from app.clients import client_name

bp = Blueprint("budget", __name__)


@bp.get("/v1/budget")
def budget() -> Response:
    """The budgets of the client whose key this request proved (only its own); none: an empty list."""
    budgets = current_app.extensions["router"].budgets
    client = client_name()
    rows = budgets.status(client) if budgets is not None else []
    return Response(orjson.dumps({"client": client, "budgets": rows}), mimetype="application/json")
