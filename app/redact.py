"""Keeping secrets out of logs and error bodies: a last line of defence, not the first.

The router never puts a key into a message on purpose; this catches what slips through, such as
a vendor echoing a (partly masked) key in its error text, or a library logging a header.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

__all__ = ["redact", "register_secrets", "without_password"]

REDACTED = "[REDACTED]"

# Shapes of common API keys, including vendor-masked forms like "sk-proj-****abcd".
_KEY_SHAPES = re.compile(
    r"sk-[A-Za-z0-9_*\-]{6,}"  # OpenAI and most OpenAI-compatible vendors
    r"|AIza[0-9A-Za-z_\-]{20,}"  # Google API keys
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/=*\-]{6,}"  # any bearer token in a header dump
)
_known: set[str] = set()
_known_pattern: re.Pattern[str] | None = None


def register_secrets(values: Iterable[str]) -> None:
    """Remember exact secrets (vendor keys, client keys) so ``redact`` removes them wherever they appear."""
    global _known_pattern
    # Very short values would redact ordinary words; real keys are long.
    _known.update(value for value in values if len(value) >= 8)
    if _known:
        ordered = sorted(_known, key=len, reverse=True)
        _known_pattern = re.compile("|".join(re.escape(value) for value in ordered))


def redact(text: str) -> str:
    """``text`` with every known secret and anything shaped like a key replaced by [REDACTED]."""
    # Every log line passes through here: plain substring tests (C speed) decide whether the
    # regular expressions need to run at all, which for almost every line they do not.
    if _known_pattern is not None and any(secret in text for secret in _known):
        text = _known_pattern.sub(REDACTED, text)
    if "sk-" in text or "AIza" in text or "earer" in text or "EARER" in text:
        text = _KEY_SHAPES.sub(REDACTED, text)
    return text


def without_password(url: str) -> str:
    """``url`` with its password (if any) shown as ``***``, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()
