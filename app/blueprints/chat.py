"""POST /v1/chat/completions[?vendor=X]: a whole JSON answer, or an SSE stream."""

from flask import Blueprint, Response, current_app

from app.blueprints.answering import answer, client_call

bp = Blueprint("chat", __name__)


@bp.post("/v1/chat/completions")
def chat_completions() -> Response:
    chat = current_app.extensions["router"].chat
    call = client_call()
    return answer(lambda watch: chat.answer(call, watch))
