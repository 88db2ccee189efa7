"""Spend control: per-client token and dollar budgets, counted in one ledger.

A budget is a set of limits (``2000000 tokens per day;50 usd per month``), each counted over
calendar windows in UTC. Every call **reserves** before it reaches a vendor: its input estimate
plus its output allowance (the request's max tokens, else the models' ``max_output_tokens``, else
``DEFAULT_OUTPUT_ALLOWANCE``), atomically: the check and the charge are one step in the storage (a
Lua script in Redis; one stretch of code without a greenlet switch in memory), so concurrent
calls can never all see the same room left. When less is left than the allowance, the call's
max tokens is lowered to what is left; when not even the input and one output token fit, it is
refused (``BudgetExceeded``).

While a stream is relayed, a ``StreamMeter`` counts its output (about 4 characters a token); a
stream that outgrows its reservation (the vendor ignored max tokens, or the estimate runs ahead of
it) asks the ledger for more, and is cut when none is left. When the answer is over, the
reservation is **settled**: replaced by the vendor's usage, or by the estimate of what was read
when the vendor sent none. Failed attempts cost nothing: only the answer used is settled.

Prices are per model and known only once a combination is chosen, so a usd reservation is priced
at the dearest candidate's rates (an overestimate that settling corrects), and one reservation
covers the request's whole race. Amounts are kept as floats: tokens count whole, dollars as USD.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from app.environment import SettingsError
from app.errors import RouterError, ServiceUnavailable

if TYPE_CHECKING:
    from app.catalog import Combination, Model, Price
    from app.endpoint import Exchange

__all__ = [
    "DEFAULT_OUTPUT_ALLOWANCE",
    "BudgetExceeded",
    "BudgetLimit",
    "BudgetStorageDown",
    "Budgets",
    "MemoryLedger",
    "RedisLedger",
    "Reservation",
    "StreamMeter",
    "Usage",
    "budget_variable",
    "open_ledger",
    "parse_budget",
    "window_span",
]

log = logging.getLogger(__name__)

# Output tokens reserved for a call that names no max tokens, on models with no max_output_tokens:
# a long answer of most chat models. A budget with less left lowers the call's max tokens to it.
DEFAULT_OUTPUT_ALLOWANCE = 4096
# English text and code average about 4 characters per token with the common tokenizers.
CHARACTERS_PER_TOKEN = 4
# Tokens a stream that outgrew its reservation asks for beyond what it already read: one ledger
# call per this many tokens rather than one per event.
EXTENSION_TOKENS = 64
_LIMIT = re.compile(r"\s*(\d+(?:\.\d+)?)\s+(tokens|usd)\s+per\s+(hour|day|month)\s*\Z", re.IGNORECASE)
# Every router key in Redis starts with this, apart from other users of the same Redis.
_PREFIX = "generative-api-router:budget"
# A window's counter outlives the window this long, so a late settlement still finds it.
_KEEP_AFTER_WINDOW = 86400.0
# After Redis failed, calls are refused at once for this long before it is tried again: a dead
# Redis then costs one call a timeout now and then, not every call.
_RETRY_STORAGE_SECONDS = 2.0
# Seconds Redis gets to connect or answer (one retry on a fresh connection): a dead Redis costs a
# call about a second at most, never a long hang.
_REDIS_TIMEOUT = 0.5


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


# -- usage and prices -------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """Tokens one answer cost: input (cached included), the cached part of it, and output."""

    input: int = 0
    cached_input: int = 0
    output: int = 0

    @classmethod
    def from_vendor(cls, usage: object) -> Usage | None:
        """A vendor's chat or embeddings ``usage`` object, or None when it holds no counts."""
        if not isinstance(usage, dict):
            return None
        prompt, completion = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
        if prompt is None and completion is None:
            return None
        details = usage.get("prompt_tokens_details")
        cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else None
        prompt = prompt or 0
        return cls(prompt, min(cached or 0, prompt), completion or 0)


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


@dataclass(frozen=True)
class Rates:
    """What one token costs in a limit's unit: input, cached input, output."""

    input: float
    cached_input: float
    output: float

    def cost(self, usage: Usage) -> float:
        fresh = usage.input - usage.cached_input
        return fresh * self.input + usage.cached_input * self.cached_input + usage.output * self.output


