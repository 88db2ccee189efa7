"""POST /v1/embeddings[?vendor=X]: OpenAI embeddings from the configured embedding models."""

from flask import Blueprint, Response, current_app, request

from app.blueprints.answering import answer
from app.calls import ClientCall
from app.http import read_json_body

bp = Blueprint("embeddings", __name__)


@bp.post("/v1/embeddings")
def create_embeddings() -> Response:
    embeddings = current_app.extensions["router"].embeddings
    call = ClientCall(body=read_json_body(), vendor=request.args.get("vendor") or None)
    return answer(lambda watch: embeddings.answer(call, watch))
