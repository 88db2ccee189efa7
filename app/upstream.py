"""The vendor HTTP client: one pooled requests transport adapter per worker, timeouts, auth.

Nothing Flask lives here, and nothing above this module touches ``requests``: a call returns a
``VendorResponse`` that owns the HTTP response, and every transport failure, when sending or
reading, is mapped in one place (``_mapped``) to an ``UpstreamError`` or ``UpstreamTimeout``
whose message names the vendor and model and never a key or URL (requests' own exception text
contains the full URL, so it is never passed on).
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import time
from collections.abc import Iterator, Mapping

import requests
import urllib3
from requests.utils import get_environ_proxies

from app.catalog import Combination, Credential, Vendor
from app.errors import UpstreamError, UpstreamTimeout
from app.wire import READ_SIZE, Adapter, BodyBroken, SocketBody, VendorSilent

__all__ = ["USER_AGENT", "Upstream", "VendorResponse"]

USER_AGENT = "generative-api-router/1.0"
# How much of a vendor's error body is read: error bodies are small; a huge one is not an error.
MAX_ERROR_BODY = 64 * 1024
# The largest whole answer accepted: a vendor (or what stands in its place) sending without end
# must not exhaust a worker's memory. Real completions and embeddings are far smaller.
MAX_ANSWER_BYTES = 64 * 1024 * 1024

log = logging.getLogger(__name__)


class VendorResponse:
    """A vendor's answer to one call: status and headers at once, the body when asked; ``close`` frees it."""

    def __init__(self, combination: Combination, response: requests.Response, read_timeout: float) -> None:
        self.combination = combination
        self.status = response.status_code
        self.headers: Mapping[str, str] = response.headers
        self._response = response
        self._read_timeout = read_timeout
        self._stream: SocketBody | None = None

    @property
    def retry_after(self) -> float | None:
        """Seconds from the Retry-After header (a number of seconds or an HTTP date), if any."""
        return parse_retry_after(self.headers.get("Retry-After"))

    def read_all(self) -> bytes:
        """The whole body (at most MAX_ANSWER_BYTES); the connection goes back to the pool."""
        try:
            with self._mapped("mid-answer"):
                # raw.read, not .content: one read instead of a generator of 10 kB pieces. Read to
                # the end, urllib3 hands the connection back to the pool by itself.
                body = self._response.raw.read(MAX_ANSWER_BYTES + 1, decode_content=True)
        finally:
            self._response.close()
        if len(body) > MAX_ANSWER_BYTES:
            limit = MAX_ANSWER_BYTES // (1024 * 1024)
            raise UpstreamError(self.combination.describe(f"sent an answer larger than {limit} MiB"))
        return body

    def read_error(self) -> bytes:
        """Up to MAX_ERROR_BODY bytes of an error answer's body (b"" if it breaks off); closes it."""
        try:
            with self._mapped("mid-error"):
                return self._response.raw.read(MAX_ERROR_BODY, decode_content=True) or b""
        except UpstreamError:
            return b""  # the status alone still says what went wrong
        finally:
            self._response.close()

    def read_some(self, within: float | None = None) -> bytes | None:
        """The next bytes of a streamed body as soon as any arrive; b"" at its end; None if none
        arrived within ``within`` seconds (the stream goes on: ask again)."""
        stream = self._stream
        if stream is None:
            stream = self._stream = SocketBody.over(self._response.raw, self._read_timeout)
        with self._mapped("mid-stream"):
            if stream is not None:
                return stream.read(within)
            # No socket to read from directly (a compressed body, or a response made in tests).
            return self._response.raw.read1(READ_SIZE, decode_content=True)

    def allow_silence(self, seconds: float) -> None:
        """From now on, let the vendor be silent up to ``seconds`` between bytes."""
        self._read_timeout = seconds
        if self._stream is not None:
            self._stream.allow_silence(seconds)
        connection = getattr(self._response.raw, "connection", None)
        sock = getattr(connection, "sock", None)
        if sock is not None:
            sock.settimeout(seconds)

    def close(self) -> None:
        """Close the connection (a vendor mid-answer sees it closed). Idempotent."""
        self._response.close()

    def _mapped(self, where: str) -> contextlib.AbstractContextManager[None]:
        return _mapped(self.combination, where, self._read_timeout)


