"""What went wrong with one attempt, and what the router does about it: the one failure table.

Every failed attempt, whatever broke (the network, a timeout, the vendor's error, an answer that
is not one), becomes one ``Failure``: its outcome (the metric label), the status the client would
be answered, whether another combination may be tried, and what cools down. The named
constructors below are the table; nothing else in the router decides these things.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from app.errors import RouterError, UpstreamError, UpstreamTimeout, VendorError
from app.normalize import vendor_error

__all__ = ["RETRYABLE_STATUSES", "AttemptFailed", "Cooling", "Failure", "carries_error"]

# Vendor statuses worth another combination: timeouts, rate limits, overload and the vendor's own
# faults (any 5xx, and 529, "overloaded", which some vendors send).
RETRYABLE_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
# Statuses that are the combination's fault unless the client pinned the model: a model the vendor
# does not know (404), a key it refuses (401) or does not allow (403).
_COMBINATION_FAULTS = frozenset({401, 403, 404})
_CREDENTIAL_FAULTS = frozenset({401, 403})


def carries_error(document: dict[str, Any]) -> bool:
    """Whether a vendor's JSON object (a 200's body, or a stream event) is an error, not an answer:
    a non-null ``error`` and no choices. Several OpenAI-compatible servers send ``"error": null``
    beside a good answer."""
    return document.get("error") is not None and not document.get("choices")


class Cooling(enum.Enum):
    """What the selector skips for a while after a failure."""

    NOTHING = "nothing"
    COMBINATION = "combination"
    CREDENTIAL = "credential"  # every combination that uses the same key


@dataclass(frozen=True)
class Failure:
    """One failed attempt: how it is counted, what the client is told, what happens next."""

    outcome: str  # network, timeout, vendor_error, bad_answer
    error: RouterError  # what the client is answered if no other attempt succeeds
    retryable: bool  # another combination may be tried
    cooling: Cooling
    status: int | None = None  # the vendor's HTTP status, when it answered with a usable one
    retry_after: float | None = None  # the vendor's Retry-After, in seconds

    @classmethod
    def network(cls, error: UpstreamError) -> Failure:
        """The vendor could not be reached, or the connection broke."""
        return cls("network", error, True, Cooling.COMBINATION)

    @classmethod
    def timeout(cls, error: UpstreamError) -> Failure:
        """The vendor was silent too long (connect, read, first token, or the request's deadline)."""
        return cls("timeout", error, True, Cooling.COMBINATION)

    @classmethod
    def transport(cls, error: UpstreamError) -> Failure:
        """A failure raised by the vendor client: a timeout or a network failure."""
        return cls.timeout(error) if isinstance(error, UpstreamTimeout) else cls.network(error)

    @classmethod
    def bad_answer(cls, error: UpstreamError) -> Failure:
        """The vendor answered something that is not an answer: a redirect, an informational
        status, a body that is not JSON, a completion without choices, an empty stream."""
        return cls("bad_answer", error, True, Cooling.COMBINATION)

    @classmethod
    def vendor_status(
        cls,
        error: VendorError,
        *,
        model_pinned: bool,
        retry_after: float | None = None,
    ) -> Failure:
        """The vendor answered an error status (or a 200 carrying an error object).

        Overload, rate limits and the vendor's own faults are retried elsewhere and cool the
        combination. A refused key (401/403) is the key's fault whatever the client asked: it cools
        and the next combination is tried (for a pinned model, that model's other keys: the
        candidates hold nothing else). 404 is the configuration's fault when the client let the
        router choose the model (retried elsewhere, cooling the combination) and final when the
        client pinned it. Anything else (400, 413, 422, ...) is the request's fault and answered
        at once.
        """
        status = error.status
        if status in RETRYABLE_STATUSES:
            return cls("vendor_error", error, True, Cooling.COMBINATION, status, retry_after)
        if status in _CREDENTIAL_FAULTS:
            return cls("vendor_error", error, True, Cooling.CREDENTIAL, status, retry_after)
        if status in _COMBINATION_FAULTS and not model_pinned:
            return cls("vendor_error", error, True, Cooling.COMBINATION, status, retry_after)
        return cls("vendor_error", error, False, Cooling.NOTHING, status, retry_after)

    @classmethod
    def error_in_body(cls, document: dict[str, Any], *, model_pinned: bool) -> Failure:
        """An error object where an answer should be (a 200's body, or a stream event): judged
        as a vendor status, the error's own integer ``code`` when that is 400-599, else 502."""
        error = document.get("error")
        code = error.get("code") if isinstance(error, dict) else None
        status = code if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599 else 502
        return cls.vendor_status(VendorError(status, vendor_error(status, document)), model_pinned=model_pinned)

    @classmethod
    def relay_fault(cls, error: RouterError) -> Failure:
        """The router itself failed while relaying a stream: the vendor is not to blame, so
        nothing cools down (the client still gets an error event)."""
        return cls("router_error", error, False, Cooling.NOTHING)

    def after_commit(self) -> Failure:
        """The same failure when it ends a stream the client already reads: never retried (the
        answer has begun), and it cools what it would cool had the router chosen the model, since a
        combination whose streams break is as unreliable as one that fails before them."""
        cooling = self.cooling
        if isinstance(self.error, VendorError) and self.cooling is Cooling.NOTHING:
            cooling = Failure.vendor_status(self.error, model_pinned=False).cooling
        return Failure(self.outcome, self.error, False, cooling, self.status, self.retry_after)


class AttemptFailed(Exception):
    """Raised by an attempt that failed; carries its ``Failure``."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.error.message)
        self.failure = failure
