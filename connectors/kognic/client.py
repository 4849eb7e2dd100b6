"""`KognicClient`: ``kognic-auth``'s requests session as the transport, behind the job's gate.

Credentials come from the arguments, else from ``KOGNIC_CLIENT_ID`` and
``KOGNIC_CLIENT_SECRET``, else from the credentials file ``KOGNIC_CREDENTIALS`` names (the
JSON file Kognic hands out). The API host is ``KOGNIC_HOST`` (default
``https://app.kognic.com``), the authentication host ``KOGNIC_AUTH_HOST`` (default
``kognic.auth.DEFAULT_HOST``). The secret never appears in a message, a log line or a repr.

The session is ``kognic.auth.requests.base_client.create_session`` over a
``RequestsAuthSession`` (client credentials; on a 401 it fetches a new token and sends the
request once more, so an expired token costs one request, never a failure). The client
replaces its adapters by one of its own, which

- sends every HTTP request, token requests included, through the client's ``gate`` (the
  job's shared rate limiter and in-flight cap);
- holds at most ``pool_size`` connections to the API (``pool_block=True``: a request waits
  for a free connection rather than opening another), so that the connections of all the
  job's processes stay within Kognic's advice of 10;
- retries nothing: ``kognic-auth`` retries only 502/503/504 and never a POST, so the
  caller retries (`KognicClient.call`, or the upload runtime), which makes a retried POST
  safe by first looking for what an earlier try created.

Failures become `DeliveryError`: retryable for 408, 429 and 5xx (with ``Retry-After``),
timeouts, dropped connections and a 401 on an API request (the token expired again between
its refresh and the resend: many processes share a client's credentials); not retryable
for refused client credentials (the token request), 403 and other refusals (400, 404,
409...), whose message names Kognic's answer.

Example:
    >>> client = KognicClient()                                        # doctest: +SKIP
    >>> client.call("list groups", lambda c: c.get("/v1/datasets/d1/predictions-groups"))
    ... # doctest: +SKIP
    {'data': [...]}
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import requests
from requests.adapters import HTTPAdapter

from connectors.base import DeliveryError, RequestGate
from connectors.retry import RetryPolicy, call_with_retries

__all__ = [
    "AUTH_HOST_VARIABLE",
    "CLIENT_ID_VARIABLE",
    "CLIENT_SECRET_VARIABLE",
    "CREDENTIALS_VARIABLE",
    "DEFAULT_HOST",
    "DEFAULT_POOL_SIZE",
    "HOST_VARIABLE",
    "KognicClient",
    "KognicConfigError",
    "KognicCredentials",
    "resolve_credentials",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Environment variables of the client credentials, of a credentials file, and of the hosts.
CLIENT_ID_VARIABLE, CLIENT_SECRET_VARIABLE = "KOGNIC_CLIENT_ID", "KOGNIC_CLIENT_SECRET"
CREDENTIALS_VARIABLE = "KOGNIC_CREDENTIALS"
HOST_VARIABLE, AUTH_HOST_VARIABLE = "KOGNIC_HOST", "KOGNIC_AUTH_HOST"
#: Kognic's API host.
DEFAULT_HOST = "https://app.kognic.com"
#: Connections one client holds at most, when nobody says otherwise.
DEFAULT_POOL_SIZE = 2
#: Seconds to connect, and to wait for an answer.
TIMEOUT_S = (10.0, 60.0)


class KognicConfigError(ValueError):
    """The Kognic credentials are missing or unreadable, or a host is not an http(s) URL."""


@dataclass(frozen=True)
class KognicCredentials:
    """A client id and secret (the secret is left out of the repr)."""

    client_id: str
    client_secret: str

    def __repr__(self) -> str:
        return f"KognicCredentials(client_id={self.client_id!r})"


def resolve_credentials(
    client_id: str | None = None, client_secret: str | None = None
) -> KognicCredentials:
    """The arguments, else ``KOGNIC_CLIENT_ID``/``_SECRET``, else the ``KOGNIC_CREDENTIALS`` file.

    Raises:
        KognicConfigError: None are set, only half of a pair is, or the credentials file
            cannot be read; the message names the variables, never a secret.

    Example:
        >>> resolve_credentials("id-1", "s3cret")
        KognicCredentials(client_id='id-1')
    """
    if client_id or client_secret:
        if not (client_id and client_secret):
            raise KognicConfigError("Kognic credentials need both a client id and a secret")
        return KognicCredentials(str(client_id), str(client_secret))
    env_id, env_secret = os.environ.get(CLIENT_ID_VARIABLE), os.environ.get(CLIENT_SECRET_VARIABLE)
    if env_id and env_secret:
        return KognicCredentials(env_id, env_secret)
    path = os.environ.get(CREDENTIALS_VARIABLE)
    if path:
        from kognic.auth.credentials_parser import parse_credentials

        try:
            parsed = parse_credentials(path)
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise KognicConfigError(
                f"cannot read the Kognic credentials file {path!r} ({CREDENTIALS_VARIABLE}): "
                f"{type(exc).__name__}: {exc}"
            ) from None
        return KognicCredentials(parsed.client_id, parsed.client_secret)
    raise KognicConfigError(
        f"Kognic credentials not found: set {CLIENT_ID_VARIABLE} and {CLIENT_SECRET_VARIABLE}, "
        f"or {CREDENTIALS_VARIABLE} (a credentials file), in the environment"
    )


class _GatedAdapter(HTTPAdapter):
    """Sends each request through the gate, over a bounded, blocking connection pool."""

    def __init__(self, gate: Callable[[], RequestGate], pool_size: int, retries: Any = 0) -> None:
        super().__init__(
            pool_connections=1, pool_maxsize=pool_size, pool_block=True, max_retries=retries
        )
        self._gate = gate

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        with self._gate().request():
            return super().send(request, **kwargs)


class KognicClient:
    """Kognic's API over ``kognic-auth``'s session, with the job's gate; picklable.

    A copy in another process opens its own session (and fetches its own token).

    Args:
        client_id: The client id; default from the environment (see `resolve_credentials`).
        client_secret: The client secret; likewise.
        host: The API's base URL; default ``$KOGNIC_HOST``, else `DEFAULT_HOST`.
        auth_host: The authentication server; default ``$KOGNIC_AUTH_HOST``, else
            ``kognic.auth.DEFAULT_HOST``.
        gate: Where each HTTP request waits its turn (default: lets all through).
        pool_size: Connections to the API this client holds at most.
        retry: How `call` retries the retryable failures.

    Example:
        >>> client = KognicClient("id-1", "s3cret", host="http://127.0.0.1:9")
        >>> client
        KognicClient(host='http://127.0.0.1:9', client_id='id-1')
    """

    def __init__(
        self,
        client_id: str | None = None,
        client_secret: str | None = None,
        host: str | None = None,
        auth_host: str | None = None,
        gate: RequestGate | None = None,
        pool_size: int = DEFAULT_POOL_SIZE,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 (a frozen dataclass)
    ) -> None:
        from kognic.auth import DEFAULT_HOST as DEFAULT_AUTH_HOST

        self._credentials: KognicCredentials | None = None
        self._missing: str | None = None
        try:
            self._credentials = resolve_credentials(client_id, client_secret)
        except KognicConfigError as error:  # reported by `check`, before any work
            self._missing = str(error)
        self.host = (host or os.environ.get(HOST_VARIABLE) or DEFAULT_HOST).rstrip("/")
        self.auth_host = (
            auth_host or os.environ.get(AUTH_HOST_VARIABLE) or DEFAULT_AUTH_HOST
        ).rstrip("/")
        self.gate = gate if gate is not None else RequestGate()
        self.pool_size = int(pool_size)
        self.retry = retry
        self._session: requests.Session | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ state
    def __repr__(self) -> str:
        client_id = self._credentials.client_id if self._credentials else None
        return f"KognicClient(host={self.host!r}, client_id={client_id!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_session"] = None  # a new process opens its own session
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def with_gate(self, gate: RequestGate) -> KognicClient:
        """A copy of this client whose requests (on its own session) go through ``gate``."""
        clone = copy.copy(self)
        clone.gate, clone._session, clone._lock = gate, None, threading.Lock()
        return clone

    def check(self) -> None:
        """Check the credentials were found and the hosts are http(s) URLs (no request).

        Raises:
            KognicConfigError: What is missing or wrong, naming the variable.
        """
        if self._credentials is None:
            raise KognicConfigError(self._missing or "Kognic credentials not found")
        for name, url in ((HOST_VARIABLE, self.host), (AUTH_HOST_VARIABLE, self.auth_host)):
            if not url.startswith(("http://", "https://")):
                raise KognicConfigError(f"{name} must be an http(s) URL, got {url!r}")
        if self.pool_size < 1:
            raise KognicConfigError(f"pool_size must be >= 1, got {self.pool_size}")

    @property
    def session(self) -> requests.Session:
        """The authenticated session, built on first use, its requests behind the gate."""
        if self._session is None:
            with self._lock:
                if self._session is None:
                    self._session = self._new_session()
        return self._session

    def _new_session(self) -> requests.Session:
        from kognic.auth.requests import RequestsAuthSession
        from kognic.auth.requests.auth_session import TOKEN_FETCH_RETRY
        from kognic.auth.requests.base_client import create_session

        self.check()
        assert self._credentials is not None
        provider = RequestsAuthSession(
            auth=(self._credentials.client_id, self._credentials.client_secret),
            host=self.auth_host,
        )
        token_adapter = _GatedAdapter(lambda: self.gate, 1, TOKEN_FETCH_RETRY)
        provider.oauth_session.mount(provider.token_url, token_adapter)
        session = create_session(token_provider=provider, client_name="tessera")
        adapter = _GatedAdapter(lambda: self.gate, self.pool_size)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def close(self) -> None:
        """Close the session's connections (a later request opens a new session)."""
        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            session.close()

    # ------------------------------------------------------------------ requests
    def get(self, path: str, what: str | None = None) -> Any:
        """``GET {host}{path}`` once; the answer's JSON.

        Raises:
            DeliveryError: As the module docstring says.
        """
        return self.request("GET", path, what=what)

    def post(self, path: str, body: dict[str, Any], what: str | None = None) -> Any:
        """``POST {host}{path}`` with the JSON ``body``, once (never retried here).

        Raises:
            DeliveryError: As the module docstring says.
        """
        return self.request("POST", path, body, what=what)

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, what: str | None = None
    ) -> Any:
        """Send one request (through the gate) and return its JSON answer (None if empty).

        Raises:
            DeliveryError: As the module docstring says.
        """
        what = what or f"Kognic {method} {path}"
        try:
            response = self.session.request(method, self.host + path, json=body, timeout=TIMEOUT_S)
        except KognicConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - every transport failure is mapped
            raise self._error(what, exc) from None
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise DeliveryError(
                f"{what}: the answer is not JSON (HTTP {response.status_code})",
                retryable=True,
                status=response.status_code,
            ) from None

    def call(self, what: str, action: Callable[[KognicClient], T], retry: bool = True) -> T:
        """Run ``action(self)``, retrying retryable failures when ``retry`` (safe calls only).

        Raises:
            DeliveryError: The last failure; refused credentials and 403 are never retried.
        """
        if not retry:
            return action(self)

        def log(error: DeliveryError, wait: float) -> None:
            logger.info("%s: %s; retrying in %.2f s", what, error, wait)

        return call_with_retries(lambda: action(self), self.retry, on_retry=log)

    def _error(self, what: str, exc: Exception) -> DeliveryError:
        response = getattr(exc, "response", None)
        if isinstance(exc, requests.HTTPError) and response is not None:
            return _status_error(what, response)
        if isinstance(exc, requests.RequestException):
            return DeliveryError(f"{what}: {type(exc).__name__}", retryable=True)
        from authlib.common.errors import AuthlibBaseError

        if isinstance(exc, AuthlibBaseError):  # the token request was refused
            code = str(getattr(exc, "error", "") or "")
            if code in ("invalid_client", "unauthorized_client", "invalid_grant", "access_denied"):
                return DeliveryError(
                    f"{what}: HTTP 401: Kognic refused the client credentials ({code}); "
                    f"check {CLIENT_ID_VARIABLE}/{CLIENT_SECRET_VARIABLE} or "
                    f"{CREDENTIALS_VARIABLE}",
                    retryable=False,
                    status=401,
                )
            return DeliveryError(f"{what}: the token request failed ({code})", retryable=True)
        return DeliveryError(f"{what}: {self._scrub(f'{type(exc).__name__}: {exc}')}", False)

    def _scrub(self, text: str) -> str:
        secret = self._credentials.client_secret if self._credentials else ""
        return text.replace(secret, "***") if secret else text


def _status_error(what: str, response: requests.Response) -> DeliveryError:
    status = response.status_code
    try:
        found = response.json()
        detail = found.get("message", found) if isinstance(found, dict) else found
    except ValueError:
        detail = response.text[:200]
    text = f"{what}: HTTP {status}: {detail}"
    if status == 401:
        # the token was issued (a refused client is an error of the token request), then
        # refused: it expired between its refresh and the request; a new one may pass
        return DeliveryError(f"{text} (the token expired; a new one is fetched)", True, status=401)
    if status == 403:
        return DeliveryError(
            f"{text} (Kognic refused the credentials; check {CLIENT_ID_VARIABLE}/"
            f"{CLIENT_SECRET_VARIABLE} or {CREDENTIALS_VARIABLE})",
            retryable=False,
            status=status,
        )
    retryable = status in (408, 429) or status >= 500
    wait = _retry_after(response) if retryable else None
    return DeliveryError(text, retryable=retryable, retry_after=wait, status=status)


def _retry_after(response: requests.Response) -> float | None:
    try:
        return max(float(response.headers.get("Retry-After", "")), 0.0)
    except ValueError:
        return None
