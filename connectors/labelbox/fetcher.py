"""`LabelboxFetcher`: downloads the media of a ``labelbox://datarows/<id>`` URL (picklable).

It asks for the data row (its ``row_data``, the media's URL, which may be a signed URL that
expires, so it is read at fetch time) and GETs that URL, both through the client's gate
and retried. `LabelboxFetcher.open` gives a copy whose downloads share one new rate
limiter over every decode task of the job; `LabelboxFetcher.close` stops it.
"""

from __future__ import annotations

from connectors.labelbox.client import LabelboxClient
from connectors.labelbox.urls import parse_data_row_url

__all__ = ["LabelboxFetcher"]


class LabelboxFetcher:
    """A picklable ``url -> bytes`` for Labelbox data row URLs.

    Args:
        client: The client to download with; None builds one from the environment.

    Example:
        >>> fetch = LabelboxFetcher()                          # doctest: +SKIP
        >>> len(fetch("labelbox://datarows/clx1"))             # doctest: +SKIP
        5120
    """

    def __init__(self, client: LabelboxClient | None = None) -> None:
        self.client = client if client is not None else LabelboxClient()
        self._limiter = None

    def open(
        self, requests_per_second: float | None = 1500 / 60, max_in_flight: int | None = 8
    ) -> LabelboxFetcher:
        """A copy whose downloads share a new rate limiter; `close` the copy after the job.

        Args:
            requests_per_second: Requests started per second, over every decode task.
            max_in_flight: Requests running at once.
        """
        from connectors.runtime import LimiterGate, new_rate_limiter  # Ray: only in a job

        limiter = new_rate_limiter(requests_per_second, max_in_flight)
        opened = LabelboxFetcher(self.client.with_gate(LimiterGate(limiter)))
        opened._limiter = limiter
        return opened

    def close(self) -> None:
        """Stop the rate limiter that `open` started (nothing for an unopened fetcher)."""
        if self._limiter is not None:
            import ray

            ray.kill(self._limiter)
            self._limiter = None

    def __call__(self, url: str) -> bytes:
        """Return the media bytes of the data row ``url`` names.

        Raises:
            ValueError: ``url`` is not a Labelbox data row URL.
            DeliveryError: The data row or its media could not be fetched.
        """
        parsed = parse_data_row_url(url)
        if parsed is None:
            raise ValueError(f"{url}: not a Labelbox data row URL (labelbox://datarows/<id>)")
        data_row_id = parsed[0]
        return self.client.call(
            f"Labelbox: fetch data row {data_row_id}",
            lambda sdk: self.client.fetch(sdk.get_data_row(data_row_id).row_data).content,
        )

    def __repr__(self) -> str:
        return f"LabelboxFetcher(endpoint={self.client.endpoint!r})"
