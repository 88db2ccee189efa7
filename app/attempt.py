"""One attempt: one conversation with one vendor, from sending the request to an answer or a Failure.

A whole answer is read, checked and translated; a stream is read up to its commit point (its
first event that carries an answer) and returned as a ``StreamAnswer`` the client can read. Every
way the conversation can fail ends in ``AttemptFailed`` carrying the failure table's verdict;
which combination to try next, and when, is the race's business (app/forward.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent
import orjson

from app.catalog import Combination, Model
from app.endpoint import Exchange, StreamingExchange, UnusableAnswer
from app.errors import UpstreamError, UpstreamTimeout, VendorError
from app.failures import AttemptFailed, Failure, carries_error
from app.normalize import StreamNormalizer, vendor_error
from app.relay import Pump, StreamAnswer, StreamFailure, StreamRelay
from app.upstream import Upstream, VendorResponse

__all__ = ["Attempt", "Conversation", "WholeAnswer"]


@dataclass
class WholeAnswer:
    """A complete answer: the client's body, and headers naming who answered."""

    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    # What a budget settles with: the vendor's usage, its answer (to estimate output when it sent
    # no usage) and the model that answered.
    usage: object = None
    document: dict[str, Any] | None = field(default=None, repr=False)
    model: Model | None = None


@dataclass
class Attempt:
    """One attempt in flight: its number, combination, start time and (when hedging) greenlet."""

    number: int
    combination: Combination
    started: float
    hedge: bool = False
    greenlet: gevent.Greenlet | None = None


class Conversation:
    """Talks to vendors for one client request: each ``whole`` / ``stream`` call is one attempt.

    ``deadline`` (perf_counter) bounds every wait before an answer; ``vendor_seconds`` adds up the
    time spent waiting on vendors, so the router's own time can be told apart.
    """

    def __init__(
        self,
        upstream: Upstream,
        exchange: Exchange,
        *,
        deadline: float,
        model_pinned: bool,
        first_token_timeout: float | None,
        keepalive: float,
    ) -> None:
        self._upstream = upstream
        self._exchange = exchange
        self._deadline = deadline
        self._pinned = model_pinned
        self._first_token_timeout = first_token_timeout
        self._keepalive = keepalive
        self.vendor_seconds = 0.0

    def whole(self, attempt: Attempt, body: bytes, on_tokens: Callable[[object], None]) -> WholeAnswer:
        """The translated whole answer to ``body`` from ``attempt``'s vendor; ``on_tokens`` gets its usage."""
        combination = attempt.combination
        response = self._send(combination, body)
        self._check_status(response)
        content = self._timed(response.read_all)
        try:
            document = orjson.loads(content)
        except orjson.JSONDecodeError:
            document = None
        if not isinstance(document, dict):
            raise _bad_answer(combination, "answered with something that is not a JSON object")
        if carries_error(document):
            raise AttemptFailed(Failure.error_in_body(document, model_pinned=self._pinned))
        try:
            answer = self._exchange.translate(document)
        except UnusableAnswer as problem:
            raise _bad_answer(combination, str(problem)) from None
        usage = document.get("usage")
        on_tokens(usage)
        return WholeAnswer(answer, usage=usage, document=document, model=combination.model)

    def stream(self, attempt: Attempt, body: bytes, on_close: Callable[[StreamAnswer], None]) -> StreamAnswer:
        """The stream answering ``body`` from ``attempt``'s vendor, committed: its first answer event has arrived."""
        combination = attempt.combination
        exchange = self._exchange
        # Only streaming recipes ever set ``stream``: embeddings have no translator to ask for.
        assert isinstance(exchange, StreamingExchange)
        first_token = self._first_token_timeout
        timer = gevent.Timeout(first_token) if first_token is not None else None
        if timer is not None:
            timer.start()
        response: VendorResponse | None = None
        try:
            response = self._send(combination, body)
            self._check_status(response)
            self._check_is_a_stream(response)
            normalizer = StreamNormalizer(exchange.requested_model)
            relay = StreamRelay(response, normalizer, exchange.translator(), model_pinned=self._pinned)
            if exchange.budget is not None:
                relay.meter = exchange.budget.meter(combination)
            try:
                first = self._timed(relay.commit)
            except StreamFailure as broke:
                raise AttemptFailed(broke.failure) from None
            # The request's deadline ends at commit: the stream may now be silent as long as any.
            response.allow_silence(self._upstream.read_timeout)
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
        return StreamAnswer(first, Pump(relay, self._keepalive), on_close)

    def _send(self, combination: Combination, body: bytes) -> VendorResponse:
        # Each attempt waits at most what is left of the request's deadline.
        left = max(self._deadline - time.perf_counter(), 0.001)
        read_timeout = min(self._upstream.read_timeout, left)
        url = self._exchange.url(combination.vendor)
        stream = self._exchange.stream
        return self._timed(
            lambda: self._upstream.post(combination, url, body, stream=stream, read_timeout=read_timeout)
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

    def _check_is_a_stream(self, response: VendorResponse) -> None:
        """Raise AttemptFailed for a JSON body where a stream was asked for: an error object is
        judged by its own code (a 429 stays a 429, a refused key cools the key), anything else
        is not an answer the client can read."""
        if not response.headers.get("Content-Type", "").lower().startswith("application/json"):
            return
        content = self._timed(response.read_all)
        try:
            document = orjson.loads(content)
        except orjson.JSONDecodeError:
            document = None
        if isinstance(document, dict) and carries_error(document):
            raise AttemptFailed(Failure.error_in_body(document, model_pinned=self._pinned))
        raise _bad_answer(response.combination, "answered a stream request with a JSON body, not an event stream")

    def _timed(self, action: Callable[[], Any]) -> Any:
        """Run a vendor read or write, timing it as vendor time; transport failures fail the attempt."""
        started = time.perf_counter()
        try:
            return action()
        except UpstreamError as error:
            raise AttemptFailed(Failure.transport(error)) from None
        finally:
            self.vendor_seconds += time.perf_counter() - started


def _bad_answer(combination: Combination, problem: str) -> AttemptFailed:
    return AttemptFailed(Failure.bad_answer(UpstreamError(combination.describe(problem))))
