"""Who is calling: the configured client whose key this request proved, by name.

The name labels the access log line and the per-client metrics, and picks the client's own rate
limit. It is only ever a configured name, or ``anonymous`` when no key was proven (keys off, a
missing or wrong key, a preflight), so nothing a client sends can become a label value.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import g

from app.settings import ANONYMOUS_CLIENT

__all__ = ["Client", "client_name", "current_client", "remember_client"]


@dataclass(frozen=True)
class Client:
    """A client that proved its key: its configured name and its rate-limit identity (a hash of the key)."""

    name: str
    identity: str


def remember_client(client: Client) -> None:
    """Record that this request proved ``client``'s key."""
    g.router_client = client


def current_client() -> Client | None:
    """The client whose key this request proved, or None."""
    return g.get("router_client")


def client_name() -> str:
    """The name of the client whose key this request proved, else ``anonymous``."""
    client = current_client()
    return client.name if client is not None else ANONYMOUS_CLIENT
