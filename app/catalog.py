"""The catalog: vendors, credentials and models read from configs/*.json, and their combinations.

A combination is one (vendor, credential, model) the router may send a request to. The catalog is
built once at start-up and never changes while a worker runs; SIGHUP starts new workers that read
the files again. Every problem in a file is reported as one ``ConfigError`` that names the file
and the entry, and never a credential's value.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from app.settings import Settings

__all__ = [
    "BUILTIN_VENDORS",
    "Catalog",
    "Combination",
    "ConfigError",
    "Credential",
    "Model",
    "Vendor",
    "load_catalog",
]

# The OpenAI-compatible endpoints of the vendors the router knows without any configuration.
BUILTIN_VENDORS: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "gemini": "https://generativelanguage.googleapis.com/v1beta/openai",
}

_VENDOR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}\Z")


class ConfigError(ValueError):
    """A config file is missing, unreadable or inconsistent; the message says where and why."""


@dataclass(frozen=True)
class Vendor:
    """An OpenAI-compatible API: a name and the base URL that ``/chat/completions`` is appended to."""

    name: str
    base_url: str

    @property
    def chat_url(self) -> str:
        return f"{self.base_url}/chat/completions"


@dataclass(frozen=True)
class Credential:
    """One API key for one vendor. ``label`` names it in logs; the secret is never printed."""

    vendor: str
    label: str
    secret: str = field(repr=False)

    def masked(self) -> str:
        """The key with all but its last four characters hidden (for ``check-config``)."""
        return "****" + self.secret[-4:] if len(self.secret) >= 12 else "****"


@dataclass(frozen=True)
class Model:
    vendor: str
    id: str


@dataclass(frozen=True)
class Combination:
    """One vendor x credential x model the selector may choose."""

    vendor: Vendor
    credential: Credential
    model: Model
    # A stable name for logs, metrics and cooldown state, free of secrets; built once, since the
    # selector reads it for every candidate of every attempt.
    key: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.credential.label}/{self.model.id}")

    def describe(self, problem: str) -> str:
        """An error message naming this vendor and model (never the key): "Vendor X (model Y) <problem>."."""
        return f"Vendor {self.vendor.name} (model {self.model.id}) {problem}."


@dataclass(frozen=True)
class Catalog:
    """Everything the config files describe, checked for consistency."""

    vendors: Mapping[str, Vendor]
    models: tuple[Model, ...]
    credentials: tuple[Credential, ...]
    combinations: tuple[Combination, ...]
    # When the models file was last changed: the ``created`` of every model in /v1/models, the
    # same in every worker and stable until the configuration changes.
    models_created: int = 0
    # Vendors that have models but no credential: only possible when the credentials file is
    # absent, so a fresh checkout still starts (and answers 503 naming what is missing).
    vendors_without_credentials: tuple[str, ...] = ()
    credentials_file_missing: bool = False
    warnings: tuple[str, ...] = ()

    def model_vendors(self) -> tuple[str, ...]:
        """Vendors that have at least one configured model, in config order."""
        return tuple(dict.fromkeys(model.vendor for model in self.models))


def load_catalog(settings: Settings, environ: Mapping[str, str] | None = None) -> Catalog:
    """Read and check the three config files named by ``settings``; raise ConfigError if wrong."""
    env = os.environ if environ is None else environ
    vendors = _load_vendors(settings.vendors_file, env)
    models = _load_models(settings.models_file, vendors)
    credentials_missing = not os.path.exists(settings.credentials_file)
    credentials = () if credentials_missing else _load_credentials(settings.credentials_file, vendors, env)

    credentialed = {credential.vendor for credential in credentials}
    uncovered = tuple(dict.fromkeys(m.vendor for m in models if m.vendor not in credentialed))
    if uncovered and not credentials_missing:
        model = next(m for m in models if m.vendor == uncovered[0])
        raise ConfigError(
            f"{settings.models_file}: model {model.id!r} of vendor {model.vendor!r} has no credential "
            f'in {settings.credentials_file}; add a {{"platform": "{model.vendor}", ...}} entry there '
            f"or remove the model"
        )

    model_vendors = {m.vendor for m in models}
    warnings = tuple(
        f"{settings.credentials_file}: credential {c.label} has no model in {settings.models_file}; it is unused"
        for c in credentials
        if c.vendor not in model_vendors
    )
    combinations = tuple(
        Combination(vendors[credential.vendor], credential, model)
        for credential in credentials
        for model in models
        if model.vendor == credential.vendor
    )
    return Catalog(
        vendors=vendors,
        models=models,
        credentials=credentials,
        combinations=combinations,
        models_created=int(os.path.getmtime(settings.models_file)),
        vendors_without_credentials=uncovered,
        credentials_file_missing=credentials_missing,
        warnings=warnings,
    )


def _load_vendors(path: str, env: Mapping[str, str]) -> dict[str, Vendor]:
    """Built-in vendors, overridden by vendors.json, overridden by <VENDOR>_BASE_URL."""
    base_urls: dict[str, str] = dict(BUILTIN_VENDORS)
    if os.path.exists(path):
        document = _read_json(path)
        if isinstance(document, dict):
            entries = [{"name": name, "base_url": url} for name, url in document.items()]
        elif isinstance(document, list):
            entries = document
        else:
            raise ConfigError(f'{path}: expected a list of {{"name", "base_url"}} objects or a name -> URL object')
        seen: set[str] = set()
        for number, entry in enumerate(entries, start=1):
            where = f"{path}: entry {number}"
            _check_keys(entry, where, required={"name", "base_url"})
            name = _vendor_name(entry["name"], where)
            if name in seen:
                raise ConfigError(f"{where}: vendor {name!r} is listed twice")
            seen.add(name)
            base_urls[name] = _base_url(entry["base_url"], f"{where} ({name})")
    vendors: dict[str, Vendor] = {}
    for name in base_urls:
        variable = env_name_for_base_url(name)
        override = env.get(variable, "").strip()
        base_url = _base_url(override, variable) if override else base_urls[name]
        vendors[name] = Vendor(name, base_url)
    return vendors


def env_name_for_base_url(vendor: str) -> str:
    """The environment variable that overrides a vendor's base URL, e.g. OPENAI_BASE_URL."""
    return re.sub(r"[^A-Z0-9]", "_", vendor.upper()) + "_BASE_URL"


