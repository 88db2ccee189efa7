"""The router's settings: one frozen object built from the environment.

Every variable the router reads is read here and documented here, through one reader
(app/environment.py), except those named by the config files themselves (``${NAME}`` values and
``<VENDOR>_BASE_URL``, read by ``catalog``). ``ServerSettings`` are the few gunicorn.conf.py needs
in the master before any worker forks; ``Settings`` (the app's) include the ones both share.
Config files (models, credentials, vendors) are paths here; their contents belong to ``catalog``.
Longer than most modules on purpose: every variable, its default and its reason in one place.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from app.budgets.limits import BudgetLimit, budget_variable, parse_budget
from app.environment import EnvironmentReader, SettingsError

__all__ = ["ANONYMOUS_CLIENT", "ClientKey", "ServerSettings", "Settings", "SettingsError", "rate_limit_variable"]

# What a request that proved no client key is called in logs and metrics (with keys off: everyone).
ANONYMOUS_CLIENT = "anonymous"


@dataclass(frozen=True)
class ServerSettings:
    """gunicorn's settings (read in gunicorn.conf.py, where each is explained), and the log
    settings the app shares with it."""

    port: int = 8082  # all interfaces, so nginx or a container runtime can reach it
    workers: int = 0  # WEB_CONCURRENCY; 0: one per CPU
    worker_connections: int = 1000
    timeout: int = 30
    graceful_timeout: int = 120
    keepalive: int = 5
    balance_connections: bool = True
    balance_accept_wait: float = 0.1
    access_log: str | None = None
    log_level: str = "info"
    log_format: str = "text"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerSettings:
        """Read the server's variables, falling back to the defaults above."""
        reader = EnvironmentReader(os.environ if environ is None else environ)
        return cls(
            port=reader.integer("PORT", cls.port, minimum=1),
            workers=reader.integer("WEB_CONCURRENCY", cls.workers, minimum=1),
            worker_connections=reader.integer("WORKER_CONNECTIONS", cls.worker_connections, minimum=1),
            timeout=reader.integer("GUNICORN_TIMEOUT", cls.timeout, minimum=0),
            graceful_timeout=reader.integer("GRACEFUL_TIMEOUT", cls.graceful_timeout, minimum=0),
            keepalive=reader.integer("KEEPALIVE", cls.keepalive, minimum=0),
            balance_connections=reader.boolean("BALANCE_CONNECTIONS", cls.balance_connections),
            balance_accept_wait=reader.number("BALANCE_ACCEPT_WAIT", cls.balance_accept_wait, minimum=0),
            access_log=reader.text("GUNICORN_ACCESS_LOG", "") or None,
            log_level=reader.choice("LOG_LEVEL", cls.log_level, ("debug", "info", "warning", "error")),
            log_format=reader.choice("LOG_FORMAT", cls.log_format, ("text", "json")),
        )


@dataclass(frozen=True)
class ClientKey:
    """A client key and the name that stands for it in logs, metrics and ``RATE_LIMIT_<NAME>``."""

    name: str
    key: str = field(repr=False)  # a repr (test output, debugging) must never show the key
    # This client's own flask-limiter limit instead of RATE_LIMIT; empty: RATE_LIMIT applies.
    rate_limit: str = ""
    # This client's own budget (BUDGET_<NAME>) instead of BUDGET; empty: BUDGET applies.
    budget: tuple[BudgetLimit, ...] = ()


def rate_limit_variable(name: str) -> str:
    """The variable holding a client's own limit: ``team.a`` -> ``RATE_LIMIT_TEAM_A``."""
    return "RATE_LIMIT_" + re.sub(r"[^A-Z0-9_]", "_", name.upper())


