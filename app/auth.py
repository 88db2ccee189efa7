"""Client keys: who may call the router, checked before any rate limit, validation or vendor call.

With ``ROUTER_API_KEYS`` set, every ``/v1/*`` request (and ``/metrics`` when
``METRICS_REQUIRE_KEY``) must carry ``Authorization: Bearer <key>``, which is what the OpenAI SDKs
send from their ``api_key``, or ``x-api-key: <key>``, where the Anthropic SDKs send theirs. The key
is compared in constant time against every configured key; the client it proves is known by its
configured name, and for rate limits by a hash of the key, never the key itself. An address that
failed the check too often (``AUTH_FAILURE_LIMIT``) is refused before its key is even looked at.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Mapping

from flask import Flask, request

from app.clients import Client, remember_client
from app.errors import AuthenticationFailed, RateLimited
from app.http import is_api_path
from app.limits import AuthFailureLimit, client_address
from app.settings import ClientKey, Settings

__all__ = ["ClientKeys", "install_client_auth", "presented_key"]

log = logging.getLogger(__name__)

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def _digest(key: bytes) -> bytes:
    # Comparing fixed-length digests, not the keys, keeps the comparison from revealing a key's
    # length; compare_digest already hides where two equal-length values differ.
    return hashlib.sha256(b"router-client-key\0" + key).digest()


class ClientKeys:
    """The configured client keys, kept only as digests, and the client each one proves."""

    def __init__(self, keys: tuple[ClientKey, ...]) -> None:
        self._digests = [_digest(client.key.encode()) for client in keys]
        # The identity is stored in the rate-limit backend (Redis), so it is a hash of the key,
        # and a different one from the digest compared above.
        self._clients = [
            Client(client.name, "key:" + hashlib.sha256(b"router-rate-limit\0" + client.key.encode()).hexdigest()[:32])
            for client in keys
        ]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def identify(self, presented: bytes) -> Client | None:
        """The client whose configured key equals ``presented``, or None; constant time per key."""
        given = _digest(presented)
        # Every configured key is compared, whichever matches: no early exit.
        matches = [hmac.compare_digest(given, digest) for digest in self._digests]
        return self._clients[matches.index(True)] if any(matches) else None


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request presents: ``Authorization: Bearer <key>``, else ``x-api-key: <key>``.

    x-api-key is where the Anthropic SDKs (and Claude Code with ANTHROPIC_API_KEY) send theirs; a
    bearer token wins when both are sent, as before x-api-key was read.
    """
    scheme, _, token = headers.get("Authorization", "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and token:
        return token
    return headers.get("x-api-key", "").strip() or None


def install_client_auth(app: Flask, settings: Settings) -> None:
    """Require a client key on the protected paths of ``app`` when keys are configured."""
    keys = ClientKeys(settings.api_keys)
    if not keys:
        log.warning(
            "ROUTER_API_KEYS is not set: the router is OPEN and anyone who can reach it can spend "
            "the vendor keys it holds; set ROUTER_API_KEYS or ROUTER_API_KEYS_FILE"
        )
        return
    failures = AuthFailureLimit(settings.auth_failure_limit, settings.rate_limit_storage)
    log.info(
        "client keys required on /v1/*%s (%d clients: %s); at most %s failed key checks per client address",
        " and /metrics" if settings.metrics_require_key else "",
        len(settings.api_keys),
        ", ".join(client.name for client in settings.api_keys),
        settings.auth_failure_limit,
    )

    def protected(path: str) -> bool:
        return is_api_path(path) or (settings.metrics_require_key and path == "/metrics")

    def check_key() -> None:
        # A CORS preflight never carries credentials (browsers strip them), and an OPTIONS answer
        # holds no data; requiring a key would only break browsers.
        if request.method == "OPTIONS" or not protected(request.path):
            return
        address = client_address()
        # Refused before the key is looked at: a guesser learns nothing, not even from a right guess.
        wait = failures.wait_seconds(address)
        if wait is not None:
            raise RateLimited(
                f"Too many failed API key checks from this address. Try again in {wait} s.",
                headers={"Retry-After": str(wait)},
            )
        presented = presented_key(request.headers)
        if presented is None:
            failures.failed(address)
            raise AuthenticationFailed(
                "Missing API key. Send it in the header 'Authorization: Bearer <key>' or 'x-api-key: <key>'.",
                headers=_CHALLENGE,
            )
        # Header values reach WSGI as latin-1 text; encoding back gives the bytes the client sent.
        client = keys.identify(presented.encode("latin-1", errors="replace"))
        if client is None:
            failures.failed(address)
            raise AuthenticationFailed("Incorrect API key provided.", headers=_CHALLENGE)
        remember_client(client)

    app.before_request(check_key)
