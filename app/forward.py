"""The one forwarding pipeline every endpoint shares: attempt -> fail over / hedge -> answer.

An endpoint's service validates its request, resolves the candidate combinations and hands a
``Call`` to ``Forwarder.forward``, together with an ``Exchange``: the few things that differ per
endpoint (the vendor URL, how a whole answer is checked and translated, how stream chunks are
translated). Everything else is here, once: choosing combinations, attempts in greenlets, the
failure table's verdicts (failover, cooldown), the request's deadline, the first-token timeout,
hedging, metrics and the attempt log lines.

A stream is returned only once committed: its first event that carries an answer has arrived, so
a vendor that refuses, errs or stalls before it is replaced by another combination without the
client noticing. After that the stream belongs to the client; a vendor failure then ends it with
an error event.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import gevent
import gevent.queue
import orjson

from app.catalog import Combination, Vendor
from app.disconnect import ClientWatch
from app.errors import (
    ClientDisconnected,
    InvalidRequest,
    RequestTimeout,
    RouterError,
    UpstreamError,
    UpstreamTimeout,
    VendorError,
)
from app.failures import AttemptFailed, Cooling, Failure
from app.logs import answered_by_var
from app.metrics import RouterMetrics
from app.normalize import StreamNormalizer, vendor_error
from app.relay import Pump, StreamAnswer, StreamFailure, StreamRelay, StreamTranslator, error_in_body
from app.selector import Selector, share
from app.upstream import Upstream, VendorResponse

__all__ = ["Call", "Exchange", "Forwarder", "Timing", "Trace", "UnusableAnswer", "WholeAnswer"]

log = logging.getLogger(__name__)


class UnusableAnswer(Exception):
    """A vendor's 2xx answer that is not an answer (e.g. a completion without choices)."""


class Exchange(Protocol):
    """What differs between endpoints on the way to a vendor and back."""

    def url(self, vendor: Vendor) -> str:
        """Where the vendor serves this endpoint."""

    def answer(self, document: dict[str, Any]) -> bytes:
        """The client's body for a vendor's whole answer; raises UnusableAnswer if there is none."""

    def translator(self) -> StreamTranslator:
        """A fresh translator for one stream's normalized chunks."""


@dataclass(frozen=True)
class Call:
    """One client request, as an endpoint's service hands it to the pipeline."""

    body: dict[str, Any]  # sent to the vendor with only ``model`` replaced
    requested_model: str  # the name the answer carries
    candidates: tuple[Combination, ...]
    exchange: Exchange
    stream: bool = False
    client: str = "anonymous"

    @property
    def model_pinned(self) -> bool:
        """Whether the client named one configured model, so a vendor's 404/401/403 is final."""
        return any(combination.model.id == self.requested_model for combination in self.candidates)


@dataclass(frozen=True)
class Timing:
    """The pipeline's time limits, in seconds (None: off)."""

    request_timeout: float = 300.0
    first_token_timeout: float | None = None
    hedge_after: float | None = None
    keepalive: float = 15.0


@dataclass
class Trace:
    """What happened while answering: the combinations tried, the winner, the time spent waiting on vendors."""

    started: float = field(default_factory=time.perf_counter)
    attempts: list[Combination] = field(default_factory=list)
    winner: Combination | None = None
    vendor_seconds: float = 0.0

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

    def overhead(self) -> float:
        """The router's own time (approximate when attempts overlapped in a hedge)."""
        return max(time.perf_counter() - self.started - self.vendor_seconds, 0.0)


@dataclass
class WholeAnswer:
    """A complete answer: the client's body, and headers naming who answered."""

    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Attempt:
    """One attempt in flight: its number, combination, greenlet and start time."""

    number: int
    combination: Combination
    started: float
    hedge: bool = False
    greenlet: gevent.Greenlet | None = None


