"""POST /v1/embeddings[?vendor=X]: OpenAI embeddings from the configured embedding models."""

from flask import Blueprint, Response, current_app

from app.blueprints.answering import answer, client_call

bp = Blueprint("embeddings", __name__)


@bp.post("/v1/embeddings")
def create_embeddings() -> Response:
    embeddings = current_app.extensions["router"].embeddings
    call = client_call()
    return answer(lambda watch: embeddings.answer(call, watch))
