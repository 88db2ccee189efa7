"""Budgets as configured: limits (``2000000 tokens per day;50 usd per month``), their calendar
windows in UTC, prices checked against them, and the errors a budget answers with."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from app.environment import SettingsError
from app.errors import RouterError, ServiceUnavailable

if TYPE_CHECKING:
    from app.catalog import Model


__all__ = [
    "BudgetExceeded",
    "BudgetLimit",
    "BudgetStorageDown",
    "budget_variable",
    "check_prices",
    "parse_budget",
    "rfc3339",
    "window_span",
]

_LIMIT = re.compile(r"\s*(\d+(?:\.\d+)?)\s+(tokens|usd)\s+per\s+(hour|day|month)\s*\Z", re.IGNORECASE)


# -- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetLimit:
    """One limit of a budget: ``amount`` tokens or USD per calendar ``window`` (UTC)."""

    amount: float
    unit: str  # "tokens" or "usd"
    window: str  # "hour", "day" or "month"

    def describe(self) -> str:
        amount = f"{int(self.amount)}" if self.unit == "tokens" else f"{self.amount:g}"
        return f"{amount} {self.unit} per {self.window}"


def parse_budget(value: str, variable: str) -> tuple[BudgetLimit, ...]:
    """``2000000 tokens per day;50 usd per month`` -> its limits; SettingsError naming ``variable``."""
    limits: list[BudgetLimit] = []
    for part in value.split(";"):
        if not part.strip():
            continue
        match = _LIMIT.match(part)
        if match is None:
            raise SettingsError(
                f"{variable} must be ';'-separated limits like '2000000 tokens per day' or '50 usd per month' "
                f"(units tokens, usd; windows hour, day, month); got {part.strip()!r}"
            )
        amount, unit, window = float(match[1]), match[2].lower(), match[3].lower()
        if amount <= 0 or amount == math.inf:
            raise SettingsError(f"{variable}: a limit must be more than 0; got {part.strip()!r}")
        if unit == "tokens" and amount != int(amount):
            raise SettingsError(f"{variable}: a token limit is a whole number; got {part.strip()!r}")
        if any(limit.unit == unit and limit.window == window for limit in limits):
            raise SettingsError(f"{variable} names {unit} per {window} twice")
        limits.append(BudgetLimit(amount, unit, window))
    if not limits:
        raise SettingsError(f"{variable} is set but holds no limit; unset it for no budget")
    return tuple(limits)


def budget_variable(name: str) -> str:
    """The variable holding a client's own budget: ``team.a`` -> ``BUDGET_TEAM_A``."""
    return "BUDGET_" + re.sub(r"[^A-Z0-9_]", "_", name.upper())


def window_span(window: str, now: float) -> tuple[float, float]:
    """The calendar window (UTC) holding ``now``: its start and end, in Unix seconds."""
    moment = datetime.fromtimestamp(now, UTC)
    if window == "hour":
        start = moment.replace(minute=0, second=0, microsecond=0)
        return start.timestamp(), start.timestamp() + 3600
    if window == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.timestamp(), start.timestamp() + 86400
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start.timestamp(), end.timestamp()


def rfc3339(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_prices(limits: Mapping[str, tuple[BudgetLimit, ...]], models: Sequence[Model]) -> None:
    """A usd budget needs every model's price: a model without one would be spent for free."""
    if not any(limit.unit == "usd" for client in limits.values() for limit in client):
        return
    unpriced = [f"{model.vendor}/{model.id}" for model in models if model.price is None]
    if unpriced:
        raise SettingsError(
            f"a usd budget is set but model {unpriced[0]} has no price; add "
            '"price": {"input": ..., "output": ...} (USD per million tokens) to every model in the models file'
            + (f" (also missing: {', '.join(unpriced[1:])})" if len(unpriced) > 1 else "")
        )


# -- errors -----------------------------------------------------------------------------------


class BudgetExceeded(RouterError):
    """A client's budget has no room for a call (429), or ran out mid-stream (the error event)."""

    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"


class BudgetStorageDown(ServiceUnavailable):
    """The shared budget storage does not answer: calls under a budget are refused rather than
    spent uncounted."""

    code = "budget_storage_unavailable"
