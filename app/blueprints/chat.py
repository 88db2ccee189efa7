"""POST /v1/chat/completions[?vendor=X]: a whole JSON answer, or an SSE stream."""

from flask import Blueprint, Response, current_app, request

from app.chat import ChatCall, WholeAnswer
from app.clients import client_name
from app.disconnect import ClientWatch
from app.errors import ClientDisconnected
from app.http import read_json_body

bp = Blueprint("chat", __name__)

# nginx buffers proxied answers unless told not to; SSE must flow event by event.
_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@bp.post("/v1/chat/completions")
def chat_completions() -> Response:
    call = ChatCall(body=read_json_body(), vendor=request.args.get("vendor") or None, client=client_name())
    watch = ClientWatch(request.environ.get("gunicorn.socket"))
    try:
        answer = current_app.extensions["router"].chat.answer(call, watch)
    except ClientDisconnected:
        # Nobody is left to read this; 499 is nginx's "client closed request", for the logs.
        return Response(status=499)
    if isinstance(answer, WholeAnswer):
        return Response(answer.body, 200, answer.trace.headers(), mimetype="application/json")
    # The answer itself is the WSGI body (direct_passthrough): no werkzeug wrapper generators per
    # event. The server closes it however the stream ends, even if it never started iterating
    # (STACK.md rule 7), and closing it runs the response's own close hooks (the access log).
    response = Response(
        answer,
        200,
        {**answer.trace.headers(), **_STREAM_HEADERS},
        content_type="text/event-stream; charset=utf-8",
        direct_passthrough=True,
    )
    answer.close_with(response.close)
    return response
