"""A job's request budget: the `RateLimiter` actor and the `LimiterGate` that waits on it.

Every HTTP request of an upload job, from any process, goes through a `LimiterGate` on the
job's one `RateLimiter` actor, so the rate and in-flight limits hold over all uploaders.

Example:
    >>> limiter = new_rate_limiter(requests_per_second=10, max_in_flight=4)  # doctest: +SKIP
    >>> connector.bind(LimiterGate(limiter))                                 # doctest: +SKIP

"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import ray

from connectors.base import RequestGate
from engine.runtime import near_caller


class RateLimiter:
    """The request budget of one job, shared by all its processes (run as a Ray actor).

    A request may start when both hold:

    - **rate**: a token bucket refilled at ``requests_per_second`` holding at most
      ``burst`` tokens (default 1); each request takes one. Hence in any window of ``T``
      seconds at most ``burst + requests_per_second * T`` requests start (with burst 1:
      at most ``rps + 1`` in any 1-second window).
    - **in flight**: fewer than ``max_in_flight`` requests are running.

    Waiters are served first come, first served (an `asyncio.Lock` queue): a request
    first waits for an in-flight slot, then for a token. ``None`` switches a limit off.

    Args:
        requests_per_second: Sustained request starts per second, or None.
        max_in_flight: Requests running at once, or None.
        burst: Bucket size: requests that may start back to back after an idle spell.
    """

    def __init__(
        self,
        requests_per_second: float | None = 10.0,
        max_in_flight: int | None = 4,
        burst: int = 1,
    ) -> None:
        check_limits(requests_per_second, max_in_flight, burst)
        self._rate = requests_per_second
        self._burst = float(burst)
        self._max_in_flight = max_in_flight
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self._in_flight = 0
        self._turn: asyncio.Lock | None = None
        self._freed: asyncio.Event | None = None
        self._granted = 0
        self._peak_in_flight = 0
        self._waited_s = 0.0

    async def acquire(self) -> None:
        """Wait for a request slot and take it; pair with `release`."""
        if self._turn is None:
            self._turn, self._freed = asyncio.Lock(), asyncio.Event()
        assert self._freed is not None
        start = time.monotonic()
        async with self._turn:
            while self._max_in_flight is not None and self._in_flight >= self._max_in_flight:
                self._freed.clear()
                await self._freed.wait()
            if self._rate is not None:
                self._refill()
                while self._tokens < 1.0:
                    await asyncio.sleep((1.0 - self._tokens) / self._rate)
                    self._refill()
                self._tokens -= 1.0
            self._in_flight += 1
            self._granted += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)
        self._waited_s += time.monotonic() - start

    async def release(self) -> None:
        """Give back a slot that `acquire` took."""
        self._in_flight = max(self._in_flight - 1, 0)
        if self._freed is not None:
            self._freed.set()

    async def stats(self) -> dict[str, float]:
        """Requests granted, running now, the most ever running at once, seconds waited."""
        return {
            "granted": self._granted,
            "in_flight": self._in_flight,
            "peak_in_flight": self._peak_in_flight,
            "waited_s": self._waited_s,
        }

    def _refill(self) -> None:
        now = time.monotonic()
        assert self._rate is not None
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now


def check_limits(requests_per_second: float | None, max_in_flight: int | None, burst: int) -> None:
    """Check a `RateLimiter`'s limits before any actor starts.

    Args:
        requests_per_second: None, or a rate > 0.
        max_in_flight: None, or an integer >= 1.
        burst: An integer >= 1.

    Raises:
        ValueError: A limit is out of range; the message names it and its value.

    Example:
        >>> check_limits(requests_per_second=0, max_in_flight=4, burst=1)
        Traceback (most recent call last):
        ...
        ValueError: requests_per_second must be > 0, got 0

    """
    if requests_per_second is not None and requests_per_second <= 0:
        raise ValueError(f"requests_per_second must be > 0, got {requests_per_second}")
    if max_in_flight is not None and max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
    if burst < 1:
        raise ValueError(f"burst must be >= 1, got {burst}")


class LimiterGate(RequestGate):
    """A `RequestGate` backed by a `RateLimiter` actor; picklable, so it travels to actors.

    ``with gate.request():`` costs one actor round trip to acquire; the release is sent
    without waiting for an answer.

    Args:
        limiter: Handle of the job's `RateLimiter` actor.
    """

    def __init__(self, limiter: Any) -> None:
        self._limiter = limiter
        self._lock = threading.Lock()
        self._requests = 0

    @property
    def requests(self) -> int:
        """Requests this copy of the gate let through."""
        return self._requests

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Hold one of the job's request slots while the block runs."""
        ray.get(self._limiter.acquire.remote())
        with self._lock:
            self._requests += 1
        try:
            yield
        finally:
            self._limiter.release.remote()

    def __getstate__(self) -> dict[str, Any]:
        return {"limiter": self._limiter}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["limiter"])


_RemoteLimiter = ray.remote(num_cpus=0, max_concurrency=1000)(RateLimiter)


def new_rate_limiter(
    requests_per_second: float | None = 10.0, max_in_flight: int | None = 4, burst: int = 1
) -> Any:
    """Start a `RateLimiter` actor and return its handle (wrap it in a `LimiterGate`).

    The actor takes no CPU and serves up to 1000 waiting requests at once.

    Args:
        requests_per_second: Sustained request starts per second, or None.
        max_in_flight: Requests running at once, or None.
        burst: Requests that may start back to back after an idle spell.

    Returns:
        The actor's handle (limits out of range fail the actor's creation; check them
        first with `check_limits`).

    Example:
        >>> gate = LimiterGate(new_rate_limiter(requests_per_second=5))  # doctest: +SKIP
        >>> with gate.request():                                          # doctest: +SKIP
        ...     session.get(url)

    """
    return _RemoteLimiter.options(**near_caller()).remote(requests_per_second, max_in_flight, burst)
