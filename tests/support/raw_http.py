"""Requests written byte by byte, for tests that speak HTTP to the router over a raw socket."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["json_post"]


def json_post(path: str, body: Any, headers: dict[str, str] | None = None, version: str = "HTTP/1.1") -> bytes:
    """The bytes of a POST of ``body`` as JSON to ``path``, with ``headers`` besides Host,
    Content-Type and Content-Length."""
    payload = json.dumps(body).encode()
    lines = [f"POST {path} {version}", "Host: router", "Content-Type: application/json"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    lines.append(f"Content-Length: {len(payload)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload
