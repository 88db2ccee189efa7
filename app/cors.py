"""CORS for browser clients of the API, off unless ``CORS_ORIGINS`` names who may call.

Only ``/v1/*`` is offered to browsers. Preflights are answered here, before the key check (a
browser never sends credentials on a preflight); the real request still needs its key. No
``Allow-Credentials``: the API authenticates with a bearer key, never with cookies.
"""

from __future__ import annotations

from flask import Flask, Response, request

from app.http import is_api_path

__all__ = ["install_cors"]

# What a browser script may read besides the body: request id, routing and rate-limit headers.
_EXPOSED = ", ".join(
    (
        "X-Request-ID",
        "X-Vendor-Source",
        "X-Model-Source",
        "X-Router-Attempts",
        "X-RateLimit-Limit",
        "X-RateLimit-Remaining",
        "X-RateLimit-Reset",
        "Retry-After",
    )
)
_METHODS = "GET, POST, OPTIONS"
# Browsers may cache a preflight answer this long (seconds); Chromium caps it at 7200.
_MAX_AGE = "600"


def install_cors(app: Flask, origins: tuple[str, ...]) -> None:
    """Answer preflights and mark answers readable for ``origins`` (``*`` = any); nothing if empty."""
    if not origins:
        return
    any_origin = "*" in origins
    allowed = frozenset(origin.rstrip("/").lower() for origin in origins)

    def allowed_origin() -> str | None:
        origin = request.headers.get("Origin")
        if not origin or not is_api_path(request.path):
            return None
        if any_origin:
            return "*"
        return origin if origin.lower() in allowed else None

    def preflight() -> Response | None:
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return None
        origin = allowed_origin()
        if origin is None:
            return None  # no CORS headers: the browser refuses the call
        response = Response(status=204)
        del response.headers["Content-Type"]
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Methods"] = _METHODS
        # The OpenAI JS SDK sends several x-stainless-* headers besides Authorization and
        # Content-Type; the router ignores unknown headers, so any requested one may come.
        requested = request.headers.get("Access-Control-Request-Headers")
        if requested:
            response.headers["Access-Control-Allow-Headers"] = requested
        response.headers["Access-Control-Max-Age"] = _MAX_AGE
        return response

    def mark(response: Response) -> Response:
        if not is_api_path(request.path):
            return response
        origin = allowed_origin()
        if origin is not None and "Access-Control-Allow-Origin" not in response.headers:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = _EXPOSED
        if not any_origin:
            # The answer depends on the Origin header: caches must not hand one origin's to another.
            response.vary.add("Origin")
        return response

    app.before_request(preflight)
    app.after_request(mark)
