"""The server's clients, registered with `engine.plugins` (entry points ``tessera.clients``).

`engine.connect` asks each installed `engine.plugins.ClientFactory` whether it takes the
target: `HTTP_CLIENT` takes a server's URL (``http://`` or ``https://``) and gives a
`serve.client.RemoteModel`; `HANDLE_CLIENT` takes the name of a Serve application on the
Ray cluster (no ``://``) and gives a `serve.client.HandleModel`. The clients load on
`connect`, so reading the entry points stays cheap.

Example:
    >>> HTTP_CLIENT.accepts("https://models.example.com"), HANDLE_CLIENT.accepts("tessera")
    (True, True)
    >>> HANDLE_CLIENT.accepts("http://127.0.0.1:8000")
    False
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from serve.client import HandleModel, RemoteModel


class HttpClientFactory:
    """Connects to a Tessera server over HTTP (`serve.client.RemoteModel`)."""

    name = "http"

    def accepts(self, target: str) -> bool:
        """True for an ``http://`` or ``https://`` URL."""
        return target.lower().startswith(("http://", "https://"))

    def connect(
        self,
        target: str,
        token: str | None = None,
        timeout: float = 120.0,
        max_concurrency: int = 8,
    ) -> RemoteModel:
        """Connect to the server at ``target``.

        Args:
            target: The server's base URL.
            token: The bearer token, when the server requires one.
            timeout: Seconds to wait for one answer.
            max_concurrency: Requests in flight at once (the server batches them).

        Raises:
            RemoteError: The server cannot be reached, or refuses the token.
        """
        from serve.client import RemoteModel

        return RemoteModel(target, token, timeout=timeout, max_concurrency=max_concurrency)


class HandleClientFactory:
    """Calls a Serve application's `Predictor` by DeploymentHandle (`serve.client.HandleModel`)."""

    name = "serve-app"

    def accepts(self, target: str) -> bool:
        """True for a Serve application's name: a target without ``://``."""
        return "://" not in target

    def connect(self, target: str, token: str | None = None, timeout: float = 120.0) -> HandleModel:
        """Connect to the application ``target`` on the Ray cluster of this process.

        Args:
            target: The Serve application's name (``tessera serve --name``).
            token: Ignored: a handle inside the cluster bypasses the HTTP ingress and its
                bearer token.
            timeout: Seconds to wait for one answer.

        Raises:
            RemoteError: No such application answers.
        """
        from serve.client import HandleModel

        return HandleModel(target, timeout=timeout)


#: The ``http`` entry point of ``tessera.clients``.
HTTP_CLIENT = HttpClientFactory()
#: The ``serve-app`` entry point of ``tessera.clients``.
HANDLE_CLIENT = HandleClientFactory()