_TOKEN_RATES = Rates(1.0, 1.0, 1.0)


def rates(unit: str, price: Price | None) -> Rates:
    """A token's cost in ``unit``: 1 in tokens; USD per million / 1e6 in usd."""
    if unit == "tokens":
        return _TOKEN_RATES
    if price is None:
        raise AssertionError("a usd budget with an unpriced model")  # check_prices stops start-up first
    return Rates(price.input / 1e6, price.cached_input / 1e6, price.output / 1e6)


def dearest(prices: Sequence[Price | None]) -> Price | None:
    """The highest of each rate among ``prices``: what a reservation before the choice assumes."""
    from app.catalog import Price

    known = [price for price in prices if price is not None]
    if not known:
        return None
    return Price(
        max(price.input for price in known),
        max(price.output for price in known),
        max(price.cached_input for price in known),
    )


def text_tokens(characters: int) -> int:
    return -(-characters // CHARACTERS_PER_TOKEN)


def chunk_tokens(chunk: dict[str, Any]) -> int:
    """About how many output tokens a normalized chat stream chunk carries (text, reasoning, tool calls)."""
    characters = 0
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        return 0
    for choice in choices:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if isinstance(delta, dict):
            characters += _message_characters(delta)
    return text_tokens(characters)


def answer_tokens(document: dict[str, Any]) -> int:
    """About how many output tokens a whole chat completion holds (for a vendor that sent no usage)."""
    characters = 0
    choices = document.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            message = choice.get("message") if isinstance(choice, dict) else None
            if isinstance(message, dict):
                characters += _message_characters(message)
    return text_tokens(characters)


def _message_characters(part: dict[str, Any]) -> int:
    characters = 0
    for key in ("content", "reasoning_content", "reasoning", "refusal"):
        text = part.get(key)
        if isinstance(text, str):
            characters += len(text)
    calls = part.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                for key in ("name", "arguments"):
                    text = function.get(key)
                    if isinstance(text, str):
                        characters += len(text)
    return characters


# -- storage ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One limit's counter in one window, and what a charge costs on it.

    ``fixed`` is charged whatever is granted; ``per_token`` for each output token granted.
    """

    key: str
    limit: float
    expires_at: float  # Unix seconds
    fixed: float = 0.0
    per_token: float = 0.0


@dataclass(frozen=True)
class Grant:
    """A ledger's answer to a reservation: tokens granted (None: refused, ``refused`` lists which
    lines had no room) and each line's spend afterwards."""

    tokens: int | None
    spent: tuple[float, ...]
    refused: tuple[int, ...] = ()


class Ledger(Protocol):
    """Where spend is counted: one number per limit and window."""

    where: str

    def reserve(self, lines: Sequence[Line], wanted: int, minimum: int) -> Grant:
        """Atomically: refuse when a line has not ``fixed + minimum * per_token`` left (or nothing),
        else grant the most output tokens up to ``wanted`` that every line has room for and charge
        each line ``fixed + granted * per_token``."""

    def adjust(self, lines: Sequence[Line], deltas: Sequence[float]) -> tuple[float, ...]:
        """Add ``deltas`` (may be negative) to the lines; their spend afterwards."""

    def spent(self, keys: Sequence[str]) -> tuple[float, ...]:
        """What each key has spent (0 when unknown)."""


def _decide(lines: Sequence[Line], spent: Sequence[float], wanted: int, minimum: int) -> Grant:
    """The reservation rule both storages apply (the Lua script below is the same, line for line)."""
    granted = wanted
    refused = []
    for index, (line, used) in enumerate(zip(lines, spent, strict=True)):
        left = line.limit - used
        if left <= 0 or left < line.fixed + minimum * line.per_token:
            refused.append(index)
        elif line.per_token > 0:
            granted = min(granted, math.floor((left - line.fixed) / line.per_token))
    if refused:
        return Grant(None, tuple(spent), tuple(refused))
    return Grant(max(granted, 0), ())