@dataclass(frozen=True)
class Settings:
    """What the router was told to do; see the README's Configuration table."""

    # Where the catalog comes from. Relative paths are resolved against the working directory,
    # which is the project root under `make run`, Docker and the tests.
    models_file: str = "configs/models.json"
    credentials_file: str = "configs/credentials.json"
    vendors_file: str = "configs/vendors.json"

    log_level: str = "info"
    # "text" reads well in a terminal; "json" is one object per line for log shippers.
    log_format: str = "text"

    # Seconds to open a TCP (+TLS) connection to a vendor: short, because a vendor that cannot
    # even accept a connection should be failed over quickly.
    upstream_connect_timeout: float = 5.0
    # Seconds of vendor silence allowed before the first byte and between bytes of a stream.
    # Long, because a large model may think for minutes before its first token.
    upstream_read_timeout: float = 300.0
    # Distinct combinations tried for one request before giving up.
    max_attempts: int = 3
    # How long a combination that just failed is skipped by the selector.
    cooldown_seconds: float = 30.0
    # A vendor's Retry-After longer than cooldown_seconds wins, but never beyond this.
    max_cooldown_seconds: float = 300.0
    # memory:// keeps cooldowns in each worker process; redis://host:port/db shares them with every
    # worker and instance pointed at it (app/cooldowns.py: learned in the background, never waited on).
    cooldown_storage: str = "memory://"
    # Shared cooldowns are shared only among instances with the same namespace. Empty: a digest of
    # the configured vendors, base URLs, keys and models, so instances of one deployment share and
    # other deployments using the same Redis do not.
    cooldown_namespace: str = ""
    # An SSE comment is sent when a committed stream has been silent this long; it keeps
    # proxies from cutting the stream and reveals clients that went away.
    stream_keepalive_seconds: float = 15.0
    # The longest a request waits, across all its attempts, for its answer to start (a whole
    # answer: to be complete); then 504. Each attempt gets what is left. Keep nginx's
    # proxy_read_timeout above it, or nginx answers its own 504 first.
    request_timeout: float = 300.0
    # Streams: the longest wait from sending a request to its first content, tool-call or finish
    # event (SSE comments and role-only chunks do not count); then the next combination is
    # tried. None: off (only UPSTREAM_READ_TIMEOUT and REQUEST_TIMEOUT apply).
    first_token_timeout: float | None = None
    # When the first attempt has no answer (stream: no first event) after this long, a second
    # attempt starts on another combination and the first to succeed wins. None: off. A hedge
    # may cost a second prompt's input tokens; it buys a bounded wait.
    hedge_after_seconds: float | None = None
    # Requests carrying a session key (X-Session-Id, X-Claude-Code-Session-Id, prompt_cache_key)
    # keep to one combination, so the vendor's prompt cache for that key and model keeps hitting.
    affinity: bool = True
    # A stream whose client accepts no bytes this long is closed (and its vendor request), so a
    # client that stopped reading cannot hold a vendor connection and its buffers forever.
    client_send_timeout: float = 60.0
    # Seconds a client may take to send its request body, counted from the end of its headers.
    # Without a bound, a client sending a few bytes of a promised body holds a greenlet (of the
    # worker's WORKER_CONNECTIONS) for as long as it likes, with or without a valid key.
    client_body_timeout: float = 30.0
    # The certificate authorities vendor TLS is checked against (REQUESTS_CA_BUNDLE, else
    # SSL_CERT_FILE); None: the bundle that ships with requests. Behind a TLS-inspecting egress
    # proxy the proxy's CA is the only way to reach a vendor.
    ca_bundle: str | None = None

    max_body_bytes: int = 10 * 1024 * 1024

    # Client authentication: empty means the router is open (a warning is logged at start). A bare
    # string is a key named like an unnamed ROUTER_API_KEYS entry: key-1, key-2, ...
    api_keys: tuple[ClientKey | str, ...] = ()
    # Require a client key for /metrics too (off: Prometheus scrapers usually carry no key).
    metrics_require_key: bool = False

    # flask-limiter rate limit string, e.g. "60/minute;1000/hour"; empty means no limit.
    rate_limit: str = ""
    # flask-limiter notation: failed client-key checks allowed per client address, then 429.
    auth_failure_limit: str = "20/minute"
    # memory:// counts in each worker process; redis://host:port/db is shared by every worker and
    # instance pointed at it (app/limits.py: fails open, per worker, while Redis is down).
    rate_limit_storage: str = "memory://"
    # Every client's budget (BUDGET), e.g. 2000000 tokens per day; 50 usd per month; empty: none.
    # A named client's BUDGET_<NAME> replaces it (ClientKey.budget).
    budget: tuple[BudgetLimit, ...] = ()
    # memory:// counts budgets in each worker process; redis://host:port/db shares them with every
    # worker and instance (app/budgets/redis_ledger.py: refuses calls under a budget while Redis is down).
    budget_storage: str = "memory://"
    # Number of proxies in front of the router whose X-Forwarded-For may be trusted (nginx: 1).
    trusted_proxies: int = 0

    # Origins allowed to call the API from a browser; empty means no CORS headers at all.
    cors_origins: tuple[str, ...] = ()

    # Greenlets a worker may run at once (gunicorn's worker_connections); sizes the vendor
    # connection pool so no connection is thrown away under load.
    worker_connections: int = 1000

    def __post_init__(self) -> None:
        keys = _name_bare_keys(self.api_keys)
        object.__setattr__(self, "api_keys", keys)  # frozen: the one normalisation, at construction
        # Asking for a closed /metrics on an open router would silently leave it open.
        if self.metrics_require_key and not self.api_keys:
            raise SettingsError("METRICS_REQUIRE_KEY needs client keys: set ROUTER_API_KEYS or ROUTER_API_KEYS_FILE")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from environment variables, falling back to the defaults above."""
        env = os.environ if environ is None else environ
        reader = EnvironmentReader(env)
        server = ServerSettings.from_env(env)
        return cls(
            models_file=reader.text("MODELS_FILE", cls.models_file),
            credentials_file=reader.text("CREDENTIALS_FILE", cls.credentials_file),
            vendors_file=reader.text("VENDORS_FILE", cls.vendors_file),
            log_level=server.log_level,
            log_format=server.log_format,
            upstream_connect_timeout=reader.number("UPSTREAM_CONNECT_TIMEOUT", cls.upstream_connect_timeout),
            upstream_read_timeout=reader.number("UPSTREAM_READ_TIMEOUT", cls.upstream_read_timeout),
            max_attempts=reader.integer("MAX_ATTEMPTS", cls.max_attempts, minimum=1),
            cooldown_seconds=reader.number("COOLDOWN_SECONDS", cls.cooldown_seconds, minimum=0),
            max_cooldown_seconds=reader.number("MAX_COOLDOWN_SECONDS", cls.max_cooldown_seconds, minimum=0),
            cooldown_storage=_read_redis_url(reader, "COOLDOWN_STORAGE"),
            cooldown_namespace=_read_cooldown_namespace(reader),
            stream_keepalive_seconds=reader.number("STREAM_KEEPALIVE_SECONDS", cls.stream_keepalive_seconds),
            request_timeout=reader.number("REQUEST_TIMEOUT", cls.request_timeout),
            first_token_timeout=reader.optional_number("FIRST_TOKEN_TIMEOUT"),
            hedge_after_seconds=reader.optional_number("HEDGE_AFTER_SECONDS"),
            affinity=reader.boolean("AFFINITY", cls.affinity),
            client_send_timeout=reader.number("CLIENT_SEND_TIMEOUT", cls.client_send_timeout),
            client_body_timeout=reader.number("CLIENT_BODY_TIMEOUT", cls.client_body_timeout),
            ca_bundle=_read_ca_bundle(reader),
            max_body_bytes=reader.integer("MAX_BODY_BYTES", cls.max_body_bytes, minimum=1),
            api_keys=_read_client_keys(reader),
            metrics_require_key=reader.boolean("METRICS_REQUIRE_KEY", cls.metrics_require_key),
            rate_limit=_read_rate_limit(reader, "RATE_LIMIT"),
            auth_failure_limit=_read_rate_limit(reader, "AUTH_FAILURE_LIMIT") or cls.auth_failure_limit,
            rate_limit_storage=reader.text("RATE_LIMIT_STORAGE", cls.rate_limit_storage),
            budget=_read_budget(reader, "BUDGET"),
            budget_storage=_read_redis_url(reader, "BUDGET_STORAGE"),
            trusted_proxies=reader.integer("TRUSTED_PROXIES", cls.trusted_proxies, minimum=0),
            cors_origins=_read_origins(reader),
            worker_connections=server.worker_connections,
        )

    def budgets(self) -> dict[str, tuple[BudgetLimit, ...]]:
        """Each client's budget: its own, else BUDGET; ``anonymous`` (keys off) gets BUDGET."""
        clients = [client.name for client in self.api_keys if isinstance(client, ClientKey)] or [ANONYMOUS_CLIENT]
        own = {client.name: client.budget for client in self.api_keys if isinstance(client, ClientKey)}
        budgets = {name: own.get(name) or self.budget for name in clients}
        return {name: limits for name, limits in budgets.items() if limits}


