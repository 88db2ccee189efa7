"""Generative API Router: one OpenAI-compatible endpoint in front of many LLM vendors."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from app.catalog import Catalog, load_catalog
from app.chat import ChatService
from app.redact import register_secrets
from app.selector import Selector
from app.settings import Settings
from app.upstream import Upstream

__all__ = ["Router", "create_app"]

log = logging.getLogger("router")


@dataclass(frozen=True)
class Router:
    """The services a request may reach, stored on the app as ``app.extensions["router"]``."""

    catalog: Catalog
    chat: ChatService


def create_app(settings: Settings | None = None) -> Flask:
    """Build the WSGI app: read settings and config files, wire services, register routes.

    Raises SettingsError or ConfigError (with a message naming the variable, file and entry)
    when the configuration cannot work.
    """
    from app.auth import install_client_auth
    from app.blueprints import chat, health, models, openapi
    from app.cors import install_cors
    from app.http import install_http_edge
    from app.limits import install_rate_limits
    from app.logs import configure_logging
    from app.metrics import init_metrics

    settings = settings or Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    catalog = load_catalog(settings)
    register_secrets([credential.secret for credential in catalog.credentials] + list(settings.api_keys))
    _report(settings, catalog)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # keep OpenAI's field order in JSON answers
    metrics = init_metrics(app, settings.worker_connections, catalog.combinations)
    selector = Selector(catalog, settings.cooldown_seconds, settings.max_cooldown_seconds)
    upstream = Upstream(
        catalog.vendors,
        settings.upstream_connect_timeout,
        settings.upstream_read_timeout,
        pool_size=settings.worker_connections,
    )
    service = ChatService(selector, upstream, metrics, settings.max_attempts, settings.stream_keepalive_seconds)
    app.extensions["router"] = Router(catalog, service)

    install_http_edge(app)
    # Hook order is request order: preflights need no key, and only a proven key is counted.
    install_cors(app, settings.cors_origins)
    install_client_auth(app, settings)
    install_rate_limits(app, settings, (chat.bp, models.bp))
    if settings.trusted_proxies:
        # The client address is the one the trusted proxies saw (X-Forwarded-For), not theirs.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies)
    app.register_blueprint(health.bp)
    app.register_blueprint(models.bp)
    app.register_blueprint(chat.bp)
    app.register_blueprint(openapi.bp)
    return app


def _report(settings: Settings, catalog: Catalog) -> None:
    """Say at start what the router will do, and everything that looks wrong."""
    for warning in catalog.warnings:
        log.warning(warning)
    if catalog.credentials_file_missing:
        log.warning(
            "no credentials file at %s: vendors without credentials: %s; chat requests for them "
            "answer 503 until you create it (see configs/credentials.json.example) or set CREDENTIALS_FILE",
            settings.credentials_file,
            ", ".join(catalog.vendors_without_credentials),
        )
    for name in catalog.model_vendors():
        log.info("vendor %s at %s", name, catalog.vendors[name].base_url)
    log.info(
        "%d models, %d credentials, %d combinations",
        len(catalog.models),
        len(catalog.credentials),
        len(catalog.combinations),
    )
