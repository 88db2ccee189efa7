"""The chat service: validate -> select -> forward (failing over) -> normalize.

Returns a whole answer, or a stream that is already committed: a stream's first event has arrived
before anything is returned, so a vendor that refuses, errs or stalls before its first event is
replaced by another combination without the client noticing. After that first event the stream
belongs to the client; a vendor failure then ends it with an error event.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gevent
import orjson
import requests

from app.catalog import Combination
from app.disconnect import ClientWatch
from app.errors import ClientDisconnected, InvalidRequest, RouterError, UpstreamError, UpstreamTimeout, VendorError
from app.metrics import RouterMetrics
from app.normalize import StreamNormalizer, normalize_completion, vendor_error
from app.relay import Pump, StreamFailure, StreamRelay
from app.schemas import validate_chat_request
from app.selector import Selector
from app.upstream import Upstream

__all__ = ["ChatCall", "ChatService", "StreamAnswer", "Trace", "WholeAnswer"]

log = logging.getLogger(__name__)

# Vendor statuses worth another combination: overload, rate limits and the vendor's own faults.
# 400/401/403/404/422 are the request's or the configuration's problem and are answered at once.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 529})
# A client that names no model gets the router's choice, reported under this name.
DEFAULT_MODEL_NAME = "any-model"


@dataclass(frozen=True)
class ChatCall:
    """One client request: its parsed JSON body and the ``?vendor=`` filter."""

    body: dict[str, Any]
    vendor: str | None = None
    # The configured name of the caller, for per-client metrics (never anything the client sent).
    client: str = "anonymous"

    @property
    def requested_model(self) -> str:
        model = self.body.get("model")
        return model if isinstance(model, str) and model else DEFAULT_MODEL_NAME

    @property
    def stream(self) -> bool:
        return self.body.get("stream") is True


@dataclass
class Trace:
    """What happened while answering: the combinations tried, and the router's time outside vendor calls."""

    started: float = field(default_factory=time.perf_counter)
    attempts: list[Combination] = field(default_factory=list)
    vendor_seconds: float = 0.0

    @property
    def combination(self) -> Combination | None:
        return self.attempts[-1] if self.attempts else None

    def headers(self) -> dict[str, str]:
        """Response headers naming the combination that answered and the number of attempts."""
        combination = self.combination
        if combination is None:
            return {}
        return {
            "X-Vendor-Source": combination.vendor.name,
            "X-Model-Source": combination.model.id,
            "X-Router-Attempts": str(len(self.attempts)),
        }

    def overhead(self) -> float:
        return max(time.perf_counter() - self.started - self.vendor_seconds, 0.0)


@dataclass
class WholeAnswer:
    body: bytes
    trace: Trace


