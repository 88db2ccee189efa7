"""Command line: ``python -m app check-config`` validates the config files without serving.

Operators run it before a SIGHUP reload: it reads the same environment and files as start-up,
exits 1 with the same message on a bad file, and otherwise prints the models, aliases and
combinations it would use, with each combination's share of the traffic.
"""

from __future__ import annotations

import argparse
import sys

from app.budgets.limits import BudgetLimit, check_prices
from app.catalog import Catalog, ConfigError, load_catalog
from app.redact import without_password
from app.selector import share, share_pools
from app.settings import Settings, SettingsError


def check_config() -> int:
    """Print what the current configuration yields; 0 if valid, 1 if not."""
    try:
        settings = Settings.from_env()
        catalog = load_catalog(settings)
        budgets = settings.budgets()
        check_prices(budgets, catalog.models)
    except (SettingsError, ConfigError) as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 1
    print(f"models:      {settings.models_file} ({len(catalog.models)}, {catalog.models_format} format)")
    print(f"credentials: {settings.credentials_file} ({credentials_source(catalog)})")
    for name in catalog.model_vendors():
        vendor = catalog.vendors[name]
        sends = f" (sends {', '.join(sorted(vendor.accepts))})" if vendor.accepts else ""
        print(f"vendor {name}: {vendor.base_url}{sends}")
    print("models:")
    for model in catalog.models:
        aliases = f"  aliases {', '.join(model.aliases)}" if model.aliases else ""
        print(f"  {model.vendor + '/' + model.id:40} {model.type:9} weight {model.weight:g}{aliases}")
        print(f"  {'':40} supports {', '.join(sorted(model.capabilities)) or 'plain text only'}")
        if model.price is not None:
            print(f"  {'':40} price {model.price.describe()}")
    for alias, group in catalog.aliases.items():
        print(f"alias {alias}: {', '.join(f'{m.vendor}/{m.id}' for m in group)}")
    print(
        f"{len(catalog.combinations)} combinations; share = percent of the requests that name no alias or "
        "model (per type), or that name the alias, before any ?vendor= filter or cooldown:"
    )
    for pool, combinations in share_pools(catalog).items():
        print(f"  {pool}:")
        for combination in combinations:
            print(
                f"    {combination.key:40} key {combination.credential.masked()}  weight {combination.weight:g}  "
                f"share {share(combination, combinations):.1f}%"
            )
    print(failure_handling(settings))
    print(budget_lines(budgets, settings.budget_storage))
    for vendor in catalog.vendors_without_credentials:
        print(f"warning: vendor {vendor} has models but no credentials; its requests would get 503")
    for warning in catalog.warnings:
        print(f"warning: {warning}")
    return 0


def failure_handling(settings: Settings) -> str:
    """The limits that decide what happens when a vendor is slow or fails, one line each."""

    def seconds(value: float | None) -> str:
        return "off" if value is None else f"{value:g} s"

    return "\n".join(
        [
            "failure handling:",
            f"  attempts per request (MAX_ATTEMPTS)          {settings.max_attempts}",
            f"  request deadline (REQUEST_TIMEOUT)           {seconds(settings.request_timeout)}",
            f"  connect / read (UPSTREAM_*_TIMEOUT)          {seconds(settings.upstream_connect_timeout)} / "
            f"{seconds(settings.upstream_read_timeout)}",
            f"  first token, streams (FIRST_TOKEN_TIMEOUT)   {seconds(settings.first_token_timeout)}",
            f"  hedge after (HEDGE_AFTER_SECONDS)            {seconds(settings.hedge_after_seconds)}",
            f"  sessions keep their combination (AFFINITY)   {'on' if settings.affinity else 'off'}",
            f"  cooldown (COOLDOWN_SECONDS, storage)         {seconds(settings.cooldown_seconds)}, "
            f"{settings.cooldown_storage.split('://')[0]}",
            f"  silent client (CLIENT_SEND_TIMEOUT)          {seconds(settings.client_send_timeout)}",
            f"  slow request body (CLIENT_BODY_TIMEOUT)      {seconds(settings.client_body_timeout)}",
            f"  vendor CAs (REQUESTS_CA_BUNDLE/SSL_CERT_FILE) {settings.ca_bundle or 'built-in bundle'}",
        ]
    )


def budget_lines(budgets: dict[str, tuple[BudgetLimit, ...]], storage: str) -> str:
    """Each client's budget (BUDGET, BUDGET_<CLIENT>), one line each, and where it is counted."""
    if not budgets:
        return "budgets: none (BUDGET unset)"
    lines = [f"budgets, counted in {without_password(storage)}:"]
    lines += [f"  {client:40} {'; '.join(limit.describe() for limit in limits)}" for client, limits in budgets.items()]
    return "\n".join(lines)


def credentials_source(catalog: Catalog) -> str:
    """Where the keys come from, naming environment variables but never their values."""
    if not catalog.credentials_file_missing:
        return f"{len(catalog.credentials)} keys"
    if catalog.env_key_variables:
        return f"missing; keys from environment variables {', '.join(catalog.env_key_variables)}"
    return "missing; no <VENDOR>_API_KEY variables set"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("check-config", help="validate the config files and print the combinations")
    parser.parse_args(argv)
    return check_config()


if __name__ == "__main__":
    sys.exit(main())
