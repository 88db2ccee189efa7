"""Client keys: who may call the router, checked before any rate limit, validation or vendor call.

With ``ROUTER_API_KEYS`` set, every ``/v1/*`` request (and ``/metrics`` when
``METRICS_REQUIRE_KEY``) must carry ``Authorization: Bearer <key>``, which is what the OpenAI SDKs
send from their ``api_key``. The key is compared in constant time against every configured key;
the client's identity for rate limits is a hash of the key it proved, never the key itself.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

from flask import Flask, g, request

from app.errors import AuthenticationFailed
from app.http import is_api_path
from app.settings import Settings

__all__ = ["ClientKeys", "client_identity", "install_client_auth"]

log = logging.getLogger(__name__)

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def _digest(key: bytes) -> bytes:
    # Comparing fixed-length digests, not the keys, keeps the comparison from revealing a key's
    # length; compare_digest already hides where two equal-length values differ.
    return hashlib.sha256(b"router-client-key\0" + key).digest()


class ClientKeys:
    """The configured client keys, kept only as digests, and the rate-limit identity of each."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._digests = [_digest(key.encode()) for key in keys]
        # The identity is stored in the rate-limit backend (Redis), so it is a hash of the key,
        # and a different one from the digest compared above.
        self._identities = [
            "key:" + hashlib.sha256(b"router-rate-limit\0" + key.encode()).hexdigest()[:32] for key in keys
        ]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def identify(self, presented: bytes) -> str | None:
        """The identity of the configured key equal to ``presented``, or None; constant time per key."""
        given = _digest(presented)
        # Every configured key is compared, whichever matches: no early exit.
        matches = [hmac.compare_digest(given, digest) for digest in self._digests]
        return self._identities[matches.index(True)] if any(matches) else None


def install_client_auth(app: Flask, settings: Settings) -> None:
    """Require a client key on the protected paths of ``app`` when keys are configured."""
    keys = ClientKeys(settings.api_keys)
    if not keys:
        log.warning(
            "ROUTER_API_KEYS is not set: the router is OPEN and anyone who can reach it can spend "
            "the vendor keys it holds; set ROUTER_API_KEYS or ROUTER_API_KEYS_FILE"
        )
        return
    log.info(
        "client keys required on /v1/*%s (%d keys)",
        " and /metrics" if settings.metrics_require_key else "",
        len(settings.api_keys),
    )

    def protected(path: str) -> bool:
        return is_api_path(path) or (settings.metrics_require_key and path == "/metrics")

    def check_key() -> None:
        # A CORS preflight never carries credentials (browsers strip them), and an OPTIONS answer
        # holds no data; requiring a key would only break browsers.
        if request.method == "OPTIONS" or not protected(request.path):
            return
        scheme, _, presented = request.headers.get("Authorization", "").strip().partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            raise AuthenticationFailed(
                "Missing API key. Send it in the header 'Authorization: Bearer <key>'.", headers=_CHALLENGE
            )
        # Header values reach WSGI as latin-1 text; encoding back gives the bytes the client sent.
        identity = keys.identify(presented.encode("latin-1", errors="replace"))
        if identity is None:
            raise AuthenticationFailed("Incorrect API key provided.", headers=_CHALLENGE)
        g.client_identity = identity

    app.before_request(check_key)


def client_identity() -> str:
    """Who is calling: the hash of the proven client key, else the client's address."""
    identity = g.get("client_identity")
    if identity:
        return identity
    # Behind trusted proxies ProxyFix has already put the real client address here.
    return "ip:" + (request.remote_addr or "unknown")