class Forwarder:
    """Answers calls through the selector's combinations, with failover, deadlines and hedging."""

    def __init__(
        self,
        selector: Selector,
        upstream: Upstream,
        metrics: RouterMetrics,
        max_attempts: int,
        timing: Timing,
    ) -> None:
        self._selector = selector
        self._upstream = upstream
        self._metrics = metrics
        self._max_attempts = max_attempts
        self._timing = timing

    def forward(self, call: Call, watch: ClientWatch) -> WholeAnswer | StreamAnswer:
        """Answer ``call``; raises RouterError (with trace headers) when no combination can."""
        trace = Trace()
        request = _Request(self, call, trace)
        watch.arm(_raise_in(gevent.getcurrent(), watch))
        try:
            answer = request.run()
            self._metrics.overhead.observe(trace.overhead())
        except ClientDisconnected:
            self._metrics.series(self._metrics.client_disconnects, "waiting").inc()
            raise
        finally:
            # Disarmed first: a departure noticed while the attempts still running are stopped
            # must not interrupt that (an answer won meanwhile would be dropped unclosed).
            watch.disarm()
            request.stop_running()
            self._metrics.attempts.observe(len(trace.attempts))
        answer.headers = trace.headers()
        if isinstance(answer, StreamAnswer):
            answer.watch_client(watch.arm, watch.disarm)
        return answer

    # -- what the request loop asks of the service ----------------------------------------------

    def _cool_down(self, combination: Combination, failure: Failure) -> None:
        if failure.cooling is Cooling.COMBINATION:
            self._selector.cool_down(combination, failure.retry_after)
        elif failure.cooling is Cooling.CREDENTIAL:
            self._selector.cool_down_credential(combination.credential)

    def _stream_closed(self, answer: StreamAnswer, combination: Combination, client: str) -> None:
        self._metrics.streams_in_flight.dec()
        if answer.discarded:
            return  # a hedge's loser that had committed too: nothing was relayed, nothing to count
        seconds = time.perf_counter() - answer.started
        self._metrics.stream_ended(combination, answer.outcome, seconds)
        self._metrics.counted_tokens(combination, answer.pump.relay.normalizer.usage, client)
        outcome = answer.outcome
        if outcome == "client_gone":
            self._metrics.series(self._metrics.client_disconnects, "streaming").inc()
            log.info("client went away mid-stream after %.1f s; vendor connection closed", seconds)
        elif outcome == "vendor_failed":
            failure = answer.pump.failure
            message = failure.error.message if failure is not None else ""
            log.warning("stream ended with an error event after %.1f s: %s", seconds, message)
            # A combination whose stream breaks after commit is as unreliable as one that fails before.
            if failure is not None and _cools_after_commit(failure.error):
                self._selector.cool_down(combination)

    def _log_attempt(
        self,
        attempt: _Attempt,
        candidates: tuple[Combination, ...],
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


class _Request:
    """One call's attempts, their results gathered in the order they end.

    With hedging on, attempts run in greenlets of their own, so a hedge can start while the first
    still waits. With it off only one attempt ever runs at a time, so each runs in the request's
    own greenlet (a greenlet, a context copy and two switches less per call), bounded by the
    request's deadline; its result goes through the same queue and the same loop.
    """

    def __init__(self, forwarder: Forwarder, call: Call, trace: Trace) -> None:
        self._f = forwarder
        self._call = call
        self._trace = trace
        self._timing = forwarder._timing
        self._deadline = trace.started + self._timing.request_timeout
        self._results: gevent.queue.Queue = gevent.queue.Queue()
        self._running: list[_Attempt] = []
        self._tried: set[str] = set()
        self._failures: list[tuple[_Attempt, Failure]] = []
        self._hedge_at: float | None = None
        self._hedged = False
        self._pinned = call.model_pinned
        self._inline = self._timing.hedge_after is None or forwarder._max_attempts < 2

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
                self._hedged = self._start(hedge=True)
                continue
            self._running.remove(attempt)
            if isinstance(outcome, BaseException):
                raise outcome  # a bug in an attempt: the client gets a 500, the log the traceback
            if isinstance(outcome, Failure):
                self._failed(attempt, outcome)
                if not outcome.retryable:
                    break
                if not self._running:
                    self._start(hedge=False)
                continue
            return self._won(attempt, outcome)
        raise self._give_up()

    # -- starting, winning, failing ---------------------------------------------------------------

    def _start(self, *, hedge: bool) -> bool:
        """Start an attempt on a combination not tried yet; False if none may start."""
        call, trace = self._call, self._trace
        if len(trace.attempts) >= self._f._max_attempts:
            return False
        combination = self._f._selector.choose(call.candidates, self._tried)
        if combination is None:
            return False
        body = _vendor_body(call.body, combination)
        if self._failures and not hedge and not self._running:
            self._f._metrics.failed_over(self._failures[-1][0].combination)
        self._tried.add(combination.key)
        trace.attempts.append(combination)
        self._f._metrics.selected(combination)
        attempt = _Attempt(len(trace.attempts), combination, time.perf_counter(), hedge)
        run = self._stream_attempt if call.stream else self._whole_attempt
        self._running.append(attempt)
        if self._inline:
            self._attempt_inline(attempt, run, body)
            return True
        # The attempt runs in the request's context, so its log lines carry the request id.
        attempt.greenlet = gevent.spawn(contextvars.copy_context().run, self._attempt, attempt, run, body)
        hedge_after = self._timing.hedge_after
        if hedge_after is not None and not self._hedged and not hedge:
            self._hedge_at = attempt.started + hedge_after
        return True

    def _attempt_inline(self, attempt: _Attempt, run: Callable[[_Attempt, bytes], Any], body: bytes) -> None:
        """Run ``attempt`` here, stopped when the deadline passes: it then has no result, and the
        loop finds the deadline passed with the attempt still running, as with a greenlet."""
        timer = gevent.Timeout(max(self._deadline - time.perf_counter(), 0.0))
        timer.start()
        try:
            self._attempt(attempt, run, body)
        except gevent.Timeout as fired:
            if fired is not timer:
                raise
        finally:
            timer.close()

    def _attempt(self, attempt: _Attempt, run: Callable[[_Attempt, bytes], Any], body: bytes) -> None:
        try:
            outcome: Any = run(attempt, body)
        except AttemptFailed as failed:
            outcome = failed.failure
        except (gevent.GreenletExit, ClientDisconnected):
            raise  # stopped from outside: nobody waits for this result
        except Exception as exc:
            outcome = exc
        self._results.put((attempt, outcome))

    def _won(self, attempt: _Attempt, answer: WholeAnswer | StreamAnswer) -> WholeAnswer | StreamAnswer:
        f, trace = self._f, self._trace
        trace.winner = attempt.combination
        seconds = time.perf_counter() - attempt.started
        f._metrics.attempted(attempt.combination, "ok", 200, seconds)
        f._log_attempt(attempt, self._call.candidates, "ok", 200, seconds)
        answered_by_var.set(
            {
                "credential": attempt.combination.credential.label,
                "share": round(share(attempt.combination, self._call.candidates), 1),
                "vendor_ms": round(seconds * 1000, 1),
            }
        )
        if self._hedged:
            f._metrics.hedges.labels("won" if attempt.hedge else "lost").inc()
        return answer

    def _failed(self, attempt: _Attempt, failure: Failure) -> None:
        f = self._f
        seconds = time.perf_counter() - attempt.started
        f._metrics.attempted(attempt.combination, failure.outcome, failure.status, None)
        f._log_attempt(attempt, self._call.candidates, failure.outcome, failure.status, seconds, failure.error.message)
        f._cool_down(attempt.combination, failure)
        self._failures.append((attempt, failure))

    def _give_up(self) -> RouterError:
        """The error the client gets when no attempt succeeded: the last failure's."""
        if not self._failures:
            raise AssertionError("no attempt was made")  # candidates are never empty
        if self._hedged:
            self._f._metrics.hedges.labels("lost").inc()
        error = self._failures[-1][1].error
        error.headers.update(self._trace.headers())
        return error

    def _deadline_passed(self) -> RouterError:
        """REQUEST_TIMEOUT ran out: every running attempt is a timeout; the client gets 504."""
        for attempt in self._kill_running():
            problem = "had not answered when the request's deadline passed"
            self._failed(attempt, Failure.timeout(UpstreamTimeout(attempt.combination.describe(problem))))
        if self._hedged:
            self._f._metrics.hedges.labels("lost").inc()
        tried = "; ".join(
            f"{a.combination.vendor.name}/{a.combination.model.id}: {failure.outcome}"
            + (f" HTTP {failure.status}" if failure.status else "")
            for a, failure in self._failures
        )
        count = len(self._trace.attempts)
        return RequestTimeout(
            f"No answer within REQUEST_TIMEOUT ({self._timing.request_timeout:g} s) after "
            f"{count} attempt{'s' if count != 1 else ''} ({tried}).",
            headers=self._trace.headers(),
        )

    def _kill_running(self) -> list[_Attempt]:
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
            self._f._metrics.attempted(attempt.combination, "cancelled", None, None)
        while not self._results.empty():
            attempt, outcome = self._results.get_nowait()
            if isinstance(outcome, StreamAnswer):
                outcome.discard()
            if isinstance(outcome, (StreamAnswer, WholeAnswer)):
                self._f._metrics.attempted(attempt.combination, "cancelled", None, None)
            elif isinstance(outcome, Failure):
                self._failed(attempt, outcome)

    # -- one attempt ----------------------------------------------------------------------------

    def _whole_attempt(self, attempt: _Attempt, body: bytes) -> WholeAnswer:
        combination = attempt.combination
        call = self._call
        response = self._send(attempt, body)
        self._check_status(response)
        content = self._timed(response.read_all)
        try:
            document = orjson.loads(content)
        except orjson.JSONDecodeError:
            document = None
        if not isinstance(document, dict):
            raise _bad_answer(combination, "answered with something that is not a JSON object")
        if "error" in document:
            raise AttemptFailed(Failure.vendor_status(error_in_body(document), model_pinned=self._pinned))
        try:
            answer = call.exchange.answer(document)
        except UnusableAnswer as problem:
            raise _bad_answer(combination, str(problem)) from None
        self._f._metrics.counted_tokens(combination, document.get("usage"), call.client)
        return WholeAnswer(answer)

    def _stream_attempt(self, attempt: _Attempt, body: bytes) -> StreamAnswer:
        combination = attempt.combination
        call = self._call
        first_token = self._timing.first_token_timeout
        timer = gevent.Timeout(first_token) if first_token is not None else None
        if timer is not None:
            timer.start()
        response: VendorResponse | None = None
        try:
            response = self._send(attempt, body)
            self._check_status(response)
            relay = StreamRelay(response, StreamNormalizer(call.requested_model), call.exchange.translator())
            try:
                first = self._timed(relay.commit)
            except StreamFailure as failure:
                raise AttemptFailed(_stream_failure(failure, self._pinned)) from None
            # The request's deadline ends at commit: the stream may now be silent as long as any.
            response.allow_silence(self._f._upstream.read_timeout)
        except gevent.Timeout as fired:
            if response is not None:
                response.close()
            if fired is not timer:
                raise
            problem = f"sent no answer within FIRST_TOKEN_TIMEOUT ({first_token:g} s)"
            raise AttemptFailed(Failure.timeout(UpstreamTimeout(combination.describe(problem)))) from None
        except BaseException:
            if response is not None:
                response.close()
            raise
        finally:
            if timer is not None:
                timer.close()
        f = self._f
        f._metrics.streams_in_flight.inc()
        client = call.client
        return StreamAnswer(
            first,
            Pump(relay, self._timing.keepalive),
            lambda answer: f._stream_closed(answer, combination, client),
        )

    def _send(self, attempt: _Attempt, body: bytes) -> VendorResponse:
        combination = attempt.combination
        # Each attempt waits at most what is left of the request's deadline.
        left = max(self._deadline - time.perf_counter(), 0.001)
        read_timeout = min(self._f._upstream.read_timeout, left)
        url = self._call.exchange.url(combination.vendor)
        return self._timed(
            lambda: self._f._upstream.post(combination, url, body, stream=self._call.stream, read_timeout=read_timeout)
        )

    def _check_status(self, response: VendorResponse) -> None:
        """Raise AttemptFailed unless the vendor answered 2xx."""
        status = response.status
        if 200 <= status < 300:
            return
        combination = response.combination
        if status < 400:
            # A redirect or an informational status is not an answer, and is never passed on.
            response.close()
            raise _bad_answer(combination, f"answered HTTP {status}, which is not an answer")
        content = self._timed(response.read_error)
        try:
            document = orjson.loads(content)
        except orjson.JSONDecodeError:
            document = None
        retry_after = response.retry_after
        headers = {"Retry-After": str(int(retry_after + 0.999))} if retry_after is not None else {}
        error = VendorError(status, vendor_error(status, document, content[:1000].decode("utf-8", "replace")), headers)
        raise AttemptFailed(Failure.vendor_status(error, model_pinned=self._pinned, retry_after=retry_after))

    def _timed(self, action: Callable[[], Any]) -> Any:
        """Run a vendor read or write, timing it as vendor time; transport failures fail the attempt."""
        started = time.perf_counter()
        try:
            return action()
        except UpstreamError as error:
            raise AttemptFailed(Failure.transport(error)) from None
        finally:
            self._trace.vendor_seconds += time.perf_counter() - started


def _vendor_body(body: dict[str, Any], combination: Combination) -> bytes:
    """The client's own JSON with only the model replaced: every other field reaches the vendor."""
    try:
        return orjson.dumps({**body, "model": combination.model.id})
    except TypeError:
        # orjson reads 1024 levels of nesting but writes only 254: the client's body is at fault.
        raise InvalidRequest("The request body is nested too deeply (at most 254 levels).") from None


def _bad_answer(combination: Combination, problem: str) -> AttemptFailed:
    return AttemptFailed(Failure.bad_answer(UpstreamError(combination.describe(problem))))


def _stream_failure(failure: StreamFailure, pinned: bool) -> Failure:
    """The failure of a stream that broke before its first answer event."""
    error = failure.error
    if isinstance(error, VendorError):
        return Failure.vendor_status(error, model_pinned=pinned)
    if failure.bad_answer or not isinstance(error, UpstreamError):
        return Failure.bad_answer(UpstreamError(error.message))
    return Failure.transport(error)


def _cools_after_commit(error: RouterError) -> bool:
    if isinstance(error, VendorError):
        return Failure.vendor_status(error, model_pinned=False).cooling is not Cooling.NOTHING
    return True


def _raise_in(target: Any, watch: ClientWatch) -> Callable[[], None]:
    """An ``on_gone`` that raises ClientDisconnected in ``target``, unless the watch was disarmed first."""
    hub = gevent.get_hub()

    def deliver() -> None:
        if watch.on_gone is on_gone and not target.dead:
            target.throw(ClientDisconnected())

    def on_gone() -> None:
        hub.loop.run_callback(deliver)

    return on_gone