class StreamAnswer:
    """A committed stream, usable as a WSGI body: iterate for the client's bytes; ``close`` is
    safe to call more than once, and the server calls it however the stream ended (PEP 3333)."""

    def __init__(
        self,
        first: bytes,
        pump: Pump,
        trace: Trace,
        watch: ClientWatch,
        on_close: Callable[[StreamAnswer], None],
    ) -> None:
        self.first = first
        self.pump = pump
        self.trace = trace
        self._watch = watch
        self._on_close = on_close
        self._closed = False
        self._also_close: list[Callable[[], None]] = []
        self.started = time.perf_counter()

    def __iter__(self) -> Iterator[bytes]:
        yield self.first
        self._watch.arm(self.pump.notify_client_gone)
        yield from self.pump

    @property
    def outcome(self) -> str:
        """completed, vendor_failed, or client_gone (the client left, or the stream was cut short)."""
        if self.pump.failure is not None:
            return "vendor_failed"
        if self.pump.ended:
            return "completed"
        return "client_gone"

    def close_with(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` (e.g. the HTTP response's own close hooks) when the stream closes."""
        self._also_close.append(callback)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._watch.disarm()
        self.pump.close()
        self._on_close(self)
        for callback in self._also_close:
            callback()


class _AttemptFailed(Exception):
    """One attempt failed; ``retryable`` failures cool the combination down and try another."""

    def __init__(
        self,
        error: RouterError,
        outcome: str,
        status: int | None,
        retryable: bool,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(error.message)
        self.error = error
        self.outcome = outcome
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after


class ChatService:
    """Answers chat requests through the selector's combinations."""

    def __init__(
        self,
        selector: Selector,
        upstream: Upstream,
        metrics: RouterMetrics,
        max_attempts: int,
        keepalive_seconds: float,
    ) -> None:
        self._selector = selector
        self._upstream = upstream
        self._metrics = metrics
        self._max_attempts = max_attempts
        self._keepalive = keepalive_seconds
        self._cooling_reported = -1

    def answer(self, call: ChatCall, watch: ClientWatch) -> WholeAnswer | StreamAnswer:
        """Validate and answer ``call``; raises RouterError (with trace headers) when it cannot."""
        validate_chat_request(call.body)
        candidates = self._selector.candidates(call.vendor, call.body.get("model"))
        trace = Trace()
        watch.arm(_raise_in(gevent.getcurrent(), watch))
        try:
            attempt = self._attempt_stream if call.stream else self._attempt_whole
            answer = self._with_failover(call, candidates, trace, attempt, watch)
            self._metrics.overhead.observe(trace.overhead())
            return answer
        except ClientDisconnected:
            self._metrics.client_disconnects.labels("waiting").inc()
            raise
        finally:
            watch.disarm()
            self._metrics.attempts.observe(len(trace.attempts))

    def _with_failover(
        self,
        call: ChatCall,
        candidates: tuple[Combination, ...],
        trace: Trace,
        attempt: Callable[[ChatCall, Combination, Trace, ClientWatch], WholeAnswer | StreamAnswer],
        watch: ClientWatch,
    ) -> WholeAnswer | StreamAnswer:
        tried: set[str] = set()
        failure: _AttemptFailed | None = None
        for number in range(1, self._max_attempts + 1):
            combination = self._selector.choose(candidates, tried)
            if combination is None:
                break
            if trace.combination is not None:
                self._metrics.failed_over(trace.combination)  # the failed one is followed by this one
            tried.add(combination.key)
            trace.attempts.append(combination)
            self._metrics.selected(combination)
            self._report_cooling()
            started = time.perf_counter()
            try:
                answer = attempt(call, combination, trace, watch)
            except _AttemptFailed as failed:
                seconds = time.perf_counter() - started
                self._metrics.attempted(combination, failed.outcome, failed.status, None)
                self._log_attempt(
                    number, combination, len(candidates), failed.outcome, failed.status, seconds, failed.error.message
                )
                failure = failed
                self._cool_down(combination, failed)
                if not failed.retryable:
                    break
                continue
            seconds = time.perf_counter() - started
            self._metrics.attempted(combination, "ok", 200, seconds)
            self._log_attempt(number, combination, len(candidates), "ok", 200, seconds)
            return answer
        assert failure is not None  # candidates is never empty, so at least one attempt was made
        failure.error.headers.update(trace.headers())
        raise failure.error

    def _cool_down(self, combination: Combination, failed: _AttemptFailed) -> None:
        """Have the selector skip what just failed: the combination, or every use of a refused key."""
        if failed.retryable:  # network, timeout, bad answer, 408/429/5xx
            self._selector.cool_down(combination, failed.retry_after)
        elif failed.status in (401, 403):
            self._selector.cool_down_credential(combination.credential)

    def _report_cooling(self) -> None:
        count = self._selector.cooling_count()
        if count != self._cooling_reported:  # a gauge write per attempt is wasted when nothing changed
            self._cooling_reported = count
            self._metrics.cooling.set(count)

    # -- one attempt ---------------------------------------------------------------------------

    def _attempt_whole(self, call: ChatCall, combination: Combination, trace: Trace, watch: ClientWatch) -> WholeAnswer:
        response = self._send(call, combination, trace, stream=False)
        if not 200 <= response.status_code < 300:
            content = self._wait(trace, lambda: self._upstream.read_error(combination, response))
            raise _vendor_failure(response, content)
        content = self._wait(trace, lambda: self._upstream.read_all(combination, response))
        try:
            answer = orjson.loads(content)
        except orjson.JSONDecodeError:
            answer = None
        if not isinstance(answer, dict):
            error = UpstreamError(combination.describe("answered with something that is not a JSON object"))
            raise _AttemptFailed(error, "bad_answer", response.status_code, True)
        self._metrics.counted_tokens(combination, answer.get("usage"), call.client)
        return WholeAnswer(orjson.dumps(normalize_completion(answer, call.requested_model)), trace)

    def _attempt_stream(
        self, call: ChatCall, combination: Combination, trace: Trace, watch: ClientWatch
    ) -> StreamAnswer:
        response = self._send(call, combination, trace, stream=True)
        try:
            if not 200 <= response.status_code < 300:
                content = self._wait(trace, lambda: self._upstream.read_error(combination, response))
                raise _vendor_failure(response, content)
            relay = StreamRelay(self._upstream, combination, response, StreamNormalizer(call.requested_model))
            waited = time.perf_counter()
            try:
                first = relay.read()
            except StreamFailure as failure:
                error = failure.error
                if isinstance(error, VendorError):
                    retryable = error.status in RETRYABLE_STATUSES
                    raise _AttemptFailed(error, "vendor_error", error.status, retryable) from None
                raise _AttemptFailed(error, _network_outcome(error), None, True) from None
            finally:
                trace.vendor_seconds += time.perf_counter() - waited
            if relay.events == 0:  # nothing but [DONE]: no answer at all
                error = UpstreamError(combination.describe("ended the stream without an event"))
                raise _AttemptFailed(error, "bad_answer", None, True)
        except BaseException:
            response.close()
            raise
        pump = Pump(relay, self._keepalive)
        self._metrics.streams_in_flight.inc()
        return StreamAnswer(first, pump, trace, watch, lambda answer: self._stream_closed(answer, call.client))

    def _stream_closed(self, answer: StreamAnswer, client: str) -> None:
        self._metrics.streams_in_flight.dec()
        combination = answer.trace.combination
        seconds = time.perf_counter() - answer.started
        if combination is not None:
            self._metrics.stream_ended(combination, answer.outcome, seconds)
            self._metrics.counted_tokens(combination, answer.pump.relay.normalizer.usage, client)
        if answer.outcome == "client_gone":
            self._metrics.client_disconnects.labels("streaming").inc()
            log.info("client went away mid-stream after %.1f s; vendor connection closed", seconds)
        elif answer.pump.failure is not None:
            log.warning("stream ended with an error event after %.1f s: %s", seconds, answer.pump.failure.error.message)

    def _send(self, call: ChatCall, combination: Combination, trace: Trace, *, stream: bool) -> requests.Response:
        # The client's own JSON, with only the model replaced: every other field reaches the vendor.
        try:
            body = orjson.dumps({**call.body, "model": combination.model.id})
        except TypeError:
            # orjson reads 1024 levels of nesting but writes only 254: the client's body is at fault.
            raise InvalidRequest("The request body is nested too deeply (at most 254 levels).") from None
        return self._wait(trace, lambda: self._upstream.post(combination, body, stream=stream))

    def _wait(self, trace: Trace, action: Callable[[], Any]) -> Any:
        """Run a vendor call, timing it as vendor time and turning network failures into retryable ones."""
        started = time.perf_counter()
        try:
            return action()
        except UpstreamError as error:
            raise _AttemptFailed(error, _network_outcome(error), None, True) from None
        finally:
            trace.vendor_seconds += time.perf_counter() - started

    def _log_attempt(
        self,
        number: int,
        combination: Combination,
        candidates: int,
        outcome: str,
        status: int | None,
        seconds: float,
        detail: str = "",
    ) -> None:
        # The seed's wording, so existing log searches keep working, then the attempt's outcome.
        log.log(
            logging.INFO if outcome == "ok" else logging.WARNING,
            "Even distribution selected combination - Vendor: %s, Model: %s, Credential: %s "
            "(from %d total combinations); attempt %d/%d %s%s in %.1f ms%s",
            combination.vendor.name,
            combination.model.id,
            combination.credential.label,
            candidates,
            number,
            self._max_attempts,
            outcome,
            f" HTTP {status}" if status else "",
            seconds * 1000,
            f": {detail}" if detail else "",
        )


def _raise_in(target: Any, watch: ClientWatch) -> Callable[[], None]:
    """An ``on_gone`` that raises ClientDisconnected in ``target``, unless the watch was disarmed first."""
    hub = gevent.get_hub()

    def deliver() -> None:
        if watch.on_gone is on_gone and not target.dead:
            target.throw(ClientDisconnected())

    def on_gone() -> None:
        hub.loop.run_callback(deliver)

    return on_gone


def _network_outcome(error: RouterError) -> str:
    return "timeout" if isinstance(error, UpstreamTimeout) else "network"


def _vendor_failure(response: requests.Response, content: bytes) -> _AttemptFailed:
    """The failed attempt for a vendor's error status: OpenAI-shaped, retryable if the status is."""
    status = response.status_code
    try:
        document = orjson.loads(content)
    except orjson.JSONDecodeError:
        document = None
    headers: dict[str, str] = {}
    retry_after = _retry_after(response.headers.get("Retry-After"))
    if retry_after is not None:
        headers["Retry-After"] = str(int(retry_after + 0.999))
    error = VendorError(status, vendor_error(status, document, content[:1000].decode("utf-8", "replace")), headers)
    return _AttemptFailed(error, "vendor_error", status, status in RETRYABLE_STATUSES, retry_after)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (a number of seconds or an HTTP date)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError):
            return None
    return max(seconds, 0.0) if seconds == seconds and seconds != float("inf") else None
