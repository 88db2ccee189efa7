"""POST /v1/responses[?vendor=X]: the Responses API, whole or streamed; GET of a stored response: 404."""

from flask import Blueprint, Response, current_app

from app.blueprints.answering import answer, client_call
from app.errors import NotFound

bp = Blueprint("responses", __name__)


@bp.post("/v1/responses")
def create_response() -> Response:
    responses = current_app.extensions["router"].responses
    call = client_call()
    return answer(lambda watch: responses.answer(call, watch))


@bp.get("/v1/responses/<path:response_id>")
def retrieve_response(response_id: str) -> Response:
    """Nothing to retrieve: the router keeps no answers (every answer says ``"store": false``)."""
    raise NotFound(
        f"No response with id {response_id!r}: this router never stores responses. "
        "Keep the answer you were sent; to continue a conversation, send all of it again in input.",
        param="response_id",
    )
