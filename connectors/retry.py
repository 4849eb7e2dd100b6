"""Retries with exponential backoff and jitter, honouring ``Retry-After``."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from connectors.base import DeliveryError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failed request is tried again.

    Attributes:
        max_attempts: Tries in all, the first one included.
        base_delay_s: Delay before the first retry; it doubles with each retry.
        max_delay_s: Cap on one delay (and on a server's ``Retry-After``).
        jitter: Share of each delay drawn at random (0: none, 1: "full jitter"), so that
            parallel uploaders that failed together do not retry together.

    Example:
        >>> RetryPolicy(base_delay_s=0.5).delay(3, retry_after=None, draw=1.0)
        2.0
    """

    max_attempts: int = 6
    base_delay_s: float = 0.5
    max_delay_s: float = 60.0
    jitter: float = 0.5

    def delay(self, retry: int, retry_after: float | None, draw: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1, 2, ...).

        A server's ``Retry-After`` is obeyed as given (capped at ``max_delay_s``);
        otherwise the delay is ``base * 2**(retry-1)``, capped, with its ``jitter`` share
        scaled by a random draw in [0, 1).
        """
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay_s)
        full = min(self.base_delay_s * 2 ** (retry - 1), self.max_delay_s)
        draw = random.random() if draw is None else draw
        return full * (1.0 - self.jitter) + full * self.jitter * draw


def call_with_retries(
    call: Callable[[], T],
    policy: RetryPolicy,
    on_retry: Callable[[DeliveryError, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``call``; on a retryable `DeliveryError`, wait and try again, up to the policy.

    Args:
        call: The request (or a whole idempotent delivery).
        policy: Attempts and delays.
        on_retry: Told of each failure that will be retried, and the wait chosen.
        sleep: How to wait (tests pass a fake clock).

    Returns:
        What ``call`` returned.

    Raises:
        DeliveryError: A failure that is not retryable, or the last one when the attempts
            are spent.
    """
    attempt = 1
    while True:
        try:
            return call()
        except DeliveryError as error:
            if not error.retryable or attempt >= policy.max_attempts:
                raise
            wait = policy.delay(attempt, error.retry_after)
            if on_retry is not None:
                on_retry(error, wait)
            sleep(wait)
            attempt += 1
