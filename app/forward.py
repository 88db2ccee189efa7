"""The one forwarding pipeline every endpoint shares: the race of attempts for one request.

An endpoint's recipe prepares an ``Exchange`` (app/endpoint.py) and its candidate combinations;
``Forwarder.forward`` runs the race: choose a combination, attempt it, fail over or hedge, stop at
the request's deadline. One attempt's conversation with its vendor is app/attempt.py's; what the
race reports (metrics, log lines) goes through app/recorder.py; the verdict on every failure
(retry elsewhere? cool what?) is the failure table's (app/failures.py).

A stream is returned only once committed: its first event that carries an answer has arrived, so
a vendor that refuses, errs or stalls before it is replaced by another combination without the
client noticing. After that the stream belongs to the client; a vendor failure then ends it with
an error event.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gevent
import gevent.queue

from app.attempt import Attempt, Conversation, WholeAnswer
from app.catalog import Combination
from app.disconnect import ClientWatch
from app.endpoint import Exchange
from app.errors import ClientDisconnected, RequestTimeout, RouterError, UpstreamTimeout
from app.failures import AttemptFailed, Cooling, Failure
from app.recorder import Recorder
from app.relay import StreamAnswer
from app.selector import Selector
from app.upstream import Upstream

__all__ = ["Forwarder", "Timing", "Trace"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timing:
    """The pipeline's time limits, in seconds (None: off)."""

    request_timeout: float = 300.0
    first_token_timeout: float | None = None
    hedge_after: float | None = None
    keepalive: float = 15.0


@dataclass
class Trace:
    """What happened while answering: the combinations tried and the winner."""

    started: float = field(default_factory=time.perf_counter)
    attempts: list[Combination] = field(default_factory=list)
    winner: Combination | None = None

    def headers(self) -> dict[str, str]:
        """Response headers naming the combination that answered (or the last tried) and the attempts."""
        combination = self.winner or (self.attempts[-1] if self.attempts else None)
        if combination is None:
            return {}
        return {
            "X-Vendor-Source": combination.vendor.name,
            "X-Model-Source": combination.model.id,
            "X-Router-Attempts": str(len(self.attempts)),
        }


class Forwarder:
    """Answers exchanges through the selector's combinations, with failover, deadlines and hedging."""

    def __init__(
        self,
        selector: Selector,
        upstream: Upstream,
        recorder: Recorder,
        max_attempts: int,
        timing: Timing,
    ) -> None:
        self.selector = selector
        self.upstream = upstream
        self.recorder = recorder
        self.max_attempts = max_attempts
        self.timing = timing

    def forward(
        self,
        exchange: Exchange,
        candidates: Sequence[Combination],
        client: str,
        watch: ClientWatch,
        session: str | None = None,
    ) -> WholeAnswer | StreamAnswer:
        """Answer ``exchange`` from ``candidates``; raises RouterError (with trace headers) when none can.

        A ``session`` makes every attempt, failovers and hedges included, go to the session's
        rendezvous choice among the combinations left (see app/selector.py).
        """
        race = Race(self, exchange, candidates, client, session)
        watch.arm(_raise_in(gevent.getcurrent(), watch))
        answered = False
        budget = exchange.budget
        try:
            answer = race.run()
            answered = True
        except ClientDisconnected:
            self.recorder.client_left_waiting()
            raise
        finally:
            # Disarmed first: a departure noticed while the budget is settled or the attempts
            # still running are stopped must not interrupt that (a settlement cut off in its
            # wait for Redis; an answer won meanwhile dropped unclosed).
            watch.disarm()
            if budget is not None and not answered:
                budget.settle(None, None)  # no answer: failed attempts cost nothing
            race.stop_running()
            self.recorder.finished(len(race.trace.attempts), race.overhead() if answered else None)
        answer.headers = race.trace.headers()
        if isinstance(answer, StreamAnswer):
            answer.watch_client(watch.arm, watch.disarm)
            if budget is not None:
                pump = answer.pump

                def settle() -> None:
                    budget.settle_stream(pump.relay.meter, pump.relay.normalizer.usage, pump.cut)

                # A complete answer settles before its last bytes leave (the client's next call sees
                # the spend); any other end settles when the stream closes, before the access line.
                pump.before_last = settle
                answer.close_with(settle)
        elif budget is not None:
            # Before the answer is returned: the client's next call sees what this one spent.
            budget.settle_whole(answer.usage, answer.document, answer.model)
        return answer

    def cool_down(self, combination: Combination, failure: Failure) -> None:
        """Take out of rotation what ``failure`` says: the combination, its key, or nothing."""
        if failure.cooling is Cooling.COMBINATION:
            self.selector.cool_down(combination, failure.retry_after)
        elif failure.cooling is Cooling.CREDENTIAL:
            self.selector.cool_down_credential(combination.credential)


