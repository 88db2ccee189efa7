"""gunicorn's own log lines (start, workers, timeouts) as JSON lines, when LOG_FORMAT=json.

With it every line the process writes is a JSON object, gunicorn's too, so a log shipper never
meets a line it cannot parse. The shape is the app's (app/logs.py), request id "-".
"""

from __future__ import annotations

import json
import logging
import time

from gunicorn.glogging import Logger

__all__ = ["JSONLogger"]


class JSONLines(logging.Formatter):
    """gunicorn's own lines (start, workers, timeouts) in the shape of the app's JSON lines."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": "-",
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


class JSONLogger(Logger):
    """gunicorn's logger with its usual handlers (stderr, GUNICORN_ACCESS_LOG), writing JSON lines."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(JSONLines())