def _read_budget(reader: EnvironmentReader, name: str) -> tuple[BudgetLimit, ...]:
    value = reader.text(name, "")
    return parse_budget(value, name) if value else ()


def _check_budget_variables(reader: EnvironmentReader, clients: list[ClientKey]) -> None:
    """A BUDGET_<NAME> naming no configured client stops start-up: a typo must not mean "no budget"."""
    known = {budget_variable(client.name) for client in clients}
    for name in reader.names("BUDGET_"):
        if name in _RESERVED_BUDGET_VARIABLES or name in known or not reader.text(name, ""):
            continue
        listed = ", ".join(sorted(client.name for client in clients)) or "none: every caller is anonymous"
        raise SettingsError(
            f"{name} names no configured client (clients: {listed}); a client's own budget is "
            "BUDGET_<NAME> with its name upper-cased and other characters as _; BUDGET applies to every client"
        )


def _read_client_keys(reader: EnvironmentReader) -> tuple[ClientKey, ...]:
    """Named client keys from ROUTER_API_KEYS (``key`` or ``name=key``) and ROUTER_API_KEYS_FILE.

    Errors name the variable and the entry's position or the file's line, never the entry itself:
    a malformed entry may be a key, or hold part of one.
    """
    entries: list[tuple[str, str | None, str]] = []  # (where, name or None, key)
    for position, entry in enumerate(reader.raw("ROUTER_API_KEYS").split(","), 1):
        entry = entry.strip()
        if not entry:
            continue
        where = f"ROUTER_API_KEYS entry {position}"
        name, separator, key = entry.partition("=")
        if not separator:
            entries.append((where, None, entry))
        elif not key.strip() or key.startswith("="):
            # "abc==" is a base64 key's padding, not "name=key": its first part must not become a name.
            raise SettingsError(f"{where}: expected key or name=key (a key containing '=' needs a name: name=key)")
        else:
            entries.append((where, name.strip(), key.strip()))
    path = reader.text("ROUTER_API_KEYS_FILE", "")
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise SettingsError(f"ROUTER_API_KEYS_FILE: cannot read {path}: {reason}") from None
        for number, line in enumerate(lines, 1):
            words = line.split()
            # Blank lines and lines starting with '#' are ignored.
            if not words or words[0].startswith("#"):
                continue
            where = f"ROUTER_API_KEYS_FILE {path} line {number}"
            if len(words) > 2:
                raise SettingsError(f"{where}: expected 'key' or 'name key'")
            entries.append((where, words[0], words[1]) if len(words) == 2 else (where, None, words[0]))
    clients = _named_keys(entries, reader)
    _check_budget_variables(reader, list(clients))
    return clients