class MemoryLedger:
    """Counts in this worker process: no greenlet switch between a check and its charge."""

    where = "memory://"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._spent: dict[str, float] = {}
        self._expires: dict[str, float] = {}
        self._clock = clock

    def reserve(self, lines: Sequence[Line], wanted: int, minimum: int) -> Grant:
        spent = self.spent([line.key for line in lines])
        grant = _decide(lines, spent, wanted, minimum)
        if grant.tokens is None:
            return grant
        charges = [line.fixed + grant.tokens * line.per_token for line in lines]
        return Grant(grant.tokens, self.adjust(lines, charges))

    def adjust(self, lines: Sequence[Line], deltas: Sequence[float]) -> tuple[float, ...]:
        after = []
        for line, delta in zip(lines, deltas, strict=True):
            if line.key not in self._spent:
                self._forget_expired()
            value = self._spent[line.key] = self._spent.get(line.key, 0.0) + delta
            self._expires[line.key] = line.expires_at
            after.append(value)
        return tuple(after)

    def spent(self, keys: Sequence[str]) -> tuple[float, ...]:
        return tuple(self._spent.get(key, 0.0) for key in keys)

    def _forget_expired(self) -> None:
        # Run when a new window's counter appears: old windows are never read again.
        now = self._clock()
        for key in [key for key, at in self._expires.items() if at <= now]:
            del self._spent[key], self._expires[key]


# KEYS: one counter per line. ARGV: wanted, minimum, then per line: limit, fixed, per_token,
# expires_at_ms. The rule of _decide, then the charges, in one atomic step. Numbers return as
# strings: Redis would truncate a Lua number to an integer.
_RESERVE_SCRIPT = """
local wanted, minimum = tonumber(ARGV[1]), tonumber(ARGV[2])
local granted, refused, spent = wanted, {}, {}
for i = 1, #KEYS do
  local base = 2 + (i - 1) * 4
  local limit, fixed, per = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
  local used = tonumber(redis.call('GET', KEYS[i]) or '0')
  spent[i] = tostring(used)
  local left = limit - used
  if left <= 0 or left < fixed + minimum * per then
    refused[#refused + 1] = i - 1
  elseif per > 0 then
    local fit = math.floor((left - fixed) / per)
    if fit < granted then granted = fit end
  end
end
if #refused > 0 then
  return {-1, refused, spent}
end
if granted < 0 then granted = 0 end
for i = 1, #KEYS do
  local base = 2 + (i - 1) * 4
  local charge = tonumber(ARGV[base + 2]) + granted * tonumber(ARGV[base + 3])
  spent[i] = redis.call('INCRBYFLOAT', KEYS[i], string.format('%.17g', charge))
  redis.call('PEXPIREAT', KEYS[i], ARGV[base + 4])
end
return {granted, {}, spent}
"""

# KEYS: counters; ARGV: per key a delta and expires_at_ms. Their values afterwards.
_ADJUST_SCRIPT = """
local after = {}
for i = 1, #KEYS do
  after[i] = redis.call('INCRBYFLOAT', KEYS[i], ARGV[2 * i - 1])
  redis.call('PEXPIREAT', KEYS[i], ARGV[2 * i])
end
return after
"""


