"""The catalog: vendors, credentials and models read from configs/*.json, and their combinations.

A combination is one (vendor, credential, model) the router may send a request to, with a weight
(model weight x credential weight). Models carry their public aliases, their type (chat or
embedding) and what they support (images, video, tools, streaming). The models file is a list of
entries, or the Go router's later (v3) object form with its own vendors. Without a credentials
file, keys come from ``<VENDOR>_API_KEY[_N]`` environment variables. The catalog is
built once at start-up and never changes while a worker runs; SIGHUP starts new workers that read
the files again. Every problem in a file is reported as one ``ConfigError`` that names the file
and the entry, and never a credential's value.

Longer than most modules on purpose: the three files are checked against each other (a model
names a vendor, a credential a platform, an alias a group of one type), and keeping their loaders
together keeps one way of naming a file and an entry in every error.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from app.settings import Settings

__all__ = [
    "BUILTIN_VENDORS",
    "CAPABILITIES",
    "ENV_KEY_SLOTS",
    "MODEL_TYPES",
    "OPTIONAL_FIELDS",
    "Catalog",
    "Combination",
    "ConfigError",
    "Credential",
    "Model",
    "Price",
    "Vendor",
    "env_name_for_api_key",
    "env_name_for_base_url",
    "load_catalog",
]

# The OpenAI-compatible endpoints of the vendors the router knows without any configuration.
BUILTIN_VENDORS: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "gemini": "https://generativelanguage.googleapis.com/v1beta/openai",
}

# Request fields some vendors take and others refuse with a 400 (Gemini: "Unknown name"): sent only
# to vendors that accept them, by default the built-in vendors below; the vendors file says it for others.
OPTIONAL_FIELDS: frozenset[str] = frozenset({"prompt_cache_key"})
BUILTIN_ACCEPTS: dict[str, frozenset[str]] = {"openai": frozenset({"prompt_cache_key"})}

# What a request may need from a model; a models entry's "config" says which it supports.
CAPABILITIES: frozenset[str] = frozenset({"image", "video", "tools", "streaming"})
_CONFIG_KEYS = {f"support_{name}": name for name in ("image", "video", "tools", "streaming")}
# Config flags that are not capabilities: they change what is sent to the model, never which
# requests the selector lets it serve, and each is off unless the entry turns it on.
_OPTION_KEYS = frozenset({"support_reasoning"})
MODEL_TYPES = ("chat", "embedding")
# <VENDOR>_API_KEY_1 .. _20 are read besides <VENDOR>_API_KEY when there is no credentials file.
ENV_KEY_SLOTS = 20

_VENDOR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
# Names clients send as "model": what vendors use for model ids (gpt-4o, models/x, a:b@c), and no
# longer than the request schema accepts.
_ALIAS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,255}\Z")
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}\Z")
_MODEL_KEYS = {"weight", "aliases", "type", "config", "max_output_tokens", "price"}
_PRICE_KEYS = {"input", "output", "cached_input"}


class ConfigError(ValueError):
    """A config file is missing, unreadable or inconsistent; the message says where and why."""


@dataclass(frozen=True)
class Vendor:
    """An OpenAI-compatible API: a name and the base URL its endpoint paths are appended to."""

    name: str
    base_url: str
    # The OPTIONAL_FIELDS this vendor takes; the others are left out of what it is sent.
    accepts: frozenset[str] = frozenset()

    @property
    def chat_url(self) -> str:
        return f"{self.base_url}/chat/completions"

    @property
    def embeddings_url(self) -> str:
        return f"{self.base_url}/embeddings"


@dataclass(frozen=True)
class Credential:
    """One API key for one vendor. ``label`` names it in logs; the secret is never printed."""

    vendor: str
    label: str
    secret: str = field(repr=False)
    # Relative share of traffic, e.g. 3 for a key with three times the rate limit of the others.
    weight: float = 1.0

    def masked(self) -> str:
        """The key with all but its last four characters hidden (for ``check-config``)."""
        return "****" + self.secret[-4:] if len(self.secret) >= 12 else "****"


@dataclass(frozen=True)
class Price:
    """What a model's tokens cost, in USD per million tokens (the unit vendors publish)."""

    input: float
    output: float
    cached_input: float  # input tokens the vendor read from its prompt cache

    def describe(self) -> str:
        return f"input {self.input:g}, cached input {self.cached_input:g}, output {self.output:g} USD per 1M tokens"


