"""POST /v1/chat/completions[?vendor=X]: a whole JSON answer, or an SSE stream."""

from flask import Blueprint, Response, current_app, request

from app.blueprints.answering import answer
from app.calls import ClientCall
from app.http import read_json_body

bp = Blueprint("chat", __name__)


@bp.post("/v1/chat/completions")
def chat_completions() -> Response:
    chat = current_app.extensions["router"].chat
    call = ClientCall(body=read_json_body(), vendor=request.args.get("vendor") or None)
    return answer(lambda watch: chat.answer(call, watch))
