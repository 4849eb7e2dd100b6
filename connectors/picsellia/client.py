"""`PicselliaClient`: plain ``requests`` to Picsellia's main host and a deployment's monitor.

What the SDK does, without loading it (see ``../shared/FORMATS.md`` "Picsellia"):

- main host (``$PICSELLIA_HOST``, default ``https://app.picsellia.com``), bearer API token:
  the organization (given, ``$PICSELLIA_ORGANIZATION_ID``, else the default one of
  ``GET /api/home/ping``), the deployment (``GET /api/organization/<org>/deployments/find``
  with ``id=`` or ``name=``; its ``oracle_host`` is the monitoring host), its model version
  (``GET /api/deployment/<id>``) and that version's ``labels`` (``GET /api/model/version/<id>``);
- monitoring host (given, ``$PICSELLIA_MONITORING_HOST``, else the deployment's
  ``oracle_host``): ``POST /api/auth/login`` with ``{"api_token", "deployment_id"}`` gives a
  JWT; a request answered 401 logs in again once and is repeated.

Every request goes through the client's ``gate`` and is tried once: the runtime retries.
Failures are `DeliveryError`: retryable for 429 and every 5xx (``Retry-After`` kept), a
timeout and a dropped connection; not retryable for the other 4xx. The API token comes from
the argument, else ``$PICSELLIA_API_TOKEN``; it never appears in a message or a repr.
"""

from __future__ import annotations

import os
from typing import Any

import requests

from connectors.base import DeliveryError, RequestGate

__all__ = [
    "DEFAULT_HOST",
    "HOST_VARIABLE",
    "MONITORING_HOST_VARIABLE",
    "ORGANIZATION_VARIABLE",
    "PicselliaClient",
    "PicselliaConfigError",
    "TOKEN_VARIABLE",
]

#: Environment variables: the API token, the main host, the monitoring host, the organization.
TOKEN_VARIABLE = "PICSELLIA_API_TOKEN"
HOST_VARIABLE = "PICSELLIA_HOST"
MONITORING_HOST_VARIABLE = "PICSELLIA_MONITORING_HOST"
ORGANIZATION_VARIABLE = "PICSELLIA_ORGANIZATION_ID"
#: Picsellia's own main host.
DEFAULT_HOST = "https://app.picsellia.com"


class PicselliaConfigError(ValueError):
    """The Picsellia API token is missing."""


def _retry_after(response: requests.Response) -> float | None:
    try:
        return max(float(response.headers.get("Retry-After", "")), 0.0)
    except ValueError:
        return None


def _message(response: requests.Response) -> str:
    try:
        found = response.json()
        text = found.get("message") if isinstance(found, dict) else None
    except ValueError:
        text = None
    return str(text or response.text or response.reason or "")[:500]


