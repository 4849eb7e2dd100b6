"""`MediaFetcher`: downloads the media of platform items, each by its platform's fetcher.

A job may hold items of several platforms; each platform hands the engine a picklable
fetcher for its URL scheme (`engine.plugins.PlatformInputs.fetch`). The decode tasks get one
`MediaFetcher` that sends each URL to the fetcher of its scheme. A fetcher with ``open``
(and ``close``) is opened once per job, so that the job's downloads share one rate limit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["MediaFetcher"]


class MediaFetcher:
    """Picklable ``url -> bytes`` over the fetchers of several URL schemes.

    Args:
        fetchers: URL scheme (``"acme"`` for ``acme://...``) -> that platform's fetcher.

    Example:
        >>> fetch = MediaFetcher({"mem": lambda url: url.encode()})
        >>> fetch("mem://x")
        b'mem://x'
    """

    def __init__(self, fetchers: Mapping[str, Callable[[str], bytes]]) -> None:
        self.fetchers = dict(fetchers)

    def __call__(self, url: str) -> bytes:
        """The bytes ``url`` names, downloaded by the fetcher of its scheme."""
        scheme, sep, _ = url.partition("://")
        fetcher = self.fetchers.get(scheme.lower()) if sep else None
        if fetcher is None:
            known = ", ".join(f"{s}://" for s in sorted(self.fetchers)) or "none"
            raise ValueError(f"{url}: no fetcher for this URL's scheme (known: {known})")
        return fetcher(url)

    def open(self, **limits: Any) -> MediaFetcher:
        """A copy whose fetchers are opened for one job (``requests_per_second``...)."""
        return MediaFetcher(
            {s: f.open(**limits) if hasattr(f, "open") else f for s, f in self.fetchers.items()}
        )

    def close(self) -> None:
        """Close the fetchers that `open` opened."""
        for fetcher in self.fetchers.values():
            if hasattr(fetcher, "close"):
                fetcher.close()

    def __repr__(self) -> str:
        return f"MediaFetcher({sorted(self.fetchers)})"