class Upstream:
    """Sends requests to vendors; each call returns a ``VendorResponse`` with its body unread."""

    def __init__(
        self,
        vendors: Mapping[str, Vendor],
        connect_timeout: float,
        read_timeout: float,
        pool_size: int,
        ca_bundle: str | None = None,
    ) -> None:
        # requests' transport adapter, called directly with a ready request: Session.request would
        # merge settings, prepare, run hooks and extract cookies on every call (~80 us each), and
        # its shared cookie jar would carry one tenant's Set-Cookie into the next tenant's call.
        # The adapter keeps no cookies and never follows redirects.
        self._adapter = Adapter(pool_connections=max(len(vendors), 1), pool_maxsize=pool_size, max_retries=0)
        self._connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        # The adapter alone ignores REQUESTS_CA_BUNDLE (a Session would read it): behind a
        # TLS-inspecting egress proxy the operator's CA bundle is the only way to reach a vendor.
        self._verify: bool | str = ca_bundle or True
        # Proxy variables (HTTPS_PROXY, NO_PROXY) are read once per vendor, not on every call.
        self._proxies = {name: get_environ_proxies(vendor.base_url + "/") for name, vendor in vendors.items()}
        self._headers: dict[tuple[str, bool], dict[str, str]] = {}

    def post(
        self,
        combination: Combination,
        url: str,
        body: bytes,
        *,
        stream: bool,
        read_timeout: float | None = None,
    ) -> VendorResponse:
        """POST ``body`` to ``url`` of the combination's vendor; the answer's body is left unread.

        ``read_timeout`` (default: the configured one) bounds the wait for the answer's first
        byte and every later gap between bytes.
        """
        read_timeout = self.read_timeout if read_timeout is None else read_timeout
        request = requests.PreparedRequest()
        request.method = "POST"
        request.url = url
        # A plain dict: the headers are the router's own, spelled one way; nothing looks them up
        # in another case on the way out.
        request.headers = {**self._headers_for(combination.credential, stream), "Content-Length": str(len(body))}  # type: ignore[assignment]
        request.body = body
        with _mapped(combination, "before answering", read_timeout, self._connect_timeout):
            response = self._adapter.send(
                request,
                stream=True,
                timeout=(self._connect_timeout, read_timeout),
                verify=self._verify,
                proxies=self._proxies[combination.vendor.name],
            )
        return VendorResponse(combination, response, read_timeout)

    def _headers_for(self, credential: Credential, stream: bool) -> dict[str, str]:
        """The router's own headers for one key (built once): never anything from the client."""
        key = (credential.label, stream)
        headers = self._headers.get(key)
        if headers is None:
            headers = {
                "Authorization": f"Bearer {credential.secret}",
                "Content-Type": "application/json",
                "Accept": "text/event-stream" if stream else "application/json",
                "User-Agent": USER_AGENT,
                # A compressed event stream would be held back by the decompressor's buffering.
                "Accept-Encoding": "identity" if stream else "gzip, deflate",
            }
            self._headers[key] = headers
        return headers


@contextlib.contextmanager
def _mapped(
    combination: Combination,
    where: str,
    read_timeout: float,
    connect_timeout: float | None = None,
) -> Iterator[None]:
    """Transport failures inside the block raised as the router's errors: the one error map, used
    for sending and for every read. Anything else (a bug) is raised as it is."""
    try:
        yield
    except Exception as exc:
        mapped = _mapped_error(exc, combination, where, read_timeout, connect_timeout)
        if mapped is None:
            raise
        raise mapped from None


def _mapped_error(
    exc: Exception,
    combination: Combination,
    where: str,
    read_timeout: float,
    connect_timeout: float | None = None,
) -> UpstreamError | None:
    """The one translation of transport failures, when sending or reading, into the router's
    errors; None for anything else (a bug, raised as it is)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return UpstreamTimeout(combination.describe(f"could not be reached within {connect_timeout:g} s"))
    if isinstance(exc, (requests.exceptions.ReadTimeout, urllib3.exceptions.ReadTimeoutError, VendorSilent)):
        silent = "sent no answer within" if where == "before answering" else "went silent for"
        return UpstreamTimeout(combination.describe(f"{silent} {read_timeout:g} s{_suffix(where)}"))
    if isinstance(exc, requests.exceptions.SSLError):
        return UpstreamError(combination.describe("failed the TLS handshake"))
    if isinstance(exc, requests.exceptions.ConnectionError):
        return UpstreamError(combination.describe(_connection_problem(exc)))
    if isinstance(exc, requests.exceptions.RequestException):
        return UpstreamError(combination.describe(f"could not be called ({type(exc).__name__})"))
    if isinstance(exc, (BodyBroken, urllib3.exceptions.HTTPError, OSError, ValueError)):
        # Reading a body: the body cut or its framing broken (BodyBroken, urllib3's ProtocolError),
        # DecodeError, and ValueError from reading a response that another greenlet just closed.
        return UpstreamError(combination.describe(f"dropped the connection {where}"))
    return None


def _suffix(where: str) -> str:
    return "" if where == "before answering" else f" {where}"


def parse_retry_after(value: str | None) -> float | None:
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


def _connection_problem(exc: requests.exceptions.ConnectionError) -> str:
    if _caused_by(exc, ConnectionRefusedError):
        return "refused the connection"
    if _caused_by(exc, urllib3.exceptions.NameResolutionError):
        return "could not be resolved (DNS)"
    if _caused_by(exc, urllib3.exceptions.ProtocolError) or _caused_by(exc, ConnectionResetError):
        return "closed the connection without answering"
    return "could not be reached"


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``kind`` is anywhere in the chain of causes and arguments requests wraps around."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind):
            return True
        pending.extend(arg for arg in current.args if isinstance(arg, BaseException))
        for linked in (current.__cause__, current.__context__, getattr(current, "reason", None)):
            if isinstance(linked, BaseException):
                pending.append(linked)
    return False