class RedisLedger:
    """Counts in Redis, shared by every worker and instance pointed at it.

    Fails closed: while Redis does not answer, every call under a budget is refused with 503
    (``BudgetStorageDown``): an operator who set a budget pays the bill, and spending without a
    counter is what a budget exists to prevent. One error line per outage, one warning when it
    answers again.
    """

    def __init__(self, url: str) -> None:
        import redis  # only when budgets are counted in Redis: a router without never loads it

        from app.redact import register_secrets, without_password

        password = urlsplit(url).password
        if password:
            register_secrets([password])
        self.where = without_password(url)
        # redis-py, as for rate limits and cooldowns: a script is sent once and then called by its
        # digest (EVALSHA); a Redis that does not answer within the timeout is down, not waited for.
        self._redis = redis.Redis.from_url(url, socket_timeout=_REDIS_TIMEOUT, socket_connect_timeout=_REDIS_TIMEOUT)
        self._errors = redis.exceptions.RedisError
        self._reserve = self._redis.register_script(_RESERVE_SCRIPT)
        self._adjust = self._redis.register_script(_ADJUST_SCRIPT)
        self._down_since: float | None = None

    def reserve(self, lines: Sequence[Line], wanted: int, minimum: int) -> Grant:
        args: list[Any] = [wanted, minimum]
        for line in lines:
            args += [repr(line.limit), repr(line.fixed), repr(line.per_token), int(line.expires_at * 1000)]
        granted, refused, spent = self._call(lambda: self._reserve(keys=[line.key for line in lines], args=args))
        values = tuple(float(value) for value in spent)
        if granted < 0:
            return Grant(None, values, tuple(int(index) for index in refused))
        return Grant(int(granted), values)

    def adjust(self, lines: Sequence[Line], deltas: Sequence[float]) -> tuple[float, ...]:
        args: list[Any] = []
        for line, delta in zip(lines, deltas, strict=True):
            args += [repr(float(delta)), int(line.expires_at * 1000)]
        after = self._call(lambda: self._adjust(keys=[line.key for line in lines], args=args))
        return tuple(float(value) for value in after)

    def spent(self, keys: Sequence[str]) -> tuple[float, ...]:
        values = self._call(lambda: self._redis.mget(keys))
        return tuple(float(value) if value is not None else 0.0 for value in values)

    def _call(self, action: Callable[[], Any]) -> Any:
        down_since = self._down_since
        if down_since is not None and time.monotonic() - down_since < _RETRY_STORAGE_SECONDS:
            raise self._down()
        try:
            result = action()
        except self._errors as exc:
            if down_since is None:
                log.error(
                    "budget storage %s unreachable (%s): calls of clients with a budget are refused with 503 "
                    "until it answers again (tried again every %g s)",
                    self.where,
                    type(exc).__name__,
                    _RETRY_STORAGE_SECONDS,
                )
            self._down_since = time.monotonic()
            raise self._down() from None
        if down_since is not None:
            self._down_since = None
            log.warning("budget storage %s answers again: budgets are counted there again", self.where)
        return result

    def _down(self) -> BudgetStorageDown:
        wait = math.ceil(_RETRY_STORAGE_SECONDS)
        return BudgetStorageDown(
            "The budget storage is unreachable, so calls under a budget are refused until it answers again.",
            headers={"Retry-After": str(wait)},
        )


def open_ledger(storage: str) -> Ledger:
    """The ledger ``BUDGET_STORAGE`` names: memory:// or a Redis URL."""
    if storage == "memory://":
        return MemoryLedger()
    return RedisLedger(storage)


# -- the service ------------------------------------------------------------------------------


class BudgetMetrics(Protocol):
    def budget_spent_now(self, client: str, limit: BudgetLimit, spent: float, resets_at: float) -> None: ...

    def budget_rejected(self, client: str) -> None: ...

    def budget_cut(self, client: str) -> None: ...


