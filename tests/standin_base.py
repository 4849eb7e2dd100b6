"""What every platform stand-in shares: one threaded HTTP server on 127.0.0.1, its lifecycle.

A stand-in subclasses `LoopbackStandin`, builds its server with `loopback_server` in its
``__init__`` (``self._server``), and is then used as a context manager, or with `start` and
`stop`.

Example:
    >>> class Echo(LoopbackStandin):                                  # doctest: +SKIP
    ...     def __init__(self):
    ...         self._server = loopback_server(EchoHandler)
    >>> with Echo() as server:                                        # doctest: +SKIP
    ...     requests.get(server.url)
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

__all__ = ["LoopbackStandin", "loopback_server"]


def loopback_server(
    handler: type[BaseHTTPRequestHandler],
    server_class: type[ThreadingHTTPServer] = ThreadingHTTPServer,
) -> ThreadingHTTPServer:
    """A threaded HTTP server on 127.0.0.1 (a free port), its request threads daemons."""
    server = server_class(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    return server


class LoopbackStandin:
    """Serves ``self._server`` in a daemon thread; `url` is its base address."""

    _server: ThreadingHTTPServer

    @property
    def url(self) -> str:
        """The server's base address, ``http://127.0.0.1:<port>``."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Self:
        """Serve in a daemon thread."""
        thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
