"""Choosing a combination: odds proportional to weight, skipping the ones cooling down after a failure.

A request's ``model`` resolves to the models it may use (an alias's group, one configured model,
or every model of the request's type), narrowed by ``?vendor=`` and by what the request needs
(images, video, tools, streaming). Each (credential, model) pair of those is one combination with
a chance proportional to its weight: with every weight 1, every combination is equally likely, so
a vendor with more keys or more models gets proportionally more traffic, as the Go router this ports did.
Cooldowns live in a cooldown book (app/cooldowns.py): per worker, or shared through Redis. The
selector reads only the worker's local view, so choosing never waits on the network.

A request that names a session (affinity) is not drawn at random: it goes to the combination
with the highest weighted rendezvous score ``-weight / ln(u)`` among those it may use, ``u`` in
(0, 1) a digest of the session and the combination. The same session so lands on the same
combination in every worker and instance, with no shared state; over many sessions each
combination's share is its weight's; and when one cools down only the sessions it held move (each
to its own next-best, where failover sent it too), and come back once it recovers.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import random
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

from app.catalog import Catalog, Combination, Credential, Model
from app.cooldowns import Cooldowns
from app.errors import InvalidRequest, NotFound, ServiceUnavailable

__all__ = ["Candidates", "Selector", "rendezvous", "share", "share_pools"]

# Words for error messages, in reporting order.
_CAPABILITY_WORDS = {"image": "images", "video": "video", "tools": "tools", "streaming": "streaming"}


class Candidates(tuple):
    """The combinations a request may use (a tuple), with cumulative weights computed once.

    Built once per (vendor, model, kind, needs) and cached, so a weighted draw over all of them
    is a binary search rather than a sum over every combination.
    """

    cumulative: tuple[float, ...]
    total: float
    # Every weight equal (the default): any subset is drawn from uniformly, without the weights.
    uniform: bool

    def __new__(cls, combinations: Iterable[Combination]) -> Candidates:
        self = super().__new__(cls, combinations)
        self.cumulative = tuple(itertools.accumulate(c.weight for c in self))
        self.total = self.cumulative[-1] if self.cumulative else 0.0
        self.uniform = len({c.weight for c in self}) <= 1
        return self


def rendezvous(session: str, combinations: Sequence[Combination]) -> Combination:
    """The combination with the highest weighted rendezvous score for ``session``.

    The digest is keyed by the combination's cooldown key (vendor, base URL, key and model, never
    the credential's position), so every worker and instance with the same keys agrees, and
    reordering the credentials file moves no session. Python's own ``hash`` differs per process.
    """
    if len(combinations) == 1:
        return combinations[0]
    seed = hashlib.blake2b(session.encode("utf-8", "surrogatepass") + b"\0", digest_size=8)
    best, best_score = combinations[0], -math.inf
    for combination in combinations:
        digest = seed.copy()
        digest.update(combination.cooldown_key.encode())
        # 53 bits and half a step: u is strictly inside (0, 1), so the logarithm is finite and < 0.
        u = ((int.from_bytes(digest.digest(), "big") >> 11) + 0.5) / 9007199254740992.0
        score = -combination.weight / math.log(u)
        if score > best_score:
            best, best_score = combination, score
    return best


def share(combination: Combination, candidates: Sequence[Combination]) -> float:
    """``combination``'s percent of the weight of ``candidates`` (its odds when none is cooling)."""
    total = candidates.total if isinstance(candidates, Candidates) else sum(c.weight for c in candidates)
    return 100.0 * combination.weight / total if total else 0.0


def share_pools(catalog: Catalog) -> dict[str, Candidates]:
    """The pools traffic shares are reported for: each model type ("chat", "embedding": requests
    naming no alias or model, no vendor filter), then each alias ("alias fast")."""
    pools = {
        kind: Candidates(c for c in catalog.combinations if c.model.type == kind)
        for kind in dict.fromkeys(c.model.type for c in catalog.combinations)
    }
    for alias, group in catalog.aliases.items():
        pools[f"alias {alias}"] = Candidates(c for c in catalog.combinations if c.model in group)
    return pools


