"""Command line: ``python -m app check-config`` validates the config files without serving.

Operators run it before a SIGHUP reload: it reads the same environment and files as start-up,
exits 1 with the same message on a bad file, and otherwise prints the combinations it would use.
"""

from __future__ import annotations

import argparse
import sys

from app.catalog import ConfigError, load_catalog
from app.settings import Settings, SettingsError


def check_config() -> int:
    """Print the combinations the current configuration yields; 0 if valid, 1 if not."""
    try:
        settings = Settings.from_env()
        catalog = load_catalog(settings)
    except (SettingsError, ConfigError) as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 1
    print(f"models:      {settings.models_file} ({len(catalog.models)})")
    credentials_note = " (missing)" if catalog.credentials_file_missing else f" ({len(catalog.credentials)})"
    print(f"credentials: {settings.credentials_file}{credentials_note}")
    for name in catalog.model_vendors():
        print(f"vendor {name}: {catalog.vendors[name].chat_url}")
    print(f"{len(catalog.combinations)} combinations:")
    for combination in catalog.combinations:
        print(f"  {combination.key:40} key {combination.credential.masked()}")
    for vendor in catalog.vendors_without_credentials:
        print(f"warning: vendor {vendor} has models but no credentials; its chat requests would get 503")
    for warning in catalog.warnings:
        print(f"warning: {warning}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("check-config", help="validate the config files and print the combinations")
    parser.parse_args(argv)
    return check_config()


if __name__ == "__main__":
    sys.exit(main())
