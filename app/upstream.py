"""The vendor HTTP client: one pooled requests transport adapter per worker, timeouts, auth, error mapping.

Nothing Flask lives here. Every failure is raised as an ``UpstreamError`` (or ``UpstreamTimeout``)
whose message names the vendor and model and never a key or URL: requests' own exception text
contains the full URL, so it is never passed on.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from requests.utils import get_environ_proxies

from app.catalog import Combination, Credential, Vendor
from app.errors import UpstreamError, UpstreamTimeout

__all__ = ["USER_AGENT", "Upstream"]

USER_AGENT = "generative-api-router/1.0"
# Bytes asked of the socket per stream read: one read returns whatever has arrived, up to this.
READ_SIZE = 65536
# How much of a vendor's error body is read: error bodies are small; a huge one is not an error.
MAX_ERROR_BODY = 64 * 1024

log = logging.getLogger(__name__)


class Upstream:
    """Sends chat requests to vendors and reads their answers."""

    def __init__(
        self,
        vendors: Mapping[str, Vendor],
        connect_timeout: float,
        read_timeout: float,
        pool_size: int,
    ) -> None:
        # requests' transport adapter, called directly with a ready request: Session.request would
        # merge settings, prepare, run hooks and extract cookies on every call (~80 us each), and
        # its shared cookie jar would carry one tenant's Set-Cookie into the next tenant's call.
        # The adapter keeps no cookies and never follows redirects.
        self._adapter = HTTPAdapter(pool_connections=max(len(vendors), 1), pool_maxsize=pool_size, max_retries=0)
        self._timeout = (connect_timeout, read_timeout)
        # Proxy variables (HTTPS_PROXY, NO_PROXY) are read once per vendor, not on every call.
        self._proxies = {name: get_environ_proxies(vendor.chat_url) for name, vendor in vendors.items()}
        self._headers: dict[tuple[str, bool], dict[str, str]] = {}

    def post(self, combination: Combination, body: bytes, *, stream: bool) -> requests.Response:
        """POST ``body`` to the combination's vendor; the answer's body is left unread."""
        vendor = combination.vendor
        request = requests.PreparedRequest()
        request.method = "POST"
        request.url = vendor.chat_url
        request.headers = CaseInsensitiveDict(self._headers_for(combination.credential, stream))
        request.headers["Content-Length"] = str(len(body))
        request.body = body
        try:
            return self._adapter.send(request, stream=True, timeout=self._timeout, proxies=self._proxies[vendor.name])
        except requests.exceptions.ConnectTimeout:
            raise UpstreamTimeout(combination.describe(f"could not be reached within {self._timeout[0]:g} s")) from None
        except requests.exceptions.ReadTimeout:
            raise UpstreamTimeout(combination.describe(f"sent no answer within {self._timeout[1]:g} s")) from None
        except requests.exceptions.SSLError:
            raise UpstreamError(combination.describe("failed the TLS handshake")) from None
        except requests.exceptions.ConnectionError as exc:
            raise UpstreamError(combination.describe(_connection_problem(exc))) from None
        except requests.exceptions.RequestException as exc:
            raise UpstreamError(combination.describe(f"could not be called ({type(exc).__name__})")) from None

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

    def read_all(self, combination: Combination, response: requests.Response) -> bytes:
        """The whole body of a non-stream answer; its connection goes back to the pool."""
        try:
            # raw.read, not .content: one read instead of a generator of 10 kB pieces. Read to the
            # end, urllib3 hands the connection back to the pool by itself.
            return response.raw.read(decode_content=True)
        except urllib3.exceptions.ReadTimeoutError:
            problem = f"went silent for {self._timeout[1]:g} s mid-answer"
            raise UpstreamTimeout(combination.describe(problem)) from None
        except (urllib3.exceptions.HTTPError, OSError):
            raise UpstreamError(combination.describe("dropped the connection mid-answer")) from None
        finally:
            response.close()

    def read_error(self, combination: Combination, response: requests.Response) -> bytes:
        """Up to MAX_ERROR_BODY bytes of an error answer's body (b"" if it breaks off); closes it."""
        try:
            return response.raw.read(MAX_ERROR_BODY, decode_content=True) or b""
        except (urllib3.exceptions.HTTPError, OSError, ValueError):
            return b""  # the status alone still says what went wrong
        finally:
            response.close()

    def read_some(self, combination: Combination, response: requests.Response) -> bytes:
        """The next bytes of a streamed body as soon as any arrive; b"" at its end."""
        try:
            return response.raw.read1(READ_SIZE, decode_content=True)
        except urllib3.exceptions.ReadTimeoutError:
            raise UpstreamTimeout(combination.describe(f"went silent for {self._timeout[1]:g} s mid-stream")) from None
        except (urllib3.exceptions.HTTPError, OSError, ValueError):
            # ProtocolError (connection dropped, broken chunk framing), DecodeError, and
            # ValueError from reading a response that another greenlet just closed.
            raise UpstreamError(combination.describe("dropped the connection mid-stream")) from None


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
