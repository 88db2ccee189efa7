"""GET /v1/responses/<id>: the router stores no responses, so there is nothing to retrieve (404).

POST /v1/responses is the Responses recipe's (app/responses/recipe.py), served by app/blueprints/endpoints.py.
"""

from flask import Blueprint, Response

from app.errors import NotFound

bp = Blueprint("stored_responses", __name__)


@bp.get("/v1/responses/<path:response_id>")
def retrieve_response(response_id: str) -> Response:
    """Nothing to retrieve: the router keeps no answers (every answer says ``"store": false``)."""
    raise NotFound(
        f"No response with id {response_id!r}: this router never stores responses. "
        "Keep the answer you were sent; to continue a conversation, send all of it again in input.",
        param="response_id",
    )