@dataclass(frozen=True)
class Model:
    """One model of one vendor, with the public names, traffic share and abilities it was given."""

    vendor: str
    id: str
    weight: float = 1.0
    aliases: tuple[str, ...] = ()
    type: str = "chat"
    capabilities: frozenset[str] = CAPABILITIES
    # The most output tokens the model accepts; a translated request asking for more (Claude Code
    # asks 128,000) is lowered to it. None: the request's value is sent as is.
    max_output_tokens: int | None = None
    # Whether the model takes ``reasoning_effort``: translations that derive one send it only then.
    reasoning: bool = False
    # What its tokens cost; needed by usd budgets (app/budgets/). None: no price given.
    price: Price | None = None


@dataclass(frozen=True)
class Combination:
    """One vendor x credential x model the selector may choose."""

    vendor: Vendor
    credential: Credential
    model: Model
    # A stable name for logs, metrics and cooldown state, free of secrets; built once, since the
    # selector reads it for every candidate of every attempt.
    key: str = field(init=False, repr=False)
    # What cooldowns call it: the vendor, its base URL, the key itself and the model, digested.
    # Not ``key``: a credential's position means another key in another deployment sharing the
    # Redis of shared cooldowns (or after the credentials file is edited), and the secret must
    # never reach Redis.
    cooldown_key: str = field(init=False, repr=False)
    weight: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.credential.label}/{self.model.id}")
        identity = "\0".join((self.vendor.name, self.vendor.base_url, self.credential.secret, self.model.id))
        digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
        object.__setattr__(self, "cooldown_key", f"{self.vendor.name}/{self.model.id}/{digest}")
        object.__setattr__(self, "weight", self.model.weight * self.credential.weight)

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
    # Public model names: alias -> the models that share it, in config order.
    aliases: Mapping[str, tuple[Model, ...]] = field(default_factory=dict)
    # <VENDOR>_API_KEY variables the credentials came from (names only), when there is no file.
    env_key_variables: tuple[str, ...] = ()
    models_format: str = "v1"

    def cooldown_namespace(self) -> str:
        """COOLDOWN_NAMESPACE's default: a digest of every combination (vendors, base URLs, keys,
        models), so instances of one deployment share cooldowns and other deployments on the
        same Redis do not."""
        identities = "\n".join(sorted(c.cooldown_key for c in self.combinations))
        return hashlib.sha256(identities.encode()).hexdigest()[:16]

    def model_vendors(self) -> tuple[str, ...]:
        """Vendors that have at least one configured model, in config order."""
        return tuple(dict.fromkeys(model.vendor for model in self.models))


