"""`EncordClient`: the official ``encord`` SDK as the transport, behind the job's gate.

Credentials: an Ed25519 SSH private key (the text, or a file), from the arguments, else
from ``ENCORD_SSH_KEY`` / ``ENCORD_SSH_KEY_FILE`` (the SDK's own variables); the API
address from ``domain``, else ``ENCORD_DOMAIN``, else Encord's. The key never appears in a
message, log or repr; a missing one fails at once (`resolve_credentials`).

The SDK retries only some statuses, and only some calls (label-row get and save, on 413,
429, 500, 502 and 503; not 504), with its own waits. So the client turns the SDK's own
retries off and every SDK call goes once through the gate (`connectors.base.RequestGate`,
the job's shared rate limiter) in `EncordClient.call`, which maps the SDK's exceptions to
`connectors.base.DeliveryError`: 429 (with its ``Retry-After``), 5xx, timeouts and dropped
connections are retryable, and the upload runtime (or `EncordClient.with_retries`) retries
them; authentication, permission and refused labels are not.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from connectors.base import DeliveryError, RequestGate
from connectors.retry import RetryPolicy, call_with_retries

if TYPE_CHECKING:
    from encord.project import Project

__all__ = [
    "DOMAIN_VARIABLE",
    "KEY_FILE_VARIABLE",
    "KEY_VARIABLE",
    "EncordClient",
    "EncordConfigError",
    "resolve_credentials",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The SDK's variables of the SSH private key (text, or a file) and the API address.
KEY_VARIABLE, KEY_FILE_VARIABLE, DOMAIN_VARIABLE = (
    "ENCORD_SSH_KEY",
    "ENCORD_SSH_KEY_FILE",
    "ENCORD_DOMAIN",
)
#: Encord's API, when no domain is given.
DEFAULT_DOMAIN = "https://api.encord.com"


class EncordConfigError(ValueError):
    """The Encord SSH key is missing or unreadable."""


def resolve_credentials(
    ssh_key: str | None = None,
    ssh_key_file: str | Path | None = None,
    domain: str | None = None,
) -> tuple[str, str]:
    """Return (domain without a trailing slash, private key text): arguments, else environment.

    Raises:
        EncordConfigError: No key, or an unreadable key file; the message names the
            variables and the file, never a key.

    Example:
        >>> resolve_credentials("-----BEGIN OPENSSH PRIVATE KEY-----...", domain="http://h/")[0]
        'http://h'
    """
    key = ssh_key or None
    path = ssh_key_file or (None if key else os.environ.get(KEY_FILE_VARIABLE)) or None
    if key is None and path is not None:
        try:
            key = Path(path).expanduser().read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise EncordConfigError(
                f"cannot read the Encord SSH key file {str(path)!r}: {type(exc).__name__}"
            ) from None
    key = key or os.environ.get(KEY_VARIABLE) or None
    if not key or not key.strip():
        raise EncordConfigError(
            f"Encord credentials not found: set {KEY_VARIABLE} (the SSH private key) or "
            f"{KEY_FILE_VARIABLE} (its file) in the environment"
        )
    domain = domain or os.environ.get(DOMAIN_VARIABLE) or DEFAULT_DOMAIN
    return domain.rstrip("/"), key


class EncordClient:
    """The Encord SDK, one project at a time, every call through the gate; picklable.

    Args:
        ssh_key: The SSH private key text; default ``$ENCORD_SSH_KEY``.
        ssh_key_file: A file holding it; default ``$ENCORD_SSH_KEY_FILE``.
        domain: The API address; default ``$ENCORD_DOMAIN``, else Encord's.
        gate: Where each call waits its turn (default: lets all through).
        retry: How `with_retries` retries retryable failures.
        timeout: Seconds the SDK waits for an answer.

    Example:
        >>> client = EncordClient()                                # doctest: +SKIP
        >>> client.project("0d6c...").title                        # doctest: +SKIP
        'street scenes'
    """

    def __init__(
        self,
        ssh_key: str | None = None,
        ssh_key_file: str | Path | None = None,
        domain: str | None = None,
        gate: RequestGate | None = None,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 (a frozen dataclass)
        timeout: int = 60,
    ) -> None:
        self.domain, self._key = resolve_credentials(ssh_key, ssh_key_file, domain)
        self.gate = gate if gate is not None else RequestGate()
        self.retry = retry
        self.timeout = timeout
        self._user: Any = None
        self._projects: dict[str, Project] = {}

    def __repr__(self) -> str:
        return f"EncordClient(domain={self.domain!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_user"], state["_projects"] = None, {}  # a new process builds its own
        return state

    # ------------------------------------------------------------------ transport
    def _user_client(self) -> Any:
        if self._user is None:
            from encord import EncordUserClient
            from encord.http.constants import RequestsSettings

            settings = RequestsSettings(
                max_retries=0,
                connection_retries=0,
                read_timeout=self.timeout,
                write_timeout=self.timeout,
                connect_timeout=min(self.timeout, 30),
            )
            try:
                self._user = EncordUserClient.create_with_ssh_private_key(
                    self._key, requests_settings=settings, domain=self.domain
                )
            except Exception as exc:  # noqa: BLE001 - the SDK's message may quote the key
                raise EncordConfigError(
                    f"the Encord SSH key is not a valid private key ({type(exc).__name__})"
                ) from None
        return self._user

    def check_key(self) -> None:
        """Build the SDK's client (which parses the key) without sending a request.

        Raises:
            EncordConfigError: The key is not a private key the SDK takes.
        """
        self._user_client()

    def call(self, operation: Callable[[], T], what: str) -> T:
        """Run one SDK call (one request), once, through the gate.

        Raises:
            DeliveryError: The SDK's failure, retryable or not (see the module docstring).
        """
        error: DeliveryError | None = None
        try:
            with self.gate.request():
                return operation()
        except Exception as exc:  # noqa: BLE001 - every SDK failure becomes a DeliveryError
            error = delivery_error(exc, f"Encord {what}")
        raise error

    def with_retries(self, operation: Callable[[], T], what: str) -> T:
        """`call` ``operation`` under the client's retry policy."""
        return call_with_retries(
            lambda: self.call(operation, what), self.retry, on_retry=self._log(what)
        )

    @staticmethod
    def _log(what: str) -> Callable[[DeliveryError, float], None]:
        def log(error: DeliveryError, wait: float) -> None:
            logger.info("Encord %s: %s; retrying in %.2f s", what, error, wait)

        return log

    def download(self, url: str, what: str) -> bytes:
        """GET a media URL (a signed link the SDK gave) through the gate, once.

        Raises:
            DeliveryError: Retryable for 408, 429, 5xx, timeouts and dropped connections.
        """
        import requests

        error: DeliveryError | None = None
        try:
            with self.gate.request():
                response = requests.get(url, timeout=self.timeout)
        except requests.RequestException as exc:
            error = DeliveryError(f"Encord {what}: {type(exc).__name__}", retryable=True)
        if error is not None:
            raise error
        status = response.status_code
        if status >= 400:
            retryable = status in (408, 429) or status >= 500
            raise DeliveryError(f"Encord {what}: HTTP {status}", retryable=retryable, status=status)
        return response.content

    def download_to(self, url: str, path: str | Path, what: str) -> Path:
        """GET a media URL into ``path``, streamed, through the gate, once.

        The file appears under its final name only once complete.

        Raises:
            DeliveryError: Retryable for 408, 429, 5xx, timeouts, dropped connections and a
                download that broke off.
        """
        import requests

        path = Path(path)
        partial = path.with_name(path.name + ".part")
        error: DeliveryError | None = None
        try:
            with self.gate.request():
                response = requests.get(url, timeout=self.timeout, stream=True)
                try:
                    status = response.status_code
                    if status >= 400:
                        retryable = status in (408, 429) or status >= 500
                        error = DeliveryError(
                            f"Encord {what}: HTTP {status}", retryable=retryable, status=status
                        )
                    else:
                        with partial.open("wb") as out:
                            for chunk in response.iter_content(chunk_size=1 << 20):
                                out.write(chunk)
                finally:
                    response.close()
        except requests.RequestException as exc:
            error = DeliveryError(f"Encord {what}: {type(exc).__name__}", retryable=True)
        if error is not None:
            partial.unlink(missing_ok=True)
            raise error
        partial.replace(path)
        return path

    # ------------------------------------------------------------------ projects
    def project(self, project_hash: str) -> Project:
        """The SDK's `encord.project.Project`, loaded once per process (two requests, retried)."""
        found = self._projects.get(project_hash)
        if found is None:
            user = self._user_client()
            what = f"get project {project_hash}"

            def attempt() -> Project:
                with self.gate.request():  # get_project sends two requests: count both
                    pass
                return self.call(lambda: user.get_project(project_hash), what)

            found = call_with_retries(attempt, self.retry, on_retry=self._log(what))
            self._projects[project_hash] = found
        return found


