"""Logging: one format for the whole process, the request id on every line, secrets redacted.

The request id lives in a context variable, which greenlets keep apart, so every line logged while
serving a request carries that request's id without passing it around. A log line is one line:
control characters that reach a message from outside (a path with %0A, a vendor's error text) are
written as escapes, so nobody can forge a line or drive a terminal through the router's logs.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time

import orjson

from app.redact import redact

__all__ = [
    "JSONFormatter",
    "TextFormatter",
    "answered_by_var",
    "budget_note_var",
    "configure_logging",
    "escape_controls",
    "request_id_var",
]

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# The attempt that answered a request (credential, share, vendor_ms), for the request's access
# line: one line per answered request, rather than an attempt line beside the access line.
answered_by_var: contextvars.ContextVar[dict[str, object] | None] = contextvars.ContextVar("answered_by", default=None)

# The output tokens a request's max tokens was lowered to because its budget had less left, for
# its access line (None: not lowered).
budget_note_var: contextvars.ContextVar[int | None] = contextvars.ContextVar("budget_note", default=None)

_TEXT_FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"
# C0 controls (CR, LF, ESC, ...), DEL, C1 controls (NEL, CSI, ...) and the Unicode line and
# paragraph separators: each ends or rewrites a line in some terminal, viewer or log reader.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# What JSON allows raw inside a string but line-splitting readers still break on.
_JSON_RAW_CONTROL = re.compile("[\x7f-\x9f\u2028\u2029]")
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED_ESCAPES.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def escape_controls(text: str) -> str:
    """``text`` on one line: every control character written as ``\\n``, ``\\x1b``, ``\\u2028``..."""
    return _CONTROL.sub(_escaped, text)


class _RequestContext(logging.Filter):
    """Adds the request id and redacts secrets from the message: the last line of defence."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        # Formatted once here: the formatter then finds the message ready.
        record.msg, record.args = redact(record.getMessage()), None
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
        # orjson escapes C0 controls; the others are valid raw in JSON, and written as \\u escapes here.
        return _JSON_RAW_CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", orjson.dumps(entry, default=str).decode())


class TextFormatter(logging.Formatter):
    """``time LEVEL [request id] logger: message``, the message on one line whatever it holds.

    A traceback (the router's own text, though it may quote outside text) follows on lines of its
    own, each indented: a line that starts at the left margin always starts a new record.
    """

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, self.datefmt)
        text = escape_controls(self.formatMessage(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        for block in (record.exc_text, record.stack_info and self.formatStack(record.stack_info)):
            if block:
                text += "".join("\n  " + escape_controls(line) for line in block.split("\n"))
        return text


def configure_logging(level: str, fmt: str) -> None:
    """Send the app's logs (and anything else on the root logger) to stdout in the chosen format."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_RequestContext())
    root = logging.getLogger()
    # Replace, not add: create_app may run more than once in a process (tests, reloads).
    for old in [h for h in root.handlers if getattr(h, "_router_handler", False)]:
        root.removeHandler(old)
    handler._router_handler = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # No record needs the caller's file and line, thread or multiprocessing names (the formats
    # above use none of them): logging's own switches to skip finding them, ~6 us per line, and
    # every request writes one. (gunicorn's text lines show the process id: that one is kept.)
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logMultiprocessing = False
    # urllib3 logs full URLs and, at DEBUG, headers: keep it at WARNING whatever the level.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