def load_catalog(settings: Settings, environ: Mapping[str, str] | None = None) -> Catalog:
    """Read and check the three config files named by ``settings``; raise ConfigError if wrong.

    Without a credentials file, keys come from ``<VENDOR>_API_KEY`` and ``<VENDOR>_API_KEY_1..20``
    of every vendor that has models; a credentials file that exists is the only source of keys.
    """
    env = os.environ if environ is None else environ
    models_path = settings.models_file
    if not os.path.exists(models_path):
        raise ConfigError(f"{models_path}: models file not found (set MODELS_FILE or create it)")
    entries, file_vendors, models_format = _models_document(models_path, _read_json(models_path))
    vendors = _load_vendors(settings.vendors_file, file_vendors, env)
    models = _load_models(models_path, entries, vendors)
    aliases = _alias_groups(models_path, models)

    credentials_missing = not os.path.exists(settings.credentials_file)
    env_variables: tuple[str, ...] = ()
    warnings: list[str] = []
    if credentials_missing:
        credentials, env_variables = _credentials_from_env(models, env)
    else:
        credentials, referenced = _load_credentials(settings.credentials_file, vendors, env)
        unread = [name for _, name in _env_key_variables(models, env) if name not in referenced]
        if unread:
            warnings.append(
                f"{settings.credentials_file} exists, so it alone supplies the keys: "
                f"{', '.join(unread)} {'is' if len(unread) == 1 else 'are'} set but not read"
            )

    credentialed = {credential.vendor for credential in credentials}
    uncovered = tuple(dict.fromkeys(m.vendor for m in models if m.vendor not in credentialed))
    if uncovered and not credentials_missing:
        model = next(m for m in models if m.vendor == uncovered[0])
        raise ConfigError(
            f"{models_path}: model {model.id!r} of vendor {model.vendor!r} has no credential "
            f'in {settings.credentials_file}; add a {{"platform": "{model.vendor}", ...}} entry there '
            f"or remove the model"
        )

    model_vendors = {m.vendor for m in models}
    warnings.extend(
        f"{settings.credentials_file}: credential {c.label} has no model in {models_path}; it is unused"
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
        models_created=int(os.path.getmtime(models_path)),
        vendors_without_credentials=uncovered,
        credentials_file_missing=credentials_missing,
        warnings=tuple(warnings),
        aliases=aliases,
        env_key_variables=env_variables,
        models_format=models_format,
    )


def _models_document(path: str, document: Any) -> tuple[list[Any], dict[str, str], str]:
    """The model entries, the vendors the file itself names, and which format it is in.

    v1 is a list of entries; v3 (the Go router's later form) is an object holding
    ``models`` and an optional ``vendors`` name -> base URL object.
    """
    if isinstance(document, list):
        return document, {}, "v1"
    if not isinstance(document, dict) or "models" not in document:
        raise ConfigError(
            f'{path}: expected a list of {{"vendor", "model"}} objects, or an object with "models" '
            '(and optionally "vendors")'
        )
    _check_keys(document, path, required={"models"}, optional={"vendors"})
    entries = document["models"]
    if not isinstance(entries, list):
        raise ConfigError(f'{path}: \'models\' must be a list of {{"vendor", "model"}} objects')
    file_vendors = document.get("vendors", {})
    if not isinstance(file_vendors, dict):
        raise ConfigError(f"{path}: 'vendors' must be an object of vendor name -> base URL")
    checked: dict[str, str] = {}
    for name, url in file_vendors.items():
        where = f"{path}: vendors.{name}"
        checked[_vendor_name(name, where)] = _base_url(url, where)
    return entries, checked, "v3"


def _load_vendors(path: str, file_vendors: Mapping[str, str], env: Mapping[str, str]) -> dict[str, Vendor]:
    """Built-in vendors, overridden by vendors.json, by the models file's own, by <VENDOR>_BASE_URL.

    A vendors.json list entry may say which optional fields the vendor accepts (``"accepts"``);
    an entry naming a built-in vendor may then leave out its base URL.
    """
    base_urls: dict[str, str] = dict(BUILTIN_VENDORS)
    accepts: dict[str, frozenset[str]] = dict(BUILTIN_ACCEPTS)
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
            _check_keys(entry, where, required={"name"}, optional={"base_url", "accepts"})
            name = _vendor_name(entry["name"], where)
            if name in seen:
                raise ConfigError(f"{where}: vendor {name!r} is listed twice")
            seen.add(name)
            if "base_url" in entry:
                base_urls[name] = _base_url(entry["base_url"], f"{where} ({name})")
            elif name not in BUILTIN_VENDORS:
                raise ConfigError(f"{where} ({name}): missing 'base_url' (only built-in vendors may leave it out)")
            if "accepts" in entry:
                accepts[name] = _accepts(entry["accepts"], f"{where} ({name})")
    base_urls.update(file_vendors)
    vendors: dict[str, Vendor] = {}
    for name in base_urls:
        variable = env_name_for_base_url(name)
        override = env.get(variable, "").strip()
        base_url = _base_url(override, variable) if override else base_urls[name]
        vendors[name] = Vendor(name, base_url, accepts.get(name, frozenset()))
    return vendors


