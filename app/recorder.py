"""What the forwarding pipeline reports as it goes: metrics, attempt log lines, who answered.

The race (app/forward.py) calls one method per event of a request's life; this is the only
place that turns those events into Prometheus series, warning lines and the access line's
"answered by" fields, so the race reads as control flow only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from app.attempt import Attempt
from app.catalog import Combination
from app.failures import Failure
from app.logs import answered_by_var
from app.metrics import RouterMetrics
from app.relay import StreamAnswer
from app.selector import share
from app.usage import token_counts

__all__ = ["Recorder"]

log = logging.getLogger("app.forward")  # the logger name operators' log searches already use


class Recorder:
    """Records attempts, hedges, streams and tokens for one worker's requests."""

    def __init__(self, metrics: RouterMetrics, max_attempts: int) -> None:
        self._metrics = metrics
        self._max_attempts = max_attempts

    def started(self, combination: Combination, after_failure_of: Combination | None) -> None:
        """An attempt starts on ``combination`` (failing over from ``after_failure_of``, if any)."""
        if after_failure_of is not None:
            self._metrics.failed_over(after_failure_of)
        self._metrics.selected(combination)

    def won(
        self, attempt: Attempt, candidates: Sequence[Combination], seconds: float, usage: object = None
    ) -> dict[str, object]:
        """``attempt`` answered after ``seconds``: counted, and named on the access line with the
        tokens of its ``usage`` (a whole answer's); returns those access-line fields, which a
        stream's usage joins when it closes (``stream_closed``)."""
        combination = attempt.combination
        self._metrics.attempted(combination, "ok", 200, seconds)
        self._log(attempt, candidates, "ok", 200, seconds)
        answered_by: dict[str, object] = {
            "credential": combination.credential.label,
            "share": round(share(combination, candidates), 1),
            "vendor_ms": round(seconds * 1000, 1),
        }
        _add_tokens(answered_by, usage)
        answered_by_var.set(answered_by)
        return answered_by

    def failed(self, attempt: Attempt, candidates: Sequence[Combination], failure: Failure, seconds: float) -> None:
        """``attempt`` failed: counted, and a warning line of its own."""
        self._metrics.attempted(attempt.combination, failure.outcome, failure.status, None)
        self._log(attempt, candidates, failure.outcome, failure.status, seconds, failure.error.message)

    def cancelled(self, combination: Combination) -> None:
        """An attempt was stopped (a hedge's loser, or the client left) or its answer went unused."""
        self._metrics.attempted(combination, "cancelled", None, None)

    def hedge(self, won: bool) -> None:
        """A request that hedged ended: the hedge answered it, or it did not."""
        self._metrics.hedges.labels("won" if won else "lost").inc()

    def finished(self, attempts: int, overhead: float | None) -> None:
        """A request's race ended after ``attempts``; ``overhead`` is the router's own time if it answered."""
        self._metrics.attempts.observe(attempts)
        if overhead is not None:
            self._metrics.overhead.observe(overhead)

    def client_left_waiting(self) -> None:
        self._metrics.series(self._metrics.client_disconnects, "waiting").inc()

    def tokens(self, combination: Combination, usage: object, client: str) -> None:
        self._metrics.counted_tokens(combination, usage, client)

    def stream_opened(self) -> None:
        self._metrics.streams_in_flight.inc()

    def stream_closed(
        self,
        answer: StreamAnswer,
        combination: Combination,
        client: str,
        answered_by: dict[str, object] | None = None,
    ) -> None:
        """A committed stream closed, however it ended; its usage joins ``answered_by``, the
        access line's fields (written after this, as the response closes)."""
        self._metrics.streams_in_flight.dec()
        if answer.discarded:
            return  # a hedge's loser that had committed too: nothing was relayed, nothing to count
        seconds = time.perf_counter() - answer.started
        self._metrics.stream_ended(combination, answer.outcome, seconds)
        usage = answer.pump.relay.normalizer.usage
        self._metrics.counted_tokens(combination, usage, client)
        if answered_by is not None:
            _add_tokens(answered_by, usage)
        outcome = answer.outcome
        if outcome == "client_gone":
            self._metrics.series(self._metrics.client_disconnects, "streaming").inc()
            log.info("client went away mid-stream after %.1f s; vendor connection closed", seconds)
        elif outcome == "budget_exceeded":
            log.info("stream cut after %.1f s: the client's budget is spent; vendor connection closed", seconds)
        elif outcome == "budget_storage_unavailable":
            log.warning(
                "stream cut after %.1f s: the budget storage failed while it needed more; vendor connection closed",
                seconds,
            )
        elif outcome == "vendor_failed":
            failure = answer.pump.failure
            message = failure.error.message if failure is not None else ""
            log.warning("stream ended with an error event after %.1f s: %s", seconds, message)

    def _log(
        self,
        attempt: Attempt,
        candidates: Sequence[Combination],
        outcome: str,
        status: int | None,
        seconds: float,
        detail: str = "",
    ) -> None:
        combination = attempt.combination
        # A failed attempt is a warning of its own; the one that answered is named on the
        # request's access line, so at info it costs no line of its own.
        level = logging.DEBUG if outcome == "ok" else logging.WARNING
        if not log.isEnabledFor(level):
            return
        # The original router's wording, so existing log searches keep working, then the outcome.
        log.log(
            level,
            "Even distribution selected combination - Vendor: %s, Model: %s, Credential: %s "
            "(from %d total combinations, share %.1f%%); attempt %d/%d%s %s%s in %.1f ms%s",
            combination.vendor.name,
            combination.model.id,
            combination.credential.label,
            len(candidates),
            share(combination, candidates),
            attempt.number,
            self._max_attempts,
            " (hedge)" if attempt.hedge else "",
            outcome,
            f" HTTP {status}" if status else "",
            seconds * 1000,
            f": {detail}" if detail else "",
        )


def _add_tokens(fields: dict[str, object], usage: object) -> None:
    """The vendor's token counts on the access line (none when it reported no usage)."""
    counts = token_counts(usage)
    if counts is not None:
        fields["input_tokens"] = counts.input
        fields["cached_tokens"] = counts.cached_input
        fields["output_tokens"] = counts.output
