"""Spend control: per-client budgets reserved before a call, metered during a stream, settled after.

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
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from app.budgets.ledger import KEEP_AFTER_WINDOW, PREFIX, Grant, Ledger, Line
from app.budgets.limits import BudgetExceeded, BudgetLimit, BudgetStorageDown, rfc3339, window_span
from app.budgets.tokens import Usage, answer_tokens, chunk_tokens, dearest, rates

if TYPE_CHECKING:
    from app.catalog import Combination, Model
    from app.endpoint import Exchange
    from app.errors import RouterError


__all__ = ["DEFAULT_OUTPUT_ALLOWANCE", "BudgetMetrics", "Budgets", "Reservation", "StreamMeter"]

log = logging.getLogger(__name__)

# Output tokens reserved for a call that names no max tokens, on models with no max_output_tokens:
# a long answer of most chat models. A budget with less left lowers the call's max tokens to it.
DEFAULT_OUTPUT_ALLOWANCE = 4096
# Tokens a stream that outgrew its reservation asks for beyond what it already read: one ledger
# call per this many tokens rather than one per event.
EXTENSION_TOKENS = 64
# The most output tokens one call reserves: Lua (Redis) counts exactly only up to 2^53, and a
# client's max tokens may be any JSON integer.
MOST_TOKENS = 2**53


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
        # Each answer asked for (chat's n) may use the whole allowance, and the vendor bills them all.
        choices = exchange.choices()
        wanted = min(allowance * choices, MOST_TOKENS)
        now = self._clock()
        lines = []
        for limit in limits:
            rate = rates(limit.unit, price)
            lines.append(self._line(client, limit, now, input_tokens * rate.input, rate.output))
        grant = self.ledger.reserve(lines, wanted, min(wanted, choices))
        if grant.tokens is None:
            if self._metrics is not None:
                self._metrics.budget_rejected(client)
            raise self._exceeded(client, limits, lines, grant, min(wanted, choices), now)
        self._publish(client, limits, lines, grant.spent)
        if grant.tokens < wanted:
            exchange.limit_output(max(grant.tokens // choices, 1))
        return Reservation(self, client, limits, tuple(lines), input_tokens, grant.tokens, wanted, choices)

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
                "resets_at": rfc3339(line.expires_at - KEEP_AFTER_WINDOW),
            }
            for limit, line, used in zip(limits, lines, spent, strict=True)
        ]

    def _line(self, client: str, limit: BudgetLimit, now: float, fixed: float = 0.0, per_token: float = 0.0) -> Line:
        span = self._windows.get(limit.window)
        if span is None or not span[0] <= now < span[1]:
            span = self._windows[limit.window] = window_span(limit.window, now)  # once per window, not per call
        start, end = span
        key = f"{PREFIX}:{client}:{limit.unit}:{limit.window}:{int(start)}"
        return Line(key, limit.amount, end + KEEP_AFTER_WINDOW, fixed, per_token)

    def _exceeded(
        self,
        client: str,
        limits: tuple[BudgetLimit, ...],
        lines: Sequence[Line],
        grant: Grant,
        minimum: int,
        now: float,
    ) -> BudgetExceeded:
        # A call can succeed again only once every limit without room has reset: the latest reset.
        refused = grant.refused
        resets = max(window_span(limits[index].window, now)[1] for index in refused)
        wait = max(math.ceil(resets - now), 1)
        reasons = []
        for index in refused:
            limit, line = limits[index], lines[index]
            left = limit.amount - grant.spent[index]
            if left <= 0:
                reasons.append(f"has spent its {limit.describe()}")
                continue
            needed = line.fixed + minimum * line.per_token
            whole = " (more than the whole limit)" if needed > limit.amount else ""
            what = "its input estimate and one output token per answer" if minimum else "its input estimate"
            reasons.append(
                f"has {_amount(left, limit.unit, math.floor)} left of its {limit.describe()}, and this request "
                f"needs at least {_amount(needed, limit.unit, math.ceil)}{whole}: {what}"
            )
        return BudgetExceeded(
            f"budget exceeded: client {client} {' and '.join(reasons)}; it resets at {rfc3339(resets)} (in {wait} s).",
            headers={"Retry-After": str(wait)},
        )

    def _publish(
        self, client: str, limits: Sequence[BudgetLimit], lines: Sequence[Line], spent: Sequence[float]
    ) -> None:
        if self._metrics is None or not spent:
            return
        for limit, line, used in zip(limits, lines, spent, strict=True):
            self._metrics.budget_spent_now(client, limit, used, line.expires_at - KEEP_AFTER_WINDOW)


def _priced(limits: Sequence[BudgetLimit]) -> bool:
    return any(limit.unit == "usd" for limit in limits)


def _amount(value: float, unit: str, rounded: Callable[[float], int]) -> str:
    """``value`` in ``unit`` as a message says it, ``rounded`` (down what is left, up what is
    needed): whole tokens, dollars to a millionth (float noise below that ignored)."""
    if unit == "tokens":
        return f"{rounded(round(value, 6))} tokens"
    return f"{rounded(round(value * 1e6, 6)) / 1e6:.6f} usd"


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
        choices: int = 1,
    ) -> None:
        self._budgets = budgets
        self.client = client
        self._limits = limits
        self._lines = lines
        self.input_tokens = input_tokens  # the estimate reserved
        self.output_tokens = output_tokens  # output tokens reserved (may grow while streaming)
        self.lowered = output_tokens < allowance  # the request's max tokens was lowered (output_tokens // choices)
        self.choices = choices  # answers asked for (chat's n): a stream is whole when each has finished
        self.down: BudgetStorageDown | None = None  # the ledger failed while a stream asked for more
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
        except BudgetStorageDown as down:
            self.down = down  # fail closed, as for a new call; the stream is cut saying why
            return False
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

    def settle_stream(self, meter: StreamMeter | None, usage: object, cut: RouterError | None) -> None:
        """Settle a stream: the vendor's usage, else the input estimate and every output token read.
        ``cut``: the error the stream was cut with, if it was (only a BudgetExceeded counts as a cut)."""
        if isinstance(cut, BudgetExceeded):
            metrics = self._budgets._metrics
            if metrics is not None:
                metrics.budget_cut(self.client)
        if meter is None:
            self.settle(None, None)
            return
        counted = Usage.from_vendor(usage) or Usage(self.input_tokens, 0, meter.used)
        self.settle(counted, meter.combination.model)

    def exceeded(self) -> BudgetExceeded | BudgetStorageDown:
        """The error that ends a stream cut for want of budget (or of the ledger, when it failed)."""
        if self.down is not None:
            return self.down
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

    def error(self) -> BudgetExceeded | BudgetStorageDown:
        return self._reservation.exceeded()

    @property
    def choices(self) -> int:
        return self._reservation.choices
