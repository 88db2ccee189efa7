"""The one view every recipe is served by: read the request, serve it, shape the answer.

``endpoint_blueprint(recipe)`` makes a recipe's blueprint: a POST view that reads the JSON body,
``?vendor=`` and the client's name, has the recipe's Endpoint serve it while watching the client,
and answers whole JSON or an SSE stream (or 499 for a client that left while waiting).
"""

from flask import Blueprint, Response, current_app, request
from werkzeug.datastructures import Headers

from app.attempt import WholeAnswer
from app.clients import client_name
from app.disconnect import ClientWatch
from app.endpoint import ClientRequest, Endpoint, Recipe
from app.errors import ClientDisconnected
from app.http import SESSION_HEADERS, read_json_body

__all__ = ["client_watch", "endpoint_blueprint"]

# nginx buffers proxied answers unless told not to; SSE must flow event by event.
_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def endpoint_blueprint(recipe: Recipe) -> Blueprint:
    """A blueprint serving ``recipe`` at ``POST recipe.path``."""
    bp = Blueprint(recipe.name, __name__)

    def serve() -> Response:
        router = current_app.extensions["router"]
        client_request = ClientRequest(
            read_json_body(), request.args.get("vendor") or None, client_name(), _session(request.headers)
        )
        return _respond(router.endpoints[recipe.name], client_request, router.settings.client_send_timeout)

    serve.__doc__ = recipe.__doc__
    bp.add_url_rule(recipe.path, "serve", serve, methods=["POST"])
    return bp


def _session(headers: Headers) -> str | None:
    """The session a request's headers name, if any (the first of SESSION_HEADERS present)."""
    for name in SESSION_HEADERS:
        value = headers.get(name)
        if value:
            return value
    return None


def _respond(endpoint: Endpoint, client_request: ClientRequest, send_timeout: float) -> Response:
    """Serve ``client_request`` with a watch on this request's client; the answer as a Response."""
    watch = client_watch(send_timeout)
    try:
        found = endpoint.serve(client_request, watch)
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