def _named_keys(entries: list[tuple[str, str | None, str]], reader: EnvironmentReader) -> tuple[ClientKey, ...]:
    """Check names, name the unnamed ones key-1, key-2, ... and attach each client's own limit."""
    clients: list[ClientKey] = []
    first_seen: dict[str, str] = {}  # name, key or limit variable -> the entry that used it first
    unnamed = 0
    for where, given, key in entries:
        if given is None:
            unnamed += 1
            name = f"key-{unnamed}"
            where += f" (unnamed, so {name})"
        else:
            name = given
            _check_name(name, where)
        variable, budget = rate_limit_variable(name), budget_variable(name)
        uses = (("name", "name:" + name), ("key", "key:" + key), (f"limit variable {variable}", "var:" + variable))
        for what, value in uses:
            if value in first_seen:
                raise SettingsError(f"{where} has the same {what} as {first_seen[value]}; each must be unique")
            first_seen[value] = where
        clients.append(ClientKey(name, key, _read_rate_limit(reader, variable), _read_budget(reader, budget)))
    return tuple(clients)


def _check_name(name: str, where: str) -> None:
    if not _CLIENT_NAME.match(name):
        # The name is not quoted: a malformed entry may be (part of) a key.
        raise SettingsError(f"{where}: a client name must be 1-64 characters of A-Z a-z 0-9 _ . -")
    if name.lower() == ANONYMOUS_CLIENT:
        raise SettingsError(f"{where}: the name {ANONYMOUS_CLIENT} is reserved for requests without a key")
    if rate_limit_variable(name) in _RESERVED_VARIABLES:
        raise SettingsError(f"{where}: the name {name} is reserved ({rate_limit_variable(name)} is another setting)")


