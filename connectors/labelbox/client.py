"""`LabelboxClient`: the official ``labelbox`` SDK as the transport, behind the job's gate.

Credentials come from the arguments, else from ``LABELBOX_API_KEY`` (required) and
``LABELBOX_ENDPOINT`` (default ``https://api.labelbox.com/graphql``). The key never appears
in a message, a log line or a repr.

Every HTTP request the SDK sends on its session goes through the client's ``gate`` (an
adapter mounted on ``labelbox.Client.connection``), so the job's shared rate limiter counts
each one, polls included; the adapter also keeps the ``Retry-After`` of a 429, which the
SDK drops when it raises ``ApiLimitError``. SDK exceptions become `DeliveryError`:
retryable for 429, 5xx, timeouts and dropped connections (the SDK does not retry 429 nor a
dropped connection), not retryable for 401/403 and refusals. The SDK itself retries 5xx
and timeouts for up to 120 s.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import requests
from requests.adapters import HTTPAdapter

from connectors.base import DeliveryError, RequestGate
from connectors.retry import RetryPolicy, call_with_retries

__all__ = [
    "API_KEY_VARIABLE",
    "DEFAULT_ENDPOINT",
    "ENDPOINT_VARIABLE",
    "LabelboxClient",
    "LabelboxConfigError",
    "resolve_credentials",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Environment variables of the API key and of the GraphQL endpoint.
API_KEY_VARIABLE, ENDPOINT_VARIABLE = "LABELBOX_API_KEY", "LABELBOX_ENDPOINT"
#: Labelbox's own GraphQL endpoint.
DEFAULT_ENDPOINT = "https://api.labelbox.com/graphql"


class LabelboxConfigError(ValueError):
    """The Labelbox API key is missing."""


def resolve_credentials(api_key: str | None = None, endpoint: str | None = None) -> tuple[str, str]:
    """Return (API key, GraphQL endpoint): the arguments, else the environment.

    Raises:
        LabelboxConfigError: No API key; the message names the variable, never a key.

    Example:
        >>> resolve_credentials("k3y", "http://127.0.0.1:9/graphql")
        ('k3y', 'http://127.0.0.1:9/graphql')
    """
    api_key = api_key or os.environ.get(API_KEY_VARIABLE) or None
    endpoint = endpoint or os.environ.get(ENDPOINT_VARIABLE) or DEFAULT_ENDPOINT
    if not api_key:
        raise LabelboxConfigError(
            f"Labelbox credentials not found: set {API_KEY_VARIABLE} in the environment "
            f"(and {ENDPOINT_VARIABLE} for another server than {DEFAULT_ENDPOINT})"
        )
    return api_key, endpoint


class _GatedAdapter(HTTPAdapter):
    """Sends each request of the SDK's session through the gate; notes 429's Retry-After."""

    def __init__(self, gate: Callable[[], RequestGate], seen: threading.local) -> None:
        super().__init__()
        self._gate = gate
        self._seen = seen

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        with self._gate().request():
            response = super().send(request, **kwargs)
        if response.status_code == 429:
            self._seen.retry_after = _retry_after(response)
        return response


class LabelboxClient:
    """The SDK client for one endpoint, with the job's gate and retries; picklable.

    Args:
        api_key: The API key; default ``$LABELBOX_API_KEY``.
        endpoint: The GraphQL endpoint; default ``$LABELBOX_ENDPOINT`` or Labelbox's.
        gate: Where each HTTP request waits its turn (default: lets all through).
        retry: How `call` retries the retryable failures.

    Example:
        >>> client = LabelboxClient()                              # doctest: +SKIP
        >>> client.call("get run", lambda sdk: sdk.get_model_run("cl...")).name  # doctest: +SKIP
        'run 1'
    """

    def __init__(
        self,
        api_key: str | None = None,
        endpoint: str | None = None,
        gate: RequestGate | None = None,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 (a frozen dataclass)
    ) -> None:
        self._api_key, self.endpoint = resolve_credentials(api_key, endpoint)
        self.gate = gate if gate is not None else RequestGate()
        self.retry = retry
        self._sdk: Any = None
        self._seen = threading.local()

    def __repr__(self) -> str:
        return f"LabelboxClient(endpoint={self.endpoint!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_sdk"] = None  # a new process opens its own session
        del state["_seen"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._seen = threading.local()

    def with_gate(self, gate: RequestGate) -> LabelboxClient:
        """A copy of this client whose requests (its own SDK session's) go through ``gate``."""
        clone = copy.copy(self)
        clone.gate, clone._sdk, clone._seen = gate, None, threading.local()
        return clone

    @property
    def sdk(self) -> Any:
        """The ``labelbox.Client``, built on first use, its session behind the gate."""
        if self._sdk is None:
            import labelbox

            sdk = labelbox.Client(api_key=self._api_key, endpoint=self.endpoint)
            adapter = _GatedAdapter(lambda: self.gate, self._seen)
            sdk.connection.mount("http://", adapter)
            sdk.connection.mount("https://", adapter)
            self._sdk = sdk
        return self._sdk

    def fetch(self, url: str, timeout: float = 60.0) -> requests.Response:
        """GET a file URL the platform returned (statuses, media), once, through the gate.

        Raises:
            DeliveryError: As `call` maps failures.
        """
        what = f"Labelbox GET {url.split('?', 1)[0]}"
        try:
            with self.gate.request():
                response = requests.get(url, timeout=timeout)
        except requests.RequestException as exc:
            raise DeliveryError(f"{what}: {type(exc).__name__}", retryable=True) from None
        if response.status_code >= 400:
            status = response.status_code
            retryable = status in (408, 429) or status >= 500
            raise DeliveryError(
                f"{what}: HTTP {status}",
                retryable=retryable,
                retry_after=_retry_after(response) if status == 429 else None,
                status=status,
            )
        return response

    def call(self, what: str, action: Callable[[Any], T], retry: bool = True) -> T:
        """Run ``action(sdk)`` (retried unless ``retry`` is False), SDK errors mapped.

        Raises:
            DeliveryError: The failure (see the module docstring); 401/403 are never
                retried.
        """

        def attempt() -> T:
            self._seen.retry_after = None
            try:
                return action(self.sdk)
            except DeliveryError:
                raise
            except Exception as exc:  # noqa: BLE001 - every SDK failure is mapped
                raise self._error(what, exc) from None

        if not retry:
            return attempt()

        def log(error: DeliveryError, wait: float) -> None:
            logger.info("%s: %s; retrying in %.2f s", what, error, wait)

        return call_with_retries(attempt, self.retry, on_retry=log)

    def _error(self, what: str, exc: Exception) -> DeliveryError:
        from lbox import exceptions as lbx

        text = self._scrub(f"{type(exc).__name__}: {exc}")
        if isinstance(exc, lbx.AuthenticationError):
            message = (
                f"{what}: HTTP 401: Labelbox refused the API key ({text}); check {API_KEY_VARIABLE}"
            )
            return DeliveryError(message, retryable=False, status=401)
        if isinstance(exc, lbx.AuthorizationError):
            return DeliveryError(f"{what}: HTTP 403: {text}", retryable=False, status=403)
        if isinstance(exc, lbx.ApiLimitError) or " 429 " in f" {exc} ":
            wait = getattr(self._seen, "retry_after", None)
            return DeliveryError(f"{what}: HTTP 429: {text}", True, retry_after=wait, status=429)
        transient = (lbx.InternalServerError, lbx.TimeoutError, lbx.NetworkError)
        if isinstance(exc, transient) or isinstance(exc, requests.RequestException):
            return DeliveryError(f"{what}: {text}", retryable=True)
        if isinstance(exc, lbx.ResourceNotFoundError):
            return DeliveryError(f"{what}: not found: {text}", retryable=False, status=404)
        return DeliveryError(f"{what}: {text}", retryable=False)

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text


def _retry_after(response: requests.Response) -> float | None:
    try:
        return max(float(response.headers.get("Retry-After", "")), 0.0)
    except ValueError:
        return None
