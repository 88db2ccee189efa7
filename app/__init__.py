"""Generative API Router: one OpenAI-compatible endpoint in front of many LLM vendors."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Flask

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

    settings: Settings
    catalog: Catalog
    selector: Selector
    chat: ChatService


def create_app(settings: Settings | None = None) -> Flask:
    """Build the WSGI app: read settings and config files, wire services, register routes.

    Raises SettingsError or ConfigError (with a message naming the variable, file and entry)
    when the configuration cannot work.
    """
    from app.blueprints import chat, health, models
    from app.http import install_http_edge
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
    metrics = init_metrics(app)
    selector = Selector(catalog, settings.cooldown_seconds, settings.max_cooldown_seconds)
    upstream = Upstream(
        catalog.vendors,
        settings.upstream_connect_timeout,
        settings.upstream_read_timeout,
        pool_size=settings.worker_connections,
    )
    service = ChatService(selector, upstream, metrics, settings.max_attempts, settings.stream_keepalive_seconds)
    app.extensions["router"] = Router(settings, catalog, selector, service)

    install_http_edge(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(models.bp)
    app.register_blueprint(chat.bp)
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