def _load_models(path: str, vendors: dict[str, Vendor]) -> tuple[Model, ...]:
    if not os.path.exists(path):
        raise ConfigError(f"{path}: models file not found (set MODELS_FILE or create it)")
    document = _read_json(path)
    if not isinstance(document, list):
        raise ConfigError(f'{path}: expected a list of {{"vendor", "model"}} objects')
    models: list[Model] = []
    seen: set[tuple[str, str]] = set()
    for number, entry in enumerate(document, start=1):
        where = f"{path}: entry {number}"
        _check_keys(entry, where, required={"vendor", "model"})
        vendor = _vendor_name(entry["vendor"], where)
        model_id = entry["model"]
        if not isinstance(model_id, str) or not model_id.strip() or model_id != model_id.strip():
            raise ConfigError(f"{where}: 'model' must be a non-empty string without surrounding spaces")
        where = f"{where} ({vendor}/{model_id})"
        if vendor not in vendors:
            raise ConfigError(
                f"{where}: unknown vendor {vendor!r}; known vendors are {', '.join(sorted(vendors))} "
                f"(add it to the vendors file or set {env_name_for_base_url(vendor)})"
            )
        if (vendor, model_id) in seen:
            raise ConfigError(f"{where}: listed twice")
        seen.add((vendor, model_id))
        models.append(Model(vendor, model_id))
    if not models:
        raise ConfigError(f"{path}: no models configured; the router would have nothing to route to")
    return tuple(models)


def _load_credentials(path: str, vendors: dict[str, Vendor], env: Mapping[str, str]) -> tuple[Credential, ...]:
    document = _read_json(path)
    if not isinstance(document, list):
        raise ConfigError(f'{path}: expected a list of {{"platform", "type", "value"}} objects')
    credentials: list[Credential] = []
    first_entry_of_secret: dict[tuple[str, str], int] = {}
    count_per_vendor: dict[str, int] = {}
    for number, entry in enumerate(document, start=1):
        where = f"{path}: entry {number}"
        _check_keys(entry, where, required={"platform", "value"}, optional={"type"})
        vendor = _vendor_name(entry["platform"], where)
        where = f"{where} (platform {vendor})"
        if vendor not in vendors:
            raise ConfigError(f"{where}: unknown vendor {vendor!r}; known vendors are {', '.join(sorted(vendors))}")
        kind = entry.get("type", "api-key")
        if kind != "api-key":
            raise ConfigError(f"{where}: 'type' must be \"api-key\"; got {kind!r}")
        secret = _secret(entry["value"], where, env)
        if (vendor, secret) in first_entry_of_secret:
            raise ConfigError(f"{where}: same key as entry {first_entry_of_secret[vendor, secret]}; remove one")
        first_entry_of_secret[vendor, secret] = number
        count_per_vendor[vendor] = count_per_vendor.get(vendor, 0) + 1
        credentials.append(Credential(vendor, f"{vendor}#{count_per_vendor[vendor]}", secret))
    return tuple(credentials)


def _secret(value: Any, where: str, env: Mapping[str, str]) -> str:
    """A credential's key, resolving ``${NAME}`` from the environment. Never echoes the value."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: 'value' must be a non-empty string")
    reference = _ENV_REFERENCE.match(value.strip())
    if reference:
        name = reference.group(1)
        value = env.get(name, "")
        if not value.strip():
            raise ConfigError(f"{where}: environment variable {name} is not set or empty")
    secret = value.strip()
    # A key is sent in an HTTP header: a line break would split the header.
    if any(ch in secret for ch in "\r\n\0"):
        raise ConfigError(f"{where}: the key contains a line break or NUL character")
    return secret


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


def _check_keys(entry: Any, where: str, required: set[str], optional: frozenset[str] | set[str] = frozenset()) -> None:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected an object, got {type(entry).__name__}")
    missing = sorted(required - entry.keys())
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(repr(k) for k in missing)}")
    unknown = sorted(entry.keys() - required - optional)
    if unknown:
        raise ConfigError(f"{where}: unknown key {', '.join(repr(k) for k in unknown)}")


def _vendor_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _VENDOR_NAME.match(value):
        raise ConfigError(f"{where}: a vendor name must be 1-64 letters, digits, '_', '.' or '-'; got {value!r}")
    return value


def _base_url(value: Any, where: str) -> str:
    """An http(s) URL without query, fragment or user info (keys never go into URLs)."""
    if not isinstance(value, str):
        raise ConfigError(f"{where}: base URL must be a string")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: base URL must start with http:// or https:// and name a host")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"{where}: base URL must not carry a query, fragment or user info")
    return value.strip().rstrip("/")
