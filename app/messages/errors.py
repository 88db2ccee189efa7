"""Any router error as the Anthropic API answers errors: a status and
``{"type": "error", "error": {"type", "message"}, "request_id"}``.

| router error                                          | status | error type            |
|-------------------------------------------------------|--------|-----------------------|
| 400 (and other 4xx not listed here)                   | same   | invalid_request_error |
| 401                                                   | 401    | authentication_error  |
| 403                                                   | 403    | permission_error      |
| 404                                                   | 404    | not_found_error       |
| 413                                                   | 413    | request_too_large     |
| 429 (the router's or a vendor's)                      | 429    | rate_limit_error      |
| 500 from the router itself                            | 500    | api_error             |
| 502 / 503 from the router (no combination answered,   | 529    | overloaded_error      |
| all cooling), or a vendor's 5xx or 529                |        |                       |
| 504 (the router's timeouts)                           | 504    | timeout_error         |

429 and 529 always carry ``retry-after``: the error's own Retry-After when it has one, else
``DEFAULT_RETRY_AFTER`` seconds. The SDKs and Claude Code retry both (and 5xx) by themselves, and
529 is what they expect when "the API is overloaded": every combination failing is that, seen from
the client. A vendor's error keeps its message (already redacted by the normalizer).
"""

from __future__ import annotations

from typing import Any

from app.errors import RouterError, VendorError

__all__ = ["DEFAULT_RETRY_AFTER", "anthropic_error", "error_object", "stream_error_type"]

# Seconds a client is told to wait before retrying a 429 or 529 that named no time: long enough
# for a cooling combination to come back or a burst to pass, short enough not to stall an agent.
DEFAULT_RETRY_AFTER = 5
OVERLOADED_STATUS = 529
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    OVERLOADED_STATUS: "overloaded_error",
}


def anthropic_error(error: RouterError, request_id: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    """The status, body and headers answering ``error`` on an Anthropic endpoint."""
    status = _status(error)
    headers = {name: value for name, value in error.headers.items() if name.lower() != "retry-after"}
    if status in (429, OVERLOADED_STATUS):
        headers["retry-after"] = _retry_after(error)
    body = {"type": "error", "error": error_object(error, status), "request_id": request_id}
    return status, body, headers


def error_object(error: RouterError, status: int | None = None) -> dict[str, str]:
    """The inner ``{"type", "message"}`` of ``error``'s Anthropic error."""
    status = _status(error) if status is None else status
    kind = _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": kind, "message": _message(error)}


def stream_error_type(error: RouterError) -> str:
    """The error type ending a stream that broke after its first event: overloaded_error when a
    retry may well succeed (the vendor failed, was rate limited or timed out), else api_error."""
    if error.code == "budget_exceeded":
        return "rate_limit_error"  # as the refusal of a call on a spent budget: not the vendor's trouble
    status = _status(error)
    return "overloaded_error" if status in (429, 504, OVERLOADED_STATUS) else "api_error"


def _status(error: RouterError) -> int:
    status = error.status
    if isinstance(error, VendorError):
        return OVERLOADED_STATUS if status >= 500 else status
    if status in (502, 503):
        return OVERLOADED_STATUS
    return status


def _message(error: RouterError) -> str:
    if isinstance(error, VendorError):
        message = error.error.get("message")
        if isinstance(message, str) and message:
            return message
    return error.message or "The router could not answer the request."


def _retry_after(error: RouterError) -> str:
    for name, value in error.headers.items():
        if name.lower() == "retry-after" and value.strip():
            return value.strip()
    return str(DEFAULT_RETRY_AFTER)
