"""The vendor HTTP client: one pooled requests.Session per worker, timeouts, auth, error mapping.

Nothing Flask lives here. Every failure is raised as an ``UpstreamError`` (or ``UpstreamTimeout``)
whose message names the vendor and model and never a key or URL: requests' own exception text
contains the full URL, so it is never passed on.
"""

from __future__ import annotations

import http.cookiejar
import logging
from collections.abc import Mapping

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.utils import get_environ_proxies

from app.catalog import Combination, Vendor
from app.errors import UpstreamError, UpstreamTimeout

__all__ = ["USER_AGENT", "Upstream"]

USER_AGENT = "generative-api-router/1.0"
# Bytes asked of the socket per stream read: one read returns whatever has arrived, up to this.
READ_SIZE = 65536

log = logging.getLogger(__name__)


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    """Refuses every cookie: a Set-Cookie from one tenant's call must never ride on the next."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: object) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: object) -> bool:
        return False


class Upstream:
    """Sends chat requests to vendors and reads their answers."""

    def __init__(
        self,
        vendors: Mapping[str, Vendor],
        connect_timeout: float,
        read_timeout: float,
        pool_size: int,
    ) -> None:
        session = requests.Session()
        session.cookies.set_policy(_NoCookies())
        # trust_env would re-read proxy variables and ~/.netrc on every call; proxies are
        # resolved once per vendor below instead.
        session.trust_env = False
        adapter = HTTPAdapter(pool_connections=max(len(vendors), 1), pool_maxsize=pool_size, max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        self._session = session
        self._timeout = (connect_timeout, read_timeout)
        self._read_timeout = read_timeout
        self._proxies = {name: get_environ_proxies(vendor.chat_url) for name, vendor in vendors.items()}

    def post(self, combination: Combination, body: bytes, *, stream: bool) -> requests.Response:
        """POST ``body`` to the combination's vendor; the answer's body is left unread."""
        vendor = combination.vendor
        headers = {
            "Authorization": f"Bearer {combination.credential.secret}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if stream else "application/json",
            "User-Agent": USER_AGENT,
        }
        if stream:
            # A compressed event stream would be held back by the decompressor's buffering.
            headers["Accept-Encoding"] = "identity"
        try:
            return self._session.post(
                vendor.chat_url,
                data=body,
                headers=headers,
                timeout=self._timeout,
                stream=True,
                allow_redirects=False,
                proxies=self._proxies.get(vendor.name),
            )
        except requests.exceptions.ConnectTimeout:
            raise UpstreamTimeout(_say(combination, f"could not be reached within {self._timeout[0]:g} s")) from None
        except requests.exceptions.ReadTimeout:
            raise UpstreamTimeout(_say(combination, f"sent no answer within {self._read_timeout:g} s")) from None
        except requests.exceptions.SSLError:
            raise UpstreamError(_say(combination, "failed the TLS handshake")) from None
        except requests.exceptions.ConnectionError as exc:
            raise UpstreamError(_say(combination, _connection_problem(exc))) from None
        except requests.exceptions.RequestException as exc:
            raise UpstreamError(_say(combination, f"could not be called ({type(exc).__name__})")) from None

    def read_all(self, combination: Combination, response: requests.Response) -> bytes:
        """The whole body of a non-stream answer."""
        try:
            return response.content
        except requests.exceptions.ConnectionError as exc:
            if _caused_by(exc, urllib3.exceptions.ReadTimeoutError):
                problem = f"went silent for {self._read_timeout:g} s mid-answer"
                raise UpstreamTimeout(_say(combination, problem)) from None
            raise UpstreamError(_say(combination, "dropped the connection mid-answer")) from None
        except requests.exceptions.RequestException:
            raise UpstreamError(_say(combination, "dropped the connection mid-answer")) from None
        finally:
            response.close()

    def read_some(self, combination: Combination, response: requests.Response) -> bytes:
        """The next bytes of a streamed body as soon as any arrive; b"" at its end."""
        try:
            return response.raw.read1(READ_SIZE, decode_content=True)
        except urllib3.exceptions.ReadTimeoutError:
            raise UpstreamTimeout(_say(combination, f"went silent for {self._read_timeout:g} s mid-stream")) from None
        except (urllib3.exceptions.HTTPError, OSError, ValueError):
            # ProtocolError (connection dropped, broken chunk framing), DecodeError, and
            # ValueError from reading a response that another greenlet just closed.
            raise UpstreamError(_say(combination, "dropped the connection mid-stream")) from None


def _say(combination: Combination, problem: str) -> str:
    return f"Vendor {combination.vendor.name} (model {combination.model.id}) {problem}."


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
