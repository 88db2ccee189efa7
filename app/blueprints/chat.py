"""POST /v1/chat/completions[?vendor=X]: a whole JSON answer, or an SSE stream."""

from flask import Blueprint, Response, current_app, request

from app.chat import ChatCall
from app.disconnect import ClientWatch
from app.errors import ClientDisconnected
from app.forward import WholeAnswer
from app.http import read_json_body

bp = Blueprint("chat", __name__)

# nginx buffers proxied answers unless told not to; SSE must flow event by event.
_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@bp.post("/v1/chat/completions")
def chat_completions() -> Response:
    router = current_app.extensions["router"]
    call = ChatCall(body=read_json_body(), vendor=request.args.get("vendor") or None)
    watch = client_watch(router.settings.client_send_timeout)
    try:
        answer = router.chat.answer(call, watch)
    except ClientDisconnected:
        # Nobody is left to read this; 499 is nginx's "client closed request", for the logs.
        return Response(status=499)
    if isinstance(answer, WholeAnswer):
        return Response(answer.body, 200, answer.headers, mimetype="application/json")
    # The answer itself is the WSGI body (direct_passthrough): no werkzeug wrapper generators per
    # event. The server closes it however the stream ends, even if it never started iterating,
    # and closing it runs the response's own close hooks (the access log).
    response = Response(
        answer,
        200,
        {**answer.headers, **_STREAM_HEADERS},
        content_type="text/event-stream; charset=utf-8",
        direct_passthrough=True,
    )
    answer.close_with(response.close)
    return response


def client_watch(send_timeout: float) -> ClientWatch:
    """A watch on this request's client connection, with its writes bounded by ``send_timeout``."""
    environ = request.environ
    # Only a client that announced it sends nothing more may half-close and still wait.
    closing = environ.get("SERVER_PROTOCOL") == "HTTP/1.0" or "close" in request.headers.get("Connection", "").lower()
    keep_alive = "keep-alive" in request.headers.get("Connection", "").lower()
    watch = ClientWatch(environ.get("gunicorn.socket"), may_half_close=closing and not keep_alive)
    watch.limit_sends(send_timeout)
    return watch