class Race:
    """One request's attempts, their results gathered in the order they end.

    With hedging on, attempts run in greenlets of their own, so a hedge can start while the first
    still waits. With it off only one attempt ever runs at a time, so each runs in the request's
    own greenlet (a greenlet, a context copy and two switches less per call), bounded by the
    request's deadline; its result goes through the same queue and the same loop.
    A failure that no other combination can mend (the request's own fault) starts no new attempt,
    but an attempt already running may still answer: the failure is the answer only if none does.
    """

    def __init__(
        self,
        forwarder: Forwarder,
        exchange: Exchange,
        candidates: Sequence[Combination],
        client: str,
        session: str | None = None,
    ):
        self._f = forwarder
        self._exchange = exchange
        self._candidates = candidates
        self._client = client
        self._session = session
        self._recorder = forwarder.recorder
        self._timing = timing = forwarder.timing
        self.trace = Trace()
        self._deadline = self.trace.started + timing.request_timeout
        # Whether the client named one configured model, so a vendor's 404 is final.
        pinned = any(combination.model.id == exchange.requested_model for combination in candidates)
        self._conversation = Conversation(
            forwarder.upstream,
            exchange,
            deadline=self._deadline,
            model_pinned=pinned,
            first_token_timeout=timing.first_token_timeout,
            keepalive=timing.keepalive,
        )
        self._results: gevent.queue.Queue = gevent.queue.Queue()
        self._running: list[Attempt] = []
        self._tried: set[str] = set()
        self._failures: list[tuple[Attempt, Failure]] = []
        self._final: Failure | None = None  # a failure no other combination can mend
        self._hedge_at: float | None = None
        self._hedged = False
        self._inline = timing.hedge_after is None or forwarder.max_attempts < 2
        self._usage: dict[int, object] = {}  # whole answers' usage, by attempt number
        self._answered_by: dict[str, object] | None = None  # the access line's fields, once one won

    def run(self) -> WholeAnswer | StreamAnswer:
        """Run attempts until one answers; the caller stops what is still running afterwards."""
        self._start(hedge=False)
        while self._running:
            now = time.perf_counter()
            wake = self._deadline if self._hedge_at is None else min(self._deadline, self._hedge_at)
            try:
                attempt, outcome = self._results.get(timeout=max(wake - now, 0.0))
            except gevent.queue.Empty:
                if self._results.qsize():
                    continue  # an answer arrived as the timer fired: it wins over the timer
                if time.perf_counter() >= self._deadline:
                    raise self._deadline_passed() from None
                self._hedge_at = None
                # At most one hedge per request, and only if another combination is left.
                self._hedged = self._final is None and self._start(hedge=True)
                continue
            self._running.remove(attempt)
            if isinstance(outcome, BaseException):
                raise outcome  # a bug in an attempt: the client gets a 500, the log the traceback
            if isinstance(outcome, Failure):
                self._failed(attempt, outcome)
                if not outcome.retryable and self._final is None:
                    self._final = outcome
                if self._final is None and not self._running:
                    self._start(hedge=False)
                continue
            return self._won(attempt, outcome)
        raise self._give_up()

    def overhead(self) -> float:
        """The router's own time (approximate when attempts overlapped in a hedge)."""
        spent = time.perf_counter() - self.trace.started
        return max(spent - self._conversation.vendor_seconds, 0.0)

    # -- starting, winning, failing ---------------------------------------------------------------

    def _start(self, *, hedge: bool) -> bool:
        """Start an attempt on a combination not tried yet; False if none may start."""
        trace = self.trace
        if len(trace.attempts) >= self._f.max_attempts:
            return False
        combination = self._f.selector.choose(self._candidates, self._tried, self._session)
        if combination is None:
            return False
        body = self._exchange.vendor_body(combination.model, combination.vendor)
        failed_over = self._failures and not hedge and not self._running
        self._recorder.started(combination, self._failures[-1][0].combination if failed_over else None)
        self._tried.add(combination.key)
        trace.attempts.append(combination)
        attempt = Attempt(len(trace.attempts), combination, time.perf_counter(), hedge)
        self._running.append(attempt)
        if self._inline:
            self._attempt_inline(attempt, body)
            return True
        # The attempt runs in the request's context, so its log lines carry the request id.
        attempt.greenlet = gevent.spawn(contextvars.copy_context().run, self._attempt, attempt, body)
        hedge_after = self._timing.hedge_after
        if hedge_after is not None and not self._hedged and not hedge:
            self._hedge_at = attempt.started + hedge_after
        return True

    def _attempt_inline(self, attempt: Attempt, body: bytes) -> None:
        """Run ``attempt`` here, stopped when the deadline passes: it then has no result, and the
        loop finds the deadline passed with the attempt still running, as with a greenlet."""
        timer = gevent.Timeout(max(self._deadline - time.perf_counter(), 0.0))
        timer.start()
        try:
            self._attempt(attempt, body)
        except gevent.Timeout as fired:
            if fired is not timer:
                raise
        finally:
            timer.close()

    def _attempt(self, attempt: Attempt, body: bytes) -> None:
        try:
            outcome: Any = self._converse(attempt, body)
        except AttemptFailed as failed:
            outcome = failed.failure
        except (gevent.GreenletExit, ClientDisconnected):
            raise  # stopped from outside: nobody waits for this result
        except Exception as exc:
            outcome = exc
        self._results.put((attempt, outcome))

    def _converse(self, attempt: Attempt, body: bytes) -> WholeAnswer | StreamAnswer:
        combination, client, recorder = attempt.combination, self._client, self._recorder
        if not self._exchange.stream:

            def counted(usage: object) -> None:
                recorder.tokens(combination, usage, client)
                self._usage[attempt.number] = usage  # for the access line, should this attempt win

            return self._conversation.whole(attempt, body, counted)
        answer = self._conversation.stream(attempt, body, lambda answer: self._stream_closed(answer, combination))
        recorder.stream_opened()
        return answer

    def _stream_closed(self, answer: StreamAnswer, combination: Combination) -> None:
        self._recorder.stream_closed(answer, combination, self._client, self._answered_by)
        failure = answer.pump.failure
        if failure is not None and not answer.discarded:
            self._f.cool_down(combination, failure)

    def _won(self, attempt: Attempt, answer: WholeAnswer | StreamAnswer) -> WholeAnswer | StreamAnswer:
        self.trace.winner = attempt.combination
        seconds = time.perf_counter() - attempt.started
        self._answered_by = self._recorder.won(attempt, self._candidates, seconds, self._usage.get(attempt.number))
        if self._hedged:
            self._recorder.hedge(won=attempt.hedge)
        return answer

    def _failed(self, attempt: Attempt, failure: Failure) -> None:
        self._recorder.failed(attempt, self._candidates, failure, time.perf_counter() - attempt.started)
        self._f.cool_down(attempt.combination, failure)
        self._failures.append((attempt, failure))

    def _give_up(self) -> RouterError:
        """The error the client gets when no attempt succeeded: a final failure's, else the last one's."""
        if not self._failures:
            raise AssertionError("no attempt was made")  # candidates are never empty
        if self._hedged:
            self._recorder.hedge(won=False)
        error = (self._final or self._failures[-1][1]).error
        error.headers.update(self.trace.headers())
        return error

    def _deadline_passed(self) -> RouterError:
        """REQUEST_TIMEOUT ran out: every running attempt is a timeout; the client gets 504."""
        for attempt in self._kill_running():
            problem = "had not answered when the request's deadline passed"
            self._failed(attempt, Failure.timeout(UpstreamTimeout(attempt.combination.describe(problem))))
        if self._hedged:
            self._recorder.hedge(won=False)
        tried = "; ".join(
            f"{a.combination.vendor.name}/{a.combination.model.id}: {failure.outcome}"
            + (f" HTTP {failure.status}" if failure.status else "")
            for a, failure in self._failures
        )
        count = len(self.trace.attempts)
        return RequestTimeout(
            f"No answer within REQUEST_TIMEOUT ({self._timing.request_timeout:g} s) after "
            f"{count} attempt{'s' if count != 1 else ''} ({tried}).",
            headers=self.trace.headers(),
        )

    def _kill_running(self) -> list[Attempt]:
        """Stop every attempt still running; each closes its vendor connection as it dies."""
        running, self._running = self._running, []
        greenlets = [attempt.greenlet for attempt in running if attempt.greenlet is not None]
        if greenlets:
            try:
                gevent.killall(greenlets, block=True, timeout=1)
            except gevent.Timeout:
                log.error("%d attempts did not stop within 1 s of being cancelled", len(greenlets))
        return running

    def stop_running(self) -> None:
        """Cancel what is still running (a hedge's loser, or everything when the client left) and
        close any finished answer nobody will use."""
        for attempt in self._kill_running():
            self._recorder.cancelled(attempt.combination)
        while not self._results.empty():
            attempt, outcome = self._results.get_nowait()
            if isinstance(outcome, StreamAnswer):
                outcome.discard()
            if isinstance(outcome, (StreamAnswer, WholeAnswer)):
                self._recorder.cancelled(attempt.combination)
            elif isinstance(outcome, Failure):
                self._failed(attempt, outcome)


def _raise_in(target: Any, watch: ClientWatch) -> Callable[[], None]:
    """An ``on_gone`` that raises ClientDisconnected in ``target``, unless the watch was disarmed first."""
    hub = gevent.get_hub()

    def deliver() -> None:
        if watch.on_gone is on_gone and not target.dead:
            target.throw(ClientDisconnected())

    def on_gone() -> None:
        hub.loop.run_callback(deliver)

    return on_gone
