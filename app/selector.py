"""Choosing a combination: even odds over every match, skipping the ones cooling down after a failure.

Each (credential, model) pair is one combination with the same chance as every other, so a vendor
with more keys or more models gets proportionally more traffic, as the seed router did. State is
per worker process and touched only between greenlet switches, so no lock is needed.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection, Sequence

from app.catalog import Catalog, Combination, Credential
from app.cooldowns import Cooldowns
from app.errors import InvalidRequest, NotFound, ServiceUnavailable

__all__ = ["Selector"]


class Selector:
    """Filters combinations for a request and picks one at random among those not cooling down."""

    def __init__(
        self,
        catalog: Catalog,
        cooldown_seconds: float,
        max_cooldown_seconds: float,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        cooldowns: Cooldowns | None = None,
    ) -> None:
        self._catalog = catalog
        self._cooldown = cooldown_seconds
        self._max_cooldown = max(max_cooldown_seconds, cooldown_seconds)
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 -- load spreading, not security
        # The book and the selector must tell time alike: deadlines are ``clock()`` values.
        self._cooldowns = cooldowns if cooldowns is not None else Cooldowns(clock)
        self._configured_models = {model.id for model in catalog.models}
        # Candidate lists are computed once per (vendor filter, model filter): a request pays a
        # dict lookup, not a scan of every combination.
        self._candidates: dict[tuple[str | None, str | None], tuple[Combination, ...]] = {}

    def candidates(self, vendor: str | None, model: str | None) -> tuple[Combination, ...]:
        """Every combination a request may use; raises a RouterError naming what is missing.

        ``vendor`` is the ``?vendor=`` filter; ``model`` is the requested model, which only
        narrows the choice when it is a configured model id.
        """
        wanted_model = model if model in self._configured_models else None
        key = (vendor, wanted_model)
        found = self._candidates.get(key)
        if found is None:
            found = self._filter(vendor, wanted_model)
            self._candidates[key] = found
        return found

    def choose(self, candidates: Sequence[Combination], exclude: Collection[str] = ()) -> Combination | None:
        """One of ``candidates`` not in ``exclude`` (combination keys), or None if none is left.

        Combinations cooling down are skipped; when all of them are, the one that cools down
        soonest is returned rather than nothing, so a request is always tried at least once.
        """
        now = self._clock()
        until = self._cooldowns.until
        fresh = [c for c in candidates if c.key not in exclude and until(c.key) <= now]
        if fresh:
            return self._rng.choice(fresh)
        rest = [c for c in candidates if c.key not in exclude]
        if not rest:
            return None
        return min(rest, key=lambda c: until(c.key))

    def cool_down(self, combination: Combination, retry_after: float | None = None) -> None:
        """Skip ``combination`` for the cooldown, or for the vendor's Retry-After if longer (capped)."""
        seconds = self._cooldown
        if retry_after is not None and retry_after > seconds:
            seconds = min(retry_after, self._max_cooldown)
        self._cooldowns.cool((combination.key,), seconds)

    def cool_down_credential(self, credential: Credential) -> None:
        """Skip every combination of a credential the vendor refused (401/403)."""
        keys = [c.key for c in self._catalog.combinations if c.credential == credential]
        self._cooldowns.cool(keys, self._cooldown)

    def cooling_count(self) -> int:
        """How many combinations are cooling down now, by this worker's view of the book."""
        return self._cooldowns.cooling_count(self._clock())

    def _filter(self, vendor: str | None, model: str | None) -> tuple[Combination, ...]:
        catalog = self._catalog
        if vendor is not None and vendor not in catalog.model_vendors():
            known = ", ".join(catalog.model_vendors())
            message = f"Unknown vendor {vendor!r}; configured vendors: {known}"
            raise NotFound(message, param="vendor", code="vendor_not_found")
        if (
            vendor is not None
            and model is not None
            and not any(m.vendor == vendor and m.id == model for m in catalog.models)
        ):
            message = f"Model {model!r} is not offered by vendor {vendor!r}"
            raise InvalidRequest(message, param="model", code="model_not_found")
        found = tuple(
            c
            for c in catalog.combinations
            if (vendor is None or c.vendor.name == vendor) and (model is None or c.model.id == model)
        )
        if not found:
            wanted = {m.vendor for m in catalog.models if vendor in (None, m.vendor) and model in (None, m.id)}
            missing = [v for v in catalog.vendors_without_credentials if v in wanted]
            raise ServiceUnavailable(
                f"No credentials configured for vendor {', '.join(missing)}: "
                "create the credentials file (see configs/credentials.json.example) or set CREDENTIALS_FILE",
                code="no_credentials",
            )
        return found