def _name_bare_keys(keys: tuple[ClientKey | str, ...]) -> tuple[ClientKey, ...]:
    unnamed = 0
    named: list[ClientKey] = []
    for key in keys:
        if isinstance(key, str):
            unnamed += 1
            key = ClientKey(f"key-{unnamed}", key)
        named.append(key)
    return tuple(named)


def _read_rate_limit(reader: EnvironmentReader, name: str) -> str:
    """A flask-limiter limit, checked now with the parser flask-limiter uses, so a typo stops start-up."""
    value = reader.text(name, "")
    if not value:
        return value
    from limits import parse_many  # only when a limit is set: a router without one never loads it

    try:
        items = parse_many(value)
    except ValueError:
        raise SettingsError(f"{name} must look like 60/minute or 10/second;1000/hour; got {value!r}") from None
    if any(item.amount < 1 for item in items):
        raise SettingsError(f"{name} amounts must be at least 1; got {value!r}")
    return value


def _read_ca_bundle(reader: EnvironmentReader) -> str | None:
    """REQUESTS_CA_BUNDLE (what requests itself reads), else SSL_CERT_FILE (what OpenSSL reads)."""
    for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        path = reader.text(name, "")
        if path:
            if not os.path.isfile(path):
                raise SettingsError(f"{name}: no certificate file at {path}")
            return path
    return None


def _read_redis_url(reader: EnvironmentReader, name: str) -> str:
    """COOLDOWN_STORAGE, BUDGET_STORAGE: memory://, or a Redis URL checked now with redis-py's own parser."""
    value = reader.text(name, "memory://")
    if value == "memory://":
        return value
    # Only for a Redis URL: a router with memory:// storage never loads the Redis client (~7 MB).
    from redis.connection import parse_url

    from app.redact import without_password

    try:
        parse_url(value)
    except ValueError as exc:
        raise SettingsError(
            f"{name} must be memory:// or like redis://[:password@]host:6379/0 (rediss://, unix://); "
            f"got {without_password(value)!r}: {exc}"
        ) from None
    return value


def _read_cooldown_namespace(reader: EnvironmentReader) -> str:
    """COOLDOWN_NAMESPACE: part of a Redis key name, so plain characters only."""
    value = reader.text("COOLDOWN_NAMESPACE", "")
    if value and not _NAMESPACE.match(value):
        raise SettingsError(f"COOLDOWN_NAMESPACE must be 1-64 characters of A-Z a-z 0-9 _ . : -; got {value!r}")
    return value


def _read_origins(reader: EnvironmentReader) -> tuple[str, ...]:
    """CORS_ORIGINS: ``*`` or full origins (scheme://host[:port]), which browsers send verbatim."""
    origins = reader.items("CORS_ORIGINS")
    for origin in origins:
        if origin != "*" and not _ORIGIN.match(origin):
            raise SettingsError(f"CORS_ORIGINS entries must be * or like https://app.example.com; got {origin!r}")
    return origins


_ORIGIN = re.compile(r"https?://[^/\s]+\Z")
_NAMESPACE = re.compile(r"[A-Za-z0-9_.:-]{1,64}\Z")
_CLIENT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
# RATE_LIMIT_<NAME> variables that are settings of their own: no client may be named so.
_RESERVED_VARIABLES = frozenset({"RATE_LIMIT_STORAGE"})
# BUDGET_<NAME> variables that are settings of their own (a client "storage" is already refused).
_RESERVED_BUDGET_VARIABLES = frozenset({"BUDGET_STORAGE"})