def _accepts(value: Any, where: str) -> frozenset[str]:
    """A vendors entry's ``accepts``: a list of OPTIONAL_FIELDS names (empty: it takes none)."""
    known = ", ".join(sorted(OPTIONAL_FIELDS))
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise ConfigError(f"{where}: 'accepts' must be a list of field names ({known}); got {value!r}")
    unknown = sorted(set(value) - OPTIONAL_FIELDS)
    if unknown:
        raise ConfigError(f"{where}: 'accepts' names unknown field {', '.join(map(repr, unknown))}; known: {known}")
    return frozenset(value)


def env_name_for_base_url(vendor: str) -> str:
    """The environment variable that overrides a vendor's base URL, e.g. OPENAI_BASE_URL."""
    return _env_prefix(vendor) + "_BASE_URL"


def env_name_for_api_key(vendor: str, slot: int = 0) -> str:
    """The variable holding a vendor's key without a credentials file: OPENAI_API_KEY, OPENAI_API_KEY_2."""
    return _env_prefix(vendor) + ("_API_KEY" if slot == 0 else f"_API_KEY_{slot}")


def _env_prefix(vendor: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", vendor.upper())


def _load_models(path: str, entries: list[Any], vendors: dict[str, Vendor]) -> tuple[Model, ...]:
    models: list[Model] = []
    seen: set[tuple[str, str]] = set()
    for number, entry in enumerate(entries, start=1):
        where = f"{path}: entry {number}"
        _check_keys(entry, where, required={"vendor", "model"}, optional=_MODEL_KEYS)
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
        model_type = entry.get("type", "chat")
        if model_type not in MODEL_TYPES:
            raise ConfigError(f'{where}: \'type\' must be "chat" or "embedding"; got {model_type!r}')
        models.append(
            Model(
                vendor,
                model_id,
                weight=_weight(entry, where),
                aliases=_aliases(entry, where),
                type=model_type,
                capabilities=_capabilities(entry, where),
                max_output_tokens=_max_output_tokens(entry, where),
                reasoning=entry.get("config", {}).get("support_reasoning") is True,
                price=_price(entry, where),
            )
        )
    if not models:
        raise ConfigError(f"{path}: no models configured; the router would have nothing to route to")
    return tuple(models)


def _weight(entry: dict[str, Any], where: str) -> float:
    """An entry's optional ``weight``: a finite number > 0 (default 1); true/false are not numbers."""
    value = entry.get("weight", 1)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ConfigError(f"{where}: 'weight' must be a number greater than 0; got {value!r}")
    return float(value)


def _aliases(entry: dict[str, Any], where: str) -> tuple[str, ...]:
    value = entry.get("aliases", [])
    if not isinstance(value, list):
        raise ConfigError(f"{where}: 'aliases' must be a list of names; got {value!r}")
    for alias in value:
        if not isinstance(alias, str) or not _ALIAS_NAME.match(alias):
            raise ConfigError(
                f"{where}: alias {alias!r} must be 1-256 letters, digits or . _ : / @ + - "
                "and start with a letter or digit"
            )
    if len(set(value)) != len(value):
        raise ConfigError(f"{where}: 'aliases' lists a name twice")
    return tuple(value)


def _capabilities(entry: dict[str, Any], where: str) -> frozenset[str]:
    """What the entry's ``config`` says the model supports; no ``config`` means everything."""
    if "config" not in entry:
        return CAPABILITIES
    config = entry["config"]
    if not isinstance(config, dict):
        raise ConfigError(f"{where}: 'config' must be an object of support_* flags")
    unknown = sorted(config.keys() - _CONFIG_KEYS.keys() - _OPTION_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown capability {', '.join(repr(k) for k in unknown)} in 'config'; "
            f"known: {', '.join([*_CONFIG_KEYS, *sorted(_OPTION_KEYS)])}"
        )
    for key, flag in config.items():
        if not isinstance(flag, bool):
            raise ConfigError(f"{where}: 'config.{key}' must be true or false; got {flag!r}")
    if config and not config.keys() & _CONFIG_KEYS.keys():
        # A config holding only options (support_reasoning) lists no capabilities: the model keeps
        # its default of everything, so turning an option on never changes which requests it gets.
        return CAPABILITIES
    # A flag left out of a config is false, as in the Go router: the config lists what works.
    return frozenset(name for key, name in _CONFIG_KEYS.items() if config.get(key) is True)


def _max_output_tokens(entry: dict[str, Any], where: str) -> int | None:
    """An entry's optional ``max_output_tokens``: an integer >= 1, or absent."""
    if "max_output_tokens" not in entry:
        return None
    value = entry["max_output_tokens"]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: 'max_output_tokens' must be a whole number of at least 1; got {value!r}")
    return value


def _price(entry: dict[str, Any], where: str) -> Price | None:
    """An entry's optional ``price``: ``{"input", "output"[, "cached_input"]}`` in USD per million
    tokens, each a finite number >= 0; cached input costs what input does unless given."""
    if "price" not in entry:
        return None
    value = entry["price"]
    if not isinstance(value, dict):
        raise ConfigError(f'{where}: \'price\' must be an object like {{"input": 2.5, "output": 10.0}}')
    _check_keys(value, f"{where} price", required={"input", "output"}, optional=_PRICE_KEYS)
    numbers = {}
    for key in _PRICE_KEYS & value.keys():
        number = value[key]
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not 0 <= number < math.inf:
            raise ConfigError(f"{where}: 'price.{key}' must be a number >= 0 (USD per million tokens); got {number!r}")
        numbers[key] = float(number)
    return Price(numbers["input"], numbers["output"], numbers.get("cached_input", numbers["input"]))


def _alias_groups(path: str, models: tuple[Model, ...]) -> dict[str, tuple[Model, ...]]:
    """alias -> its models; an alias may not shadow another entry's model id nor mix model types."""
    groups: dict[str, list[Model]] = {}
    for model in models:
        for alias in model.aliases:
            groups.setdefault(alias, []).append(model)
    for number, model in enumerate(models, start=1):
        for alias in model.aliases:
            where = f"{path}: entry {number} ({model.vendor}/{model.id})"
            shadowed = next((m for m in models if m.id == alias and m is not model), None)
            if shadowed is not None:
                raise ConfigError(
                    f"{where}: alias {alias!r} is the model id of another entry ({shadowed.vendor}/{shadowed.id}); "
                    "clients naming it would not know which they get"
                )
            first = groups[alias][0]
            if first.type != model.type:
                raise ConfigError(
                    f"{where}: alias {alias!r} joins a {model.type} model to the {first.type} model "
                    f"{first.vendor}/{first.id}; an alias groups models of one type"
                )
    return {alias: tuple(members) for alias, members in groups.items()}


def _load_credentials(
    path: str, vendors: dict[str, Vendor], env: Mapping[str, str]
) -> tuple[tuple[Credential, ...], set[str]]:
    """The file's credentials, and the environment variables its ``${NAME}`` values referenced."""
    document = _read_json(path)
    if not isinstance(document, list):
        raise ConfigError(f'{path}: expected a list of {{"platform", "type", "value"}} objects')
    credentials: list[Credential] = []
    referenced: set[str] = set()
    first_entry_of_secret: dict[tuple[str, str], int] = {}
    count_per_vendor: dict[str, int] = {}
    for number, entry in enumerate(document, start=1):
        where = f"{path}: entry {number}"
        _check_keys(entry, where, required={"platform", "value"}, optional={"type", "weight"})
        vendor = _vendor_name(entry["platform"], where)
        where = f"{where} (platform {vendor})"
        if vendor not in vendors:
            raise ConfigError(f"{where}: unknown vendor {vendor!r}; known vendors are {', '.join(sorted(vendors))}")
        kind = entry.get("type", "api-key")
        if kind != "api-key":
            raise ConfigError(f"{where}: 'type' must be \"api-key\"; got {kind!r}")
        secret, variable = _secret(entry["value"], where, env)
        if variable:
            referenced.add(variable)
        if (vendor, secret) in first_entry_of_secret:
            raise ConfigError(f"{where}: same key as entry {first_entry_of_secret[vendor, secret]}; remove one")
        first_entry_of_secret[vendor, secret] = number
        count_per_vendor[vendor] = count_per_vendor.get(vendor, 0) + 1
        credentials.append(Credential(vendor, f"{vendor}#{count_per_vendor[vendor]}", secret, _weight(entry, where)))
    return tuple(credentials), referenced


def _env_key_variables(models: tuple[Model, ...], env: Mapping[str, str]) -> list[tuple[str, str]]:
    """(vendor, variable) for every non-empty <VENDOR>_API_KEY[_N] of a vendor with models, in slot order."""
    return [
        (vendor, name)
        for vendor in dict.fromkeys(model.vendor for model in models)
        for name in (env_name_for_api_key(vendor, slot) for slot in range(ENV_KEY_SLOTS + 1))
        if env.get(name, "").strip()
    ]


def _credentials_from_env(
    models: tuple[Model, ...], env: Mapping[str, str]
) -> tuple[tuple[Credential, ...], tuple[str, ...]]:
    """Credentials from <VENDOR>_API_KEY and <VENDOR>_API_KEY_1..20, and the variables used."""
    credentials: list[Credential] = []
    variable_of_secret: dict[tuple[str, str], str] = {}
    count_per_vendor: dict[str, int] = {}
    used = _env_key_variables(models, env)
    for vendor, variable in used:
        secret = _header_safe(env[variable].strip(), f"environment variable {variable}")
        if (vendor, secret) in variable_of_secret:
            first = variable_of_secret[vendor, secret]
            raise ConfigError(f"environment variable {variable}: same key as {first}; unset one")
        variable_of_secret[vendor, secret] = variable
        count_per_vendor[vendor] = count_per_vendor.get(vendor, 0) + 1
        credentials.append(Credential(vendor, f"{vendor}#{count_per_vendor[vendor]}", secret))
    return tuple(credentials), tuple(variable for _, variable in used)


def _secret(value: Any, where: str, env: Mapping[str, str]) -> tuple[str, str | None]:
    """A credential's key, resolving ``${NAME}`` from the environment, and NAME if it was one."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: 'value' must be a non-empty string")
    reference = _ENV_REFERENCE.match(value.strip())
    name = None
    if reference:
        name = reference.group(1)
        value = env.get(name, "")
        if not value.strip():
            raise ConfigError(f"{where}: environment variable {name} is not set or empty")
        where = f"{where}, environment variable {name}"
    return _header_safe(value.strip(), where), name


def _header_safe(secret: str, where: str) -> str:
    """``secret`` if it can travel in an Authorization header; else an error that does not show it.

    HTTP header values are Latin-1 bytes without control characters: anything else either cannot
    be encoded (the request fails) or splits or corrupts the header.
    """
    for position, char in enumerate(secret, start=1):
        code = ord(char)
        if code > 0xFF:
            problem = f"a character that is not Latin-1 (U+{code:04X}, e.g. a typographic quote or dash)"
        elif code < 0x20 or 0x7F <= code <= 0x9F:
            problem = f"a control character (U+{code:04X})"
        else:
            continue
        raise ConfigError(
            f"{where}: the key contains {problem} at position {position}, which cannot be sent in an "
            "HTTP header; copy the key again"
        )
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