class PicselliaClient:
    """Requests to Picsellia for one deployment's monitoring; picklable (no session kept).

    Args:
        api_token: The API token; default ``$PICSELLIA_API_TOKEN``.
        host: The main host; default ``$PICSELLIA_HOST``, else Picsellia's.
        monitoring_host: The deployment's monitoring host; default
            ``$PICSELLIA_MONITORING_HOST``, else found with the deployment (`find_deployment`).
        organization_id: The organization; default ``$PICSELLIA_ORGANIZATION_ID``, else
            the token's default organization.
        gate: Where each request waits its turn (default: lets all through).
        timeout: Seconds one request may take.

    Raises:
        PicselliaConfigError: No API token (the message names the variable).

    Example:
        >>> client = PicselliaClient(monitoring_host="http://127.0.0.1:9")  # doctest: +SKIP
        >>> client.post_prediction("3f2...", body)                          # doctest: +SKIP
        'created'
    """

    def __init__(
        self,
        api_token: str | None = None,
        host: str | None = None,
        monitoring_host: str | None = None,
        organization_id: str | None = None,
        gate: RequestGate | None = None,
        timeout: float = 60.0,
    ) -> None:
        self._token = api_token or os.environ.get(TOKEN_VARIABLE) or None
        if not self._token:
            raise PicselliaConfigError(
                f"Picsellia credentials not found: set {TOKEN_VARIABLE} in the environment "
                f"(and {HOST_VARIABLE} for another host than {DEFAULT_HOST})"
            )
        self.host = (host or os.environ.get(HOST_VARIABLE) or DEFAULT_HOST).rstrip("/")
        found = monitoring_host or os.environ.get(MONITORING_HOST_VARIABLE) or None
        self.monitoring_host: str | None = found.rstrip("/") if found else None
        self.organization_id = organization_id or os.environ.get(ORGANIZATION_VARIABLE) or None
        self.gate = gate if gate is not None else RequestGate()
        self.timeout = float(timeout)
        self.logins = 0
        self._session: requests.Session | None = None
        self._jwt: str | None = None
        self._jwt_for: str | None = None

    def __repr__(self) -> str:
        return f"PicselliaClient(host={self.host!r}, monitoring_host={self.monitoring_host!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_session"] = None  # a new process opens its own session and logs in
        state["_jwt"] = state["_jwt_for"] = None
        return state

    @property
    def session(self) -> requests.Session:
        """This process's session, opened on first use."""
        if self._session is None:
            self._session = requests.Session()
        return self._session

    def close(self) -> None:
        """Close the session."""
        if self._session is not None:
            self._session.close()
            self._session = None

    # ------------------------------------------------------------------ transport
    def _send(
        self, what: str, method: str, url: str, headers: dict[str, str], **kwargs: Any
    ) -> requests.Response:
        try:
            with self.gate.request():
                return self.session.request(
                    method, url, headers=headers, timeout=self.timeout, **kwargs
                )
        except requests.RequestException as exc:
            raise DeliveryError(
                f"Picsellia {what}: {type(exc).__name__} (no answer)", retryable=True
            ) from None

    def _raise_for(self, what: str, response: requests.Response) -> None:
        status = response.status_code
        if status < 400:
            return
        retryable = status == 429 or status >= 500
        hint = ""
        if status in (401, 403):
            hint = f"; Picsellia refused the API token, check {TOKEN_VARIABLE}"
        text = self._scrub(_message(response))
        raise DeliveryError(
            f"Picsellia {what}: HTTP {status}: {text}{hint}",
            retryable=retryable,
            retry_after=_retry_after(response) if retryable else None,
            status=status,
        )

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    def _main_get(self, what: str, path: str, params: dict[str, Any] | None = None) -> Any:
        headers = {"Authorization": f"Bearer {self._token}"}
        response = self._send(what, "GET", self.host + path, headers, params=params)
        self._raise_for(what, response)
        try:
            return response.json()
        except ValueError:
            raise DeliveryError(
                f"Picsellia {what}: the answer is not JSON", retryable=False
            ) from None

    # ------------------------------------------------------------------ main host
    def organization(self) -> str:
        """The organization id: the configured one, else the token's default organization.

        Raises:
            DeliveryError: The ping failed, or the token has no default organization.
        """
        if self.organization_id is None:
            ping = self._main_get("ping", "/api/home/ping")
            found = ping.get("default_organization") if isinstance(ping, dict) else None
            if not found:
                raise DeliveryError(
                    "Picsellia: the API token has no default organization; set "
                    f"{ORGANIZATION_VARIABLE} or upload_options={{'organization_id': ...}}",
                    retryable=False,
                )
            self.organization_id = str(found)
        return self.organization_id

    def find_deployment(
        self, deployment_id: str | None = None, deployment_name: str | None = None
    ) -> dict[str, Any]:
        """The deployment (by id, else by name), as the SDK's ``get_deployment`` finds it.

        Sets `monitoring_host` from its ``oracle_host`` when none was configured.

        Raises:
            DeliveryError: Not found (404, not retryable), or the request failed.
            ValueError: Neither an id nor a name.
        """
        if not deployment_id and not deployment_name:
            raise ValueError("a Picsellia deployment needs deployment_id or deployment_name")
        params = {"id": deployment_id} if deployment_id else {"name": deployment_name}
        what = f"deployment {deployment_id or deployment_name!r}"
        path = f"/api/organization/{self.organization()}/deployments/find"
        found = self._main_get(what, path, params)
        if self.monitoring_host is None:
            oracle = found.get("oracle_host")
            if not oracle:
                raise DeliveryError(
                    f"Picsellia {what} has no monitoring host (oracle_host); set "
                    f"{MONITORING_HOST_VARIABLE}",
                    retryable=False,
                )
            self.monitoring_host = str(oracle).rstrip("/")
        return found

    def deployment_labels(self, deployment_id: str) -> tuple[dict[str, str], dict[str, str] | None]:
        """The labels (``{"1": "car"}``) of the deployment's model version and of its shadow.

        Returns:
            (model labels, shadow model labels or None when it has no shadow model).

        Raises:
            DeliveryError: A request failed.
        """
        deployment = self._main_get(
            f"deployment {deployment_id!r}", f"/api/deployment/{deployment_id}"
        )

        def labels_of(version_id: Any) -> dict[str, str] | None:
            if not version_id:
                return None
            found = self._main_get(
                f"model version {version_id}", f"/api/model/version/{version_id}"
            )
            return {str(k): str(v) for k, v in (found.get("labels") or {}).items()}

        labels = labels_of(deployment.get("model_version_id"))
        if labels is None:
            raise DeliveryError(
                f"Picsellia deployment {deployment_id!r} has no model version", retryable=False
            )
        return labels, labels_of(deployment.get("shadow_model_version_id"))

    # ------------------------------------------------------------------ monitoring host
    def login(self, deployment_id: str) -> None:
        """Get a JWT for ``deployment_id`` from the monitoring host.

        Raises:
            DeliveryError: Refused (401/403: not retryable) or failed.
        """
        if self.monitoring_host is None:
            raise ValueError(
                "the Picsellia monitoring host is not known yet: set "
                f"{MONITORING_HOST_VARIABLE} or find the deployment first"
            )
        body = {"api_token": self._token, "deployment_id": str(deployment_id)}
        url = self.monitoring_host + "/api/auth/login"
        response = self._send("login", "POST", url, {}, json=body)
        self._raise_for("login", response)
        try:
            self._jwt = str(response.json()["jwt"])
        except (ValueError, KeyError, TypeError):
            raise DeliveryError(
                "Picsellia login: the answer holds no jwt", retryable=False
            ) from None
        self._jwt_for = str(deployment_id)
        self.logins += 1

    def _monitoring_post(self, what: str, deployment_id: str, path: str, body: Any) -> Any:
        if self._jwt is None or self._jwt_for != str(deployment_id):
            self.login(deployment_id)
        url = self.monitoring_host + path
        for again in (True, False):
            headers = {"Authorization": f"Bearer {self._jwt}"}
            response = self._send(what, "POST", url, headers, json=body)
            if response.status_code == 401 and again:
                self.login(deployment_id)  # the JWT expired: log in again, once
                continue
            return response
        return response  # pragma: no cover - the loop always returns

    def post_prediction(self, deployment_id: str, body: dict[str, Any]) -> str:
        """``POST /api/deployment/<id>/predictions``: ``"created"`` (201) or ``"already"`` (409).

        Raises:
            DeliveryError: Any other answer: retryable for 429 and 5xx (and no answer),
                not for another 4xx (the message holds the service's reason).
        """
        what = f"prediction {body.get('filename')!r}"
        path = f"/api/deployment/{deployment_id}/predictions"
        response = self._monitoring_post(what, deployment_id, path, body)
        if response.status_code == 201:
            return "created"
        if response.status_code == 409:
            return "already"
        self._raise_for(what, response)
        raise DeliveryError(  # 200 and other successes: the SDK treats them as errors too
            f"Picsellia {what}: unexpected HTTP {response.status_code}: {_message(response)}",
            retryable=False,
            status=response.status_code,
        )
