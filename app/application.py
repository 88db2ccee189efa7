"""The application factory: settings and config files in, a wired Flask app out."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from app.budgets.ledger import open_ledger
from app.budgets.limits import BudgetLimit, check_prices
from app.budgets.service import Budgets
from app.catalog import CAPABILITIES, Catalog, env_name_for_api_key, load_catalog
from app.chat import CHAT
from app.cooldowns import open_cooldowns
from app.embeddings import EMBEDDINGS
from app.endpoint import Endpoint, Recipe
from app.forward import Forwarder, Timing
from app.messages.recipe import MESSAGES
from app.recorder import Recorder
from app.redact import register_secrets
from app.responses.recipe import RESPONSES
from app.selector import Selector, share, share_pools
from app.settings import ServerSettings, Settings
from app.upstream import Upstream

__all__ = ["RECIPES", "Router", "create_app"]

log = logging.getLogger("router")

# Every API the router answers through vendors: one recipe each, served by one view and one
# pipeline. Adding an endpoint is a recipe module and a line here.
RECIPES: tuple[Recipe, ...] = (CHAT, RESPONSES, EMBEDDINGS, MESSAGES)


@dataclass(frozen=True)
class Router:
    """What a request may reach, stored on the app as ``app.extensions["router"]``."""

    catalog: Catalog
    endpoints: dict[str, Endpoint]  # by recipe name
    settings: Settings
    budgets: Budgets | None = None  # None when no client has a budget


class _RouterFlask(Flask):
    """Flask, deciding once per function whether it must be run as a coroutine.

    Flask asks ``inspect.iscoroutinefunction`` for every hook and view of every request (about
    1% of a whole call's CPU); the router's functions never change between requests."""

    _SYNC_KEPT = 1024  # a bound, should some extension hand a new function each time

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync: dict[Callable[..., Any], Callable[..., Any]] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        known = self._sync.get(func)
        if known is None:
            if len(self._sync) >= self._SYNC_KEPT:
                self._sync.clear()
            known = self._sync[func] = super().ensure_sync(func)
        return known


def create_app(settings: Settings | None = None) -> Flask:
    """Build the WSGI app: read settings and config files, wire services, register routes.

    Raises SettingsError or ConfigError (with a message naming the variable, file and entry)
    when the configuration cannot work.
    """
    from app.auth import install_client_auth
    from app.blueprints import budget, health, messages, models, openapi, responses
    from app.blueprints.endpoints import endpoint_blueprint
    from app.cors import install_cors
    from app.http import BodyDeadline, install_http_edge
    from app.limits import install_rate_limits
    from app.logs import configure_logging
    from app.metrics import init_metrics

    settings = settings or Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    catalog = load_catalog(settings)
    client_budgets = settings.budgets()
    check_prices(client_budgets, catalog.models)
    register_secrets(
        [credential.secret for credential in catalog.credentials] + [client.key for client in settings.api_keys]
    )
    _report(settings, catalog)

    app = _RouterFlask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # keep OpenAI's field order in JSON answers
    metrics = init_metrics(app, settings.worker_connections, catalog.combinations)
    # Built here, in the worker (never the master: no preload), so a shared book's background
    # link to Redis starts in the process that uses it.
    cooldowns = open_cooldowns(
        settings.cooldown_storage,
        namespace=settings.cooldown_namespace or catalog.cooldown_namespace(),
        longest=max(settings.max_cooldown_seconds, settings.cooldown_seconds),
    )
    # The first recipe serving each model type is where a request for that type belongs.
    paths: dict[str, str] = {}
    for recipe in RECIPES:
        paths.setdefault(recipe.model_type, recipe.path)
    selector = Selector(
        catalog,
        settings.cooldown_seconds,
        settings.max_cooldown_seconds,
        cooldowns=cooldowns,
        paths=paths,
        affinity=settings.affinity,
    )
    metrics.follow_cooling(selector.cooling_by_vendor)
    upstream = Upstream(
        catalog.vendors,
        settings.upstream_connect_timeout,
        settings.upstream_read_timeout,
        pool_size=settings.worker_connections,
        ca_bundle=settings.ca_bundle,
    )
    timing = Timing(
        request_timeout=settings.request_timeout,
        first_token_timeout=settings.first_token_timeout,
        hedge_after=settings.hedge_after_seconds,
        keepalive=settings.stream_keepalive_seconds,
    )
    recorder = Recorder(metrics, settings.max_attempts)
    forwarder = Forwarder(selector, upstream, recorder, settings.max_attempts, timing)
    # No budget anywhere: no ledger at all, and nothing on the hot path looks for one.
    budgets = None
    if client_budgets:
        budgets = Budgets(client_budgets, open_ledger(settings.budget_storage), metrics)
        metrics.budgets_configured(client_budgets)
        _report_budgets(settings, client_budgets, budgets.ledger.where)
    endpoints = {recipe.name: Endpoint(recipe, selector, forwarder, budgets) for recipe in RECIPES}
    app.extensions["router"] = Router(catalog, endpoints, settings, budgets)
    blueprints = [endpoint_blueprint(recipe) for recipe in RECIPES]

    error_shapes = {recipe.path: recipe.error_shape for recipe in RECIPES if recipe.error_shape is not None}
    install_http_edge(app, metrics, error_shapes)
    # Hook order is request order: preflights need no key, and only a proven key is counted.
    install_cors(app, settings.cors_origins)
    install_client_auth(app, settings)
    install_rate_limits(app, settings, (*blueprints, responses.bp, messages.bp, models.bp, budget.bp))
    if settings.trusted_proxies:
        # The client address is the one the trusted proxies saw (X-Forwarded-For), not theirs.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies)
    app.wsgi_app = BodyDeadline(app.wsgi_app, settings.client_body_timeout)
    app.register_blueprint(health.bp)
    app.register_blueprint(models.bp)
    for blueprint in blueprints:
        app.register_blueprint(blueprint)
    app.register_blueprint(responses.bp)
    app.register_blueprint(messages.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(budget.bp)
    return app


def _report_budgets(settings: Settings, budgets: dict[str, tuple[BudgetLimit, ...]], where: str) -> None:
    log.info(
        "budgets, counted in %s: %s",
        where,
        "; ".join(f"{client}: {', '.join(limit.describe() for limit in limits)}" for client, limits in budgets.items()),
    )
    workers = ServerSettings.from_env().workers or os.cpu_count() or 1
    if settings.budget_storage == "memory://" and workers > 1:
        log.warning(
            "budgets are counted per worker process (BUDGET_STORAGE=memory://) and %d workers run: each may "
            "spend a whole budget, so a client can spend up to %d times it; set BUDGET_STORAGE=redis://... to "
            "count once for every worker and instance",
            workers,
            workers,
        )


def _report(settings: Settings, catalog: Catalog) -> None:
    """Say at start what the router will do, and everything that looks wrong."""
    for warning in catalog.warnings:
        log.warning(warning)
    if catalog.credentials_file_missing and catalog.env_key_variables:
        log.info(
            "no credentials file at %s: keys from environment variables %s",
            settings.credentials_file,
            ", ".join(catalog.env_key_variables),
        )
    if catalog.vendors_without_credentials:
        log.warning(
            "no credentials file at %s: vendors without credentials: %s; their requests answer 503 until "
            "you create it (see configs/credentials.json.example), set CREDENTIALS_FILE or set %s",
            settings.credentials_file,
            ", ".join(catalog.vendors_without_credentials),
            ", ".join(env_name_for_api_key(vendor) for vendor in catalog.vendors_without_credentials),
        )
    for name in catalog.model_vendors():
        log.info("vendor %s at %s", name, catalog.vendors[name].base_url)
    log.info(
        "%d models (%s format), %d aliases, %d credentials, %d combinations",
        len(catalog.models),
        catalog.models_format,
        len(catalog.aliases),
        len(catalog.credentials),
        len(catalog.combinations),
    )
    for model in catalog.models:
        if model.type != "chat" or model.aliases or model.capabilities != CAPABILITIES:
            log.info(
                "model %s/%s: %s, aliases %s, supports %s",
                model.vendor,
                model.id,
                model.type,
                ", ".join(model.aliases) or "none",
                ", ".join(sorted(model.capabilities)) or "plain text only",
            )
    for pool, combinations in share_pools(catalog).items():
        log.info(
            "shares of %s: %s",
            pool,
            ", ".join(f"{c.key} {share(c, combinations):.1f}%" for c in combinations),
        )
