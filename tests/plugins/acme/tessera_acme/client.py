"""`AcmeClient`: the HTTP API of Acme, a made-up labeling platform, with ``requests``.

The server and token come from the arguments, else from the ``ACME_SERVER`` and
``ACME_TOKEN`` environment variables. Every request goes through the client's ``gate``
(a `connectors.base.RequestGate`; the upload runtime and the fetcher bind one backed by
the job's shared rate limiter) and is sent once by `AcmeClient.request`; `AcmeClient.call`
adds retries for the requests made outside the upload runtime, which retries whole
deliveries itself.

The API::

    GET  /api/images?ids=1,2                   {"images": [{"id", "name", "dataset"}]}
    GET  /api/images/<id>/file                 the encoded image
    GET  /api/sets?name=NAME                   {"sets": [{"id", "name", "job", "classes"}]}
    POST /api/sets                             {"name", "job", "classes"} -> {"set": ...}
    POST /api/sets/<id>/classes                {"classes"} -> {"set": ...}
    GET  /api/sets/<id>/annotations?job=J&image_ids=1,2
                                               {"annotations": [{"id", "image_id", "job"}]}
    POST /api/sets/<id>/annotations            {"job", "items": [{"image_id", "annotation"}]}
                                               -> {"created": [...], "failed": {id: reason}}
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import requests

from connectors.base import DeliveryError, RequestGate
from connectors.retry import RetryPolicy, call_with_retries

__all__ = ["AcmeClient", "AcmeConfigError", "resolve_credentials"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Environment variables of the server address and the API token.
SERVER_VARIABLE, TOKEN_VARIABLE = "ACME_SERVER", "ACME_TOKEN"


class AcmeConfigError(ValueError):
    """The Acme server address or API token is missing."""


def resolve_credentials(server: str | None = None, token: str | None = None) -> tuple[str, str]:
    """Return (server address without a trailing slash, token): arguments, else environment.

    Raises:
        AcmeConfigError: Either is missing; the message names the variables, never a token.

    Example:
        >>> resolve_credentials("http://127.0.0.1:8080/", "t0k3n")
        ('http://127.0.0.1:8080', 't0k3n')
    """
    server = server or os.environ.get(SERVER_VARIABLE) or None
    token = token or os.environ.get(TOKEN_VARIABLE) or None
    missing = [n for n, v in ((SERVER_VARIABLE, server), (TOKEN_VARIABLE, token)) if not v]
    if missing:
        raise AcmeConfigError(
            f"Acme credentials not found: set {' and '.join(missing)} in the environment"
        )
    assert server is not None and token is not None
    return server.rstrip("/"), token


class AcmeClient:
    """A client of the Acme HTTP API (see the module docstring); picklable.

    Args:
        server: The server's address; default ``$ACME_SERVER``.
        token: The API token; default ``$ACME_TOKEN``. It never appears in a message or repr.
        gate: Where each request waits its turn (default: lets all through).
        retry: How `call` retries 429s, 5xx, timeouts and dropped connections.
        timeout: Seconds to wait for an answer.

    Example:
        >>> client = AcmeClient()                          # doctest: +SKIP
        >>> client.list_images([1, 2])[0]["name"]          # doctest: +SKIP
        'street.png'
    """

    def __init__(
        self,
        server: str | None = None,
        token: str | None = None,
        gate: RequestGate | None = None,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 (a frozen dataclass)
        timeout: float = 30.0,
    ) -> None:
        self.server, self._token = resolve_credentials(server, token)
        self.gate = gate if gate is not None else RequestGate()
        self.retry = retry
        self.timeout = timeout
        self._session = requests.Session()

    def __repr__(self) -> str:
        return f"AcmeClient(server={self.server!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_session"]  # a new process opens its own connections
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._session = requests.Session()

    # ------------------------------------------------------------------ transport
    def request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
    ) -> requests.Response:
        """Send one request, once, through the gate; return the answer (status < 400).

        Raises:
            DeliveryError: Retryable for 408, 429 (with its ``Retry-After``), 5xx, timeouts
                and dropped connections; not retryable for other 4xx.
        """
        what = f"Acme {method} {path}"
        error: DeliveryError | None = None
        try:
            with self.gate.request():
                response = self._session.request(
                    method,
                    self.server + path,
                    params=params,
                    json=body,
                    headers={"Authorization": f"Bearer {self._token}"},
                    timeout=self.timeout,
                )
        except requests.Timeout:
            error = DeliveryError(f"{what}: no answer within {self.timeout} s", retryable=True)
        except requests.RequestException as exc:  # the exception holds the headers: drop it
            error = DeliveryError(f"{what}: {type(exc).__name__}", retryable=True)
        if error is not None:
            raise error
        status = response.status_code
        if status >= 400:
            retryable = status in (408, 429) or status >= 500
            raise DeliveryError(
                f"{what}: HTTP {status}: {_message(response)}",
                retryable=retryable,
                retry_after=_retry_after(response) if retryable else None,
                status=status,
            )
        return response

    def call(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
        retry: bool = True,
    ) -> Any:
        """Send one request (retried unless ``retry`` is False) and return its JSON."""

        def attempt() -> Any:
            response = self.request(method, path, params, body)
            try:
                return response.json()
            except ValueError:
                raise DeliveryError(
                    f"Acme {path}: the answer is not JSON", retryable=True
                ) from None

        return self.with_retries(attempt, f"Acme {path}") if retry else attempt()

    def with_retries(self, attempt: Callable[[], T], what: str = "Acme request") -> T:
        """Run ``attempt`` (which sends requests) under the client's retry policy."""

        def log(error: DeliveryError, wait: float) -> None:
            logger.info("%s: %s; retrying in %.2f s", what, error, wait)

        return call_with_retries(attempt, self.retry, on_retry=log)

    # ------------------------------------------------------------------ images
    def list_images(self, image_ids: Iterable[int]) -> list[dict[str, Any]]:
        """The images of ``image_ids`` that exist: ``id``, ``name``, ``dataset``."""
        ids = ",".join(str(int(i)) for i in image_ids)
        return list(self.call("GET", "/api/images", params={"ids": ids})["images"])

    def download_image(self, image_id: int) -> bytes:
        """The encoded image (PNG, JPEG...) of ``image_id``, retried."""
        path = f"/api/images/{int(image_id)}/file"
        return self.with_retries(lambda: self.request("GET", path).content, f"Acme {path}")

    # ------------------------------------------------------------------ annotation sets
    def find_set(self, name: str) -> dict[str, Any] | None:
        """The annotation set called ``name``, or None."""
        sets = self.call("GET", "/api/sets", params={"name": name})["sets"]
        return sets[0] if sets else None

    def create_set(self, name: str, job: str, classes: list[str]) -> dict[str, Any]:
        """Create the annotation set ``name`` for ``job`` (not retried: see `find_set`)."""
        body = {"name": name, "job": job, "classes": list(classes)}
        return self.call("POST", "/api/sets", body=body, retry=False)["set"]

    def add_classes(self, set_id: int, classes: list[str]) -> dict[str, Any]:
        """Make sure the set knows ``classes`` (adding is idempotent, so it is retried)."""
        body = {"classes": list(classes)}
        return self.call("POST", f"/api/sets/{int(set_id)}/classes", body=body)["set"]

    def annotated_images(self, set_id: int, job: str, image_ids: Iterable[int]) -> set[int]:
        """Which of ``image_ids`` already hold an annotation of ``job`` in the set (once)."""
        params = {"job": job, "image_ids": ",".join(str(int(i)) for i in image_ids)}
        answer = self.call("GET", f"/api/sets/{int(set_id)}/annotations", params, retry=False)
        return {int(a["image_id"]) for a in answer["annotations"]}

    def add_annotations(
        self, set_id: int, job: str, items: list[tuple[int, dict[str, Any]]]
    ) -> dict[int, str]:
        """Write one annotation per ``(image id, Acme JSON)``, once; return the failures."""
        body = {"job": job, "items": [{"image_id": i, "annotation": a} for i, a in items]}
        answer = self.call("POST", f"/api/sets/{int(set_id)}/annotations", body=body, retry=False)
        return {int(k): str(v) for k, v in answer.get("failed", {}).items()}


def _message(response: requests.Response) -> str:
    try:
        return str(response.json().get("error", "no message"))[:300]
    except (ValueError, AttributeError):
        return response.text.strip()[:300] or response.reason or "no message"


def _retry_after(response: requests.Response) -> float | None:
    try:
        return max(float(response.headers.get("Retry-After", "")), 0.0)
    except ValueError:
        return None
