"""What every endpoint that forwards to vendors shares: reading the call, watching the client,
shaping the answer.

A view reads its request with ``client_call`` and hands ``answer`` the service call; the client
watch, the 499 for a client that left while waiting, and the whole-JSON or SSE response are here.
"""

from collections.abc import Callable

from flask import Response, current_app, request

from app.calls import ClientCall
from app.clients import client_name
from app.disconnect import ClientWatch
from app.errors import ClientDisconnected
from app.forward import WholeAnswer
from app.http import read_json_body
from app.relay import StreamAnswer

__all__ = ["answer", "client_call", "client_watch"]

# nginx buffers proxied answers unless told not to; SSE must flow event by event.
_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def client_call() -> ClientCall:
    """This request as a service takes it: the JSON body, the ``?vendor=`` filter, the client's name."""
    return ClientCall(body=read_json_body(), vendor=request.args.get("vendor") or None, client=client_name())


def answer(service: Callable[[ClientWatch], WholeAnswer | StreamAnswer]) -> Response:
    """Run ``service`` with a watch on this request's client; its answer as a Response."""
    watch = client_watch(current_app.extensions["router"].settings.client_send_timeout)
    try:
        found = service(watch)
    except ClientDisconnected:
        # Nobody is left to read this; 499 is nginx's "client closed request", for the logs.
        return Response(status=499)
    if isinstance(found, WholeAnswer):
        return Response(found.body, 200, found.headers, mimetype="application/json")
    # The answer itself is the WSGI body (direct_passthrough): no werkzeug wrapper generators per
    # event. The server closes it however the stream ends, even if it never started iterating,
    # and closing it runs the response's own close hooks (the access log).
    response = Response(
        found,
        200,
        {**found.headers, **_STREAM_HEADERS},
        content_type="text/event-stream; charset=utf-8",
        direct_passthrough=True,
    )
    found.close_with(response.close)
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