class Budgets:
    """Each client's budget over one ledger: reserve before a call, settle after, report."""

    def __init__(
        self,
        limits: Mapping[str, tuple[BudgetLimit, ...]],
        ledger: Ledger,
        metrics: BudgetMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._limits = dict(limits)
        self.ledger = ledger
        self._metrics = metrics
        self._clock = clock
        self._windows: dict[str, tuple[float, float]] = {}  # window -> its current span, until it ends

    def limits(self, client: str) -> tuple[BudgetLimit, ...]:
        return self._limits.get(client, ())

    def reserve(self, client: str, exchange: Exchange, candidates: Sequence[Combination]) -> Reservation | None:
        """Reserve ``exchange``'s input estimate and output allowance on ``client``'s budget.

        None when the client has no budget. Raises BudgetExceeded when not even the input and one
        output token fit, BudgetStorageDown when the ledger cannot be reached. Lowers the
        exchange's max tokens when less is left than its allowance.
        """
        limits = self._limits.get(client)
        if not limits:
            return None
        price = dearest([combination.model.price for combination in candidates]) if _priced(limits) else None
        input_tokens = exchange.estimated_input_tokens()
        allowance = exchange.output_allowance()
        if allowance is None:
            ceilings = [combination.model.max_output_tokens for combination in candidates]
            known = [ceiling for ceiling in ceilings if ceiling is not None]
            allowance = max(known) if known and len(known) == len(ceilings) else DEFAULT_OUTPUT_ALLOWANCE
        now = self._clock()
        lines = []
        for limit in limits:
            rate = rates(limit.unit, price)
            lines.append(self._line(client, limit, now, input_tokens * rate.input, rate.output))
        grant = self.ledger.reserve(lines, allowance, min(allowance, 1))
        if grant.tokens is None:
            if self._metrics is not None:
                self._metrics.budget_rejected(client)
            raise self._exceeded(client, limits, grant.refused, now)
        self._publish(client, limits, lines, grant.spent)
        if grant.tokens < allowance:
            exchange.limit_output(grant.tokens)
        return Reservation(self, client, limits, tuple(lines), input_tokens, grant.tokens, allowance)

    def status(self, client: str) -> list[dict[str, Any]]:
        """``client``'s budgets as GET /v1/budget shows them."""
        limits = self._limits.get(client, ())
        if not limits:
            return []
        now = self._clock()
        lines = [self._line(client, limit, now) for limit in limits]
        spent = self.ledger.spent([line.key for line in lines])
        self._publish(client, limits, lines, spent)
        return [
            {
                "limit": _number(limit.amount, limit.unit),
                "unit": limit.unit,
                "window": limit.window,
                "spent": _number(used, limit.unit),
                "remaining": _number(max(limit.amount - used, 0.0), limit.unit),
                "resets_at": rfc3339(line.expires_at - _KEEP_AFTER_WINDOW),
            }
            for limit, line, used in zip(limits, lines, spent, strict=True)
        ]

    def _line(self, client: str, limit: BudgetLimit, now: float, fixed: float = 0.0, per_token: float = 0.0) -> Line:
        span = self._windows.get(limit.window)
        if span is None or not span[0] <= now < span[1]:
            span = self._windows[limit.window] = window_span(limit.window, now)  # once per window, not per call
        start, end = span
        key = f"{_PREFIX}:{client}:{limit.unit}:{limit.window}:{int(start)}"
        return Line(key, limit.amount, end + _KEEP_AFTER_WINDOW, fixed, per_token)

    def _exceeded(
        self, client: str, limits: tuple[BudgetLimit, ...], refused: Sequence[int], now: float
    ) -> BudgetExceeded:
        # A call can succeed again only once every spent limit has reset: the latest reset.
        resets = max(window_span(limits[index].window, now)[1] for index in refused)
        wait = max(math.ceil(resets - now), 1)
        names = " and ".join(limits[index].describe() for index in refused)
        return BudgetExceeded(
            f"budget exceeded: client {client} has spent its {names}; it resets at {rfc3339(resets)} (in {wait} s).",
            headers={"Retry-After": str(wait)},
        )

    def _publish(
        self, client: str, limits: Sequence[BudgetLimit], lines: Sequence[Line], spent: Sequence[float]
    ) -> None:
        if self._metrics is None or not spent:
            return
        for limit, line, used in zip(limits, lines, spent, strict=True):
            self._metrics.budget_spent_now(client, limit, used, line.expires_at - _KEEP_AFTER_WINDOW)


def _priced(limits: Sequence[BudgetLimit]) -> bool:
    return any(limit.unit == "usd" for limit in limits)


def _number(value: float, unit: str) -> float | int:
    # Tokens are whole; dollars to a millionth of a cent is more than any bill shows.
    return round(value) if unit == "tokens" else round(value, 8)


class Reservation:
    """One request's hold on its client's budget, from before its first attempt to its settlement."""

    def __init__(
        self,
        budgets: Budgets,
        client: str,
        limits: tuple[BudgetLimit, ...],
        lines: tuple[Line, ...],
        input_tokens: int,
        output_tokens: int,
        allowance: int,
    ) -> None:
        self._budgets = budgets
        self.client = client
        self._limits = limits
        self._lines = lines
        self.input_tokens = input_tokens  # the estimate reserved
        self.output_tokens = output_tokens  # output tokens reserved (may grow while streaming)
        self.lowered = output_tokens < allowance  # the request's max tokens was lowered to output_tokens
        self._charged = [line.fixed + output_tokens * line.per_token for line in lines]
        self._settled = False

    def meter(self, combination: Combination) -> StreamMeter:
        """A meter for one attempt's stream on ``combination``."""
        return StreamMeter(self, combination)

    def extend(self, tokens: int, model: Model) -> bool:
        """Charge ``tokens`` more output (read beyond the reservation) and hold some more if there
        is room; False when the budget has no room for them (the stream is then cut)."""
        lines = []
        for limit, line in zip(self._limits, self._lines, strict=True):
            rate = rates(limit.unit, model.price).output
            lines.append(Line(line.key, line.limit, line.expires_at, tokens * rate, rate))
        try:
            grant = self._budgets.ledger.reserve(lines, EXTENSION_TOKENS, 0)
        except BudgetStorageDown:
            return False  # fail closed, as for a new call
        if grant.tokens is None:
            return False
        for index, line in enumerate(lines):
            self._charged[index] += line.fixed + grant.tokens * line.per_token
        self.output_tokens += tokens + grant.tokens
        self._budgets._publish(self.client, self._limits, self._lines, grant.spent)
        return True

    def settle(self, usage: Usage | None, model: Model | None) -> None:
        """Replace the reservation by what was used (nothing: ``usage`` None). Once; never raises."""
        if self._settled:
            return
        self._settled = True
        costs = (
            [rates(limit.unit, model.price).cost(usage) for limit in self._limits]
            if usage is not None and model is not None
            else [0.0] * len(self._limits)
        )
        deltas = [cost - charged for cost, charged in zip(costs, self._charged, strict=True)]
        if not any(deltas):
            return
        try:
            spent = self._budgets.ledger.adjust(self._lines, deltas)
        except BudgetStorageDown:
            # The reservation stays charged: never less than what a vendor stopped at max tokens used.
            log.error("budget of %s not settled: storage unreachable; its reservation stays charged", self.client)
            return
        except Exception:
            log.exception("budget of client %s not settled", self.client)
            return
        self._budgets._publish(self.client, self._limits, self._lines, spent)

    def settle_whole(self, usage: object, document: dict[str, Any] | None, model: Model | None) -> None:
        """Settle a whole answer: the vendor's usage, else the input estimate and the answer's text."""
        counted = Usage.from_vendor(usage)
        if counted is None:
            output = answer_tokens(document) if document is not None else 0
            counted = Usage(self.input_tokens, 0, output)
        self.settle(counted, model)

    def settle_stream(self, meter: StreamMeter | None, usage: object, cut: bool) -> None:
        """Settle a stream: the vendor's usage, else the input estimate and every output token read."""
        if cut:
            metrics = self._budgets._metrics
            if metrics is not None:
                metrics.budget_cut(self.client)
        if meter is None:
            self.settle(None, None)
            return
        counted = Usage.from_vendor(usage) or Usage(self.input_tokens, 0, meter.used)
        self.settle(counted, meter.combination.model)

    def exceeded(self) -> BudgetExceeded:
        """The error that ends a stream cut for want of budget."""
        names = " and ".join(limit.describe() for limit in self._limits)
        return BudgetExceeded(f"budget exceeded: client {self.client} has spent its budget ({names}); answer cut.")


class StreamMeter:
    """Counts one stream's output as it is read: an estimate per event (about 4 characters a
    token of text, reasoning and tool calls). ``over`` says when the stream must be cut."""

    __slots__ = ("_reservation", "combination", "used")

    def __init__(self, reservation: Reservation, combination: Combination) -> None:
        self._reservation = reservation
        self.combination = combination
        self.used = 0

    def count(self, chunk: dict[str, Any]) -> None:
        self.used += chunk_tokens(chunk)

    def over(self) -> bool:
        """Whether the budget is spent: the stream read beyond its reservation and no room is left."""
        reservation = self._reservation
        beyond = self.used - reservation.output_tokens
        if beyond <= 0:
            return False
        return not reservation.extend(beyond, self.combination.model)

    def error(self) -> BudgetExceeded:
        return self._reservation.exceeded()
