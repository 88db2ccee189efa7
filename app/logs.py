"""Logging: one format for the whole process, the request id on every line, secrets redacted.

The request id lives in a context variable, which greenlets keep apart, so every line logged while
serving a request carries that request's id without passing it around.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time

import orjson

from app.redact import redact

__all__ = ["configure_logging", "request_id_var"]

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

_TEXT_FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"


class _RequestContext(logging.Filter):
    """Adds the request id and redacts secrets from the message: the last line of defence."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            # Tracebacks can quote a header or URL: format once, then redact the text.
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, request_id, message, and any ``extra`` fields."""

    _STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id"}

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in self._STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_text:
            entry["exception"] = record.exc_text
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str, fmt: str) -> None:
    """Send the app's logs (and anything else on the root logger) to stdout in the chosen format."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JSONFormatter() if fmt == "json" else logging.Formatter(_TEXT_FORMAT))
    handler.addFilter(_RequestContext())
    root = logging.getLogger()
    # Replace, not add: create_app may run more than once in a process (tests, reloads).
    for old in [h for h in root.handlers if getattr(h, "_router_handler", False)]:
        root.removeHandler(old)
    handler._router_handler = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # urllib3 logs full URLs and, at DEBUG, headers: keep it at WARNING whatever the level.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