class Selector:
    """Filters combinations for a request and picks one by weight among those not cooling down."""

    def __init__(
        self,
        catalog: Catalog,
        cooldown_seconds: float,
        max_cooldown_seconds: float,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        cooldowns: Cooldowns | None = None,
        paths: Mapping[str, str] | None = None,
        affinity: bool = True,
    ) -> None:
        self._catalog = catalog
        self._affinity = affinity
        # Where requests for each model type are served, for "send it to ..." in errors.
        self._paths = paths or {}
        self._cooldown = cooldown_seconds
        self._max_cooldown = max(max_cooldown_seconds, cooldown_seconds)
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 -- load spreading, not security
        # The book and the selector must tell time alike: deadlines are ``clock()`` values.
        self._cooldowns = cooldowns if cooldowns is not None else Cooldowns(clock)
        self._configured_models = {model.id for model in catalog.models}
        self._vendors_in_use = tuple(dict.fromkeys(c.vendor.name for c in catalog.combinations))
        # Candidate lists are computed once per (vendor filter, model name, kind, needs): a request
        # pays a dict lookup, not a scan of every combination. Names that are neither an alias nor
        # a configured model share one entry, so clients cannot grow the cache.
        self._candidates: dict[tuple[str | None, str | None, str, frozenset[str]], Candidates] = {}

    def candidates(
        self,
        vendor: str | None,
        model: str | None,
        kind: str = "chat",
        needs: frozenset[str] = frozenset(),
        fields: Mapping[str, str] | None = None,
    ) -> Candidates:
        """Every combination a request may use; raises a RouterError naming what is missing.

        ``vendor`` is the ``?vendor=`` filter; ``model`` is the requested name: an alias means its
        group, a configured model id that model, anything else every model of type ``kind``.
        ``needs`` are the capabilities the request uses (see app.capabilities); ``fields`` names
        the client's field asking for each, for the error when no model has one.
        """
        name = model if model in self._catalog.aliases or model in self._configured_models else None
        key = (vendor, name, kind, needs)
        found = self._candidates.get(key)
        if found is None:
            found = Candidates(self._filter(vendor, name, kind, needs, fields or {}))
            self._candidates[key] = found
        return found

    def choose(
        self, candidates: Sequence[Combination], exclude: Collection[str] = (), session: str | None = None
    ) -> Combination | None:
        """One of ``candidates`` not in ``exclude`` (combination keys), by weight; None if none is left.

        Combinations cooling down are skipped and the rest keep their proportions; when all of
        them are cooling, the one that cools down soonest is returned rather than nothing, so a
        request is always tried at least once. With a ``session`` (and affinity on), the choice
        is the session's rendezvous winner instead of a random draw.
        """
        now = self._clock()
        until = self._cooldowns.until
        fresh = [c for c in candidates if c.key not in exclude and until(c.cooldown_key) <= now]
        if fresh:
            if session is not None and self._affinity:
                return rendezvous(session, fresh)
            return self._draw(candidates, fresh)
        rest = [c for c in candidates if c.key not in exclude]
        if not rest:
            return None
        return min(rest, key=lambda c: until(c.cooldown_key))

    def cool_down(self, combination: Combination, retry_after: float | None = None) -> None:
        """Skip ``combination`` for the cooldown, or for the vendor's Retry-After if longer (capped)."""
        seconds = self._cooldown
        if retry_after is not None and retry_after > seconds:
            seconds = min(retry_after, self._max_cooldown)
        self._cooldowns.cool((combination.cooldown_key,), seconds)

    def cool_down_credential(self, credential: Credential) -> None:
        """Skip every combination of a credential the vendor refused (401/403)."""
        keys = [c.cooldown_key for c in self._catalog.combinations if c.credential == credential]
        self._cooldowns.cool(keys, self._cooldown)

    def cooling_count(self) -> int:
        """How many combinations are cooling down now, by this worker's view of the book."""
        return self._cooldowns.cooling_count(self._clock())

    def cooling_by_vendor(self) -> dict[str, int]:
        """Combinations cooling down now per vendor (every vendor with combinations, zeros included)."""
        now = self._clock()
        until = self._cooldowns.until
        counts = dict.fromkeys(self._vendors_in_use, 0)
        for combination in self._catalog.combinations:
            if until(combination.cooldown_key) > now:
                counts[combination.vendor.name] += 1
        return counts

    def _draw(self, candidates: Sequence[Combination], fresh: list[Combination]) -> Combination:
        if len(fresh) == 1:
            return fresh[0]
        precomputed = isinstance(candidates, Candidates)
        if precomputed and candidates.uniform:
            return self._rng.choice(fresh)
        if precomputed and len(fresh) == len(candidates):
            cumulative, total = candidates.cumulative, candidates.total
        else:
            cumulative = list(itertools.accumulate(c.weight for c in fresh))
            total = cumulative[-1]
        index = bisect.bisect_right(cumulative, self._rng.random() * total)
        return fresh[min(index, len(fresh) - 1)]  # min(): float rounding may land on the very end

    def _filter(
        self, vendor: str | None, name: str | None, kind: str, needs: frozenset[str], fields: Mapping[str, str]
    ) -> list[Combination]:
        catalog = self._catalog
        if vendor is not None and vendor not in catalog.model_vendors():
            known = ", ".join(catalog.model_vendors())
            message = f"Unknown vendor {vendor!r}; configured vendors: {known}"
            raise NotFound(message, param="vendor", code="vendor_not_found")
        models = self._resolve(vendor, name, kind)
        fitting = [m for m in models if needs <= m.capabilities]
        if not fitting:
            raise _unsupported(models, needs, _scope(vendor, name, catalog), fields)
        wanted = set(fitting)
        found = [c for c in catalog.combinations if c.model in wanted]
        if not found:
            vendors = {m.vendor for m in fitting}
            missing = [v for v in catalog.vendors_without_credentials if v in vendors]
            raise ServiceUnavailable(
                f"No credentials configured for vendor {', '.join(missing)}: "
                "create the credentials file (see configs/credentials.json.example), set CREDENTIALS_FILE "
                "or set <VENDOR>_API_KEY",
                code="no_credentials",
            )
        return found

    def _wrong_type(self, what: str, its_type: str) -> InvalidRequest:
        path = self._paths.get(its_type)
        return InvalidRequest(f"{what}; send it to {path}" if path else what, param="model", code="wrong_model_type")

    def _resolve(self, vendor: str | None, name: str | None, kind: str) -> list[Model]:
        """The models a requested name stands for, within the vendor filter; never empty."""
        catalog = self._catalog
        if name in catalog.aliases:
            group = catalog.aliases[name]
            if group[0].type != kind:
                raise self._wrong_type(f"Alias {name!r} stands for models of type {group[0].type!r}", group[0].type)
            models = [m for m in group if vendor in (None, m.vendor)]
            if not models:
                message = f"Alias {name!r} has no model of vendor {vendor!r}"
                raise InvalidRequest(message, param="model", code="model_not_found")
            return models
        if name is not None:
            named = [m for m in catalog.models if m.id == name]
            if all(m.type != kind for m in named):
                raise self._wrong_type(f"Model {name!r} has type {named[0].type!r}", named[0].type)
            models = [m for m in named if m.type == kind and vendor in (None, m.vendor)]
            if not models:
                message = f"Model {name!r} is not offered by vendor {vendor!r}"
                raise InvalidRequest(message, param="model", code="model_not_found")
            return models
        models = [m for m in catalog.models if m.type == kind and vendor in (None, m.vendor)]
        if not models:
            where = f" of vendor {vendor}" if vendor else ""
            message = f"No {kind} model{where} is configured"
            raise InvalidRequest(message, param="model", code="model_not_found")
        return models


def _scope(vendor: str | None, name: str | None, catalog: Catalog) -> str:
    """Words for the filter a request applied: " of vendor gemini in alias 'fast'", "" for none."""
    words = f" of vendor {vendor}" if vendor else ""
    if name in catalog.aliases:
        words += f" in alias {name!r}"
    elif name is not None:
        words += f" named {name!r}"
    return words


def _unsupported(models: list[Model], needs: frozenset[str], scope: str, fields: Mapping[str, str]) -> InvalidRequest:
    """The 400 for a request no model fits: names the first capability none of them has."""
    for capability in _CAPABILITY_WORDS:
        if capability in needs and not any(capability in m.capabilities for m in models):
            return InvalidRequest(
                f"No configured model{scope} supports {_CAPABILITY_WORDS[capability]}",
                param=fields.get(capability),
                code="capability_not_supported",
            )
    wanted = [c for c in _CAPABILITY_WORDS if c in needs]
    return InvalidRequest(
        f"No configured model{scope} supports {' and '.join(_CAPABILITY_WORDS[c] for c in wanted)} together",
        param=fields.get(wanted[0]),
        code="capability_not_supported",
    )
