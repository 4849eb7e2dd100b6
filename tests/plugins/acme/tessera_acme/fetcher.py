"""`AcmeFetcher`: downloads the image an ``acme://images/<id>`` URL names (picklable).

The engine hands it to the decode tasks of a job, each holding its own copy. Around the
job it calls `AcmeFetcher.open`, whose copy routes every download through a gate on one
new rate limiter (a Ray actor of the upload runtime), so all decode tasks share one rate;
`AcmeFetcher.close` stops that limiter.
"""

from __future__ import annotations

import copy

from tessera_acme.client import AcmeClient
from tessera_acme.urls import parse_image_url

__all__ = ["AcmeFetcher"]


class AcmeFetcher:
    """A picklable ``url -> bytes`` for Acme image URLs.

    Args:
        client: The client to download with; None builds one from the environment.

    Example:
        >>> fetch = AcmeFetcher()                       # doctest: +SKIP
        >>> len(fetch("acme://images/1"))               # doctest: +SKIP
        5120
    """

    def __init__(self, client: AcmeClient | None = None) -> None:
        self.client = client if client is not None else AcmeClient()
        self._limiter = None

    def open(
        self, requests_per_second: float | None = 10.0, max_in_flight: int | None = 8
    ) -> AcmeFetcher:
        """A copy whose downloads share a new rate limiter; `close` the copy after the job.

        Args:
            requests_per_second: Downloads started per second, over every decode task.
            max_in_flight: Downloads running at once.
        """
        from connectors.runtime import LimiterGate, new_rate_limiter  # Ray: only in a job

        limiter = new_rate_limiter(requests_per_second, max_in_flight)
        client = copy.copy(self.client)
        client.gate = LimiterGate(limiter)
        opened = AcmeFetcher(client)
        opened._limiter = limiter
        return opened

    def close(self) -> None:
        """Stop the rate limiter that `open` started (nothing for an unopened fetcher)."""
        if self._limiter is not None:
            import ray

            ray.kill(self._limiter)
            self._limiter = None

    def __call__(self, url: str) -> bytes:
        """Return the encoded image ``url`` names.

        Raises:
            ValueError: ``url`` is not an ``acme://images/<id>`` URL.
        """
        image_id = parse_image_url(url)
        if image_id is None:
            raise ValueError(f"{url}: not an Acme image URL (acme://images/<id>)")
        return self.client.download_image(image_id)

    def __repr__(self) -> str:
        return f"AcmeFetcher(server={self.client.server!r})"
