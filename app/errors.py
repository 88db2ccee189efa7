"""Every error the router answers, as exceptions that know their OpenAI JSON and HTTP status.

The body is always ``{"error": {"message", "type", "param", "code"}}``, the shape the OpenAI SDKs
parse, so a client sees the same kind of error whether the router or the vendor refused it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthenticationFailed",
    "ClientBodyTimeout",
    "ClientDisconnected",
    "InvalidRequest",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RequestTimeout",
    "RouterError",
    "ServiceUnavailable",
    "UnsupportedMediaType",
    "UpstreamError",
    "UpstreamTimeout",
    "VendorError",
    "error_body",
]


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The one OpenAI error object every error answer is made of."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class RouterError(Exception):
    """An error answered to the client with ``status`` and an OpenAI error body."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


class InvalidRequest(RouterError):
    """The client's request is malformed or names something that cannot be served."""

    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(RouterError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class NotFound(RouterError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(RouterError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLarge(RouterError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UnsupportedMediaType(RouterError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class RateLimited(RouterError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class ServiceUnavailable(RouterError):
    """The router cannot serve the request as configured (e.g. no credentials for a vendor)."""

    status = 503
    type = "service_unavailable"
    code = "service_unavailable"


class UpstreamError(RouterError):
    """A vendor could not be reached or broke the protocol; says which vendor and model."""

    status = 502
    type = "upstream_error"
    code = "bad_gateway"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class ClientBodyTimeout(RouterError):
    """The client did not send its whole request body within CLIENT_BODY_TIMEOUT."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class RequestTimeout(RouterError):
    """REQUEST_TIMEOUT ran out before any attempt answered."""

    status = 504
    type = "timeout_error"
    code = "request_timeout"


class VendorError(RouterError):
    """A vendor answered with an error status: the client gets that status and error."""

    def __init__(self, status: int, error: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        super().__init__(str(error.get("message", "")), headers=headers)
        self.status = status
        self.error = error

    def body(self) -> dict[str, Any]:
        return {"error": self.error}


class ClientDisconnected(Exception):
    """The client closed its connection while the router was still working for it."""