def delivery_error(exc: BaseException, what: str) -> DeliveryError:
    """The `DeliveryError` an SDK exception stands for (its message, never a key)."""
    from encord import exceptions as sdk

    if isinstance(exc, DeliveryError):
        return exc
    message = str(getattr(exc, "message", "") or exc).split(" timestamp=", 1)[0][:500]
    if isinstance(exc, sdk.RateLimitExceededError):
        return DeliveryError(
            f"{what}: HTTP 429: {message}",
            retryable=True,
            retry_after=getattr(exc, "retry_after", None),
            status=429,
        )
    if isinstance(exc, sdk.AuthenticationError):
        return DeliveryError(
            f"{what}: HTTP 401: {message} (check {KEY_VARIABLE})", retryable=False, status=401
        )
    if isinstance(exc, (sdk.AuthorisationError, sdk.OperationNotAllowed)):
        return DeliveryError(f"{what}: HTTP 403: {message}", retryable=False, status=403)
    if isinstance(exc, sdk.ResourceNotFoundError):
        return DeliveryError(f"{what}: not found: {message}", retryable=False, status=404)
    if isinstance(exc, (sdk.RequestException, sdk.TimeOutError, sdk.GenericServerError)):
        cause = exc.__cause__
        detail = f" ({type(cause).__name__})" if cause is not None else ""
        return DeliveryError(f"{what}: no usable answer{detail}: {message[:200]}", retryable=True)
    if isinstance(exc, sdk.UnknownException):
        return DeliveryError(f"{what}: {message}", retryable=True)
    if isinstance(exc, sdk.EncordException):
        return DeliveryError(f"{what}: {message}", retryable=False)
    return DeliveryError(f"{what}: {type(exc).__name__}: {str(exc)[:300]}", retryable=False)
