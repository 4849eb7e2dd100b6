"""Deliver batches of predictions with one connector copy, retrying and isolating failures.

An `Uploader` (run as a ``num_cpus=0`` Ray actor, see `new_uploader`) delivers a batch with
`call_with_retries`. A batch that still fails (a non-retryable error, or retries spent) is
split: each item is delivered alone, once more (with the full retry policy after a
non-retryable batch error, which isolates a poison item; with a single attempt after spent
retries, so that a server that is down costs one more request per item, not another round
of backoff). An item that fails alone is dead, with the error as its reason. The outcome
goes back to the driver as a `BatchOutcome`.

Example:
    >>> outcome = Uploader(connector, RequestGate()).deliver(predictions)  # doctest: +SKIP
    >>> outcome.delivered, outcome.dead                                    # doctest: +SKIP
    (['img-1'], {'img-2': 'HTTP 400: bad polygon (not retryable)'})

"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import ray

from connectors.base import Connector, DeliveryError, DeliveryResult, RequestGate
from connectors.retry import RetryPolicy, call_with_retries
from engine.prediction import Prediction
from engine.runtime import near_caller

logger = logging.getLogger(__name__)

#: The retry policy used when none is given.
DEFAULT_RETRY = RetryPolicy()


@dataclasses.dataclass
class BatchOutcome:
    """What became of one batch: delivered keys, dead keys with reasons, attempts per key."""

    delivered: list[str] = dataclasses.field(default_factory=list)
    dead: dict[str, str] = dataclasses.field(default_factory=dict)
    attempts: dict[str, int] = dataclasses.field(default_factory=dict)


class Uploader:
    """Deliver batches with one connector copy (runs as a ``num_cpus=0`` Ray actor).

    Args:
        connector: The prepared connector (a copy of the driver's).
        gate: The gate its requests go through.
        retry: Retry policy for each delivery.
    """

    def __init__(
        self, connector: Connector, gate: RequestGate, retry: RetryPolicy = DEFAULT_RETRY
    ) -> None:
        self._connector = connector
        self._connector.bind(gate)
        self._retry = retry

    def deliver(self, batch: Sequence[Prediction]) -> BatchOutcome:
        """Deliver ``batch``; split it into single items when it fails as a whole."""
        outcome = BatchOutcome(attempts={self._connector.item_key(p): 0 for p in batch})
        try:
            result = self._attempt(batch, self._retry, outcome)
        except Exception as error:  # noqa: BLE001 - every failure is recorded, none lost
            if len(batch) == 1:
                key = next(iter(outcome.attempts))
                outcome.dead[key] = _reason(error, outcome.attempts[key])
                return outcome
            spent = isinstance(error, DeliveryError) and error.retryable
            policy = dataclasses.replace(self._retry, max_attempts=1) if spent else self._retry
            logger.info("batch of %d failed (%s); delivering items alone", len(batch), error)
            for prediction in batch:
                key = self._connector.item_key(prediction)
                try:
                    single = self._attempt([prediction], policy, outcome)
                except Exception as item_error:  # noqa: BLE001
                    outcome.dead[key] = _reason(item_error, outcome.attempts[key])
                else:
                    self._settle([key], single, outcome)
            return outcome
        self._settle(list(outcome.attempts), result, outcome)
        return outcome

    def close(self) -> None:
        """Close the connector copy."""
        self._connector.close()

    def _attempt(
        self, batch: Sequence[Prediction], policy: RetryPolicy, outcome: BatchOutcome
    ) -> DeliveryResult:
        keys = [self._connector.item_key(p) for p in batch]

        def once() -> DeliveryResult:
            for key in keys:
                outcome.attempts[key] += 1
            return self._connector.deliver(batch)

        return call_with_retries(once, policy)

    @staticmethod
    def _settle(keys: list[str], result: DeliveryResult, outcome: BatchOutcome) -> None:
        delivered = set(result.delivered)
        for key in keys:
            if key in result.failed:
                outcome.dead[key] = str(result.failed[key])
            elif key in delivered:
                outcome.delivered.append(key)
            else:
                outcome.dead[key] = "the connector reported no outcome for this item"


def _reason(error: BaseException, attempts: int) -> str:
    if isinstance(error, DeliveryError):
        status = f"HTTP {error.status}: " if error.status is not None else ""
        tail = f"gave up after {attempts} attempts" if error.retryable else "not retryable"
        return f"{status}{error} ({tail})"
    return f"{type(error).__name__}: {error}"


_RemoteUploader = ray.remote(num_cpus=0)(Uploader)


def new_uploader(
    connector: Connector, gate: RequestGate, retry: RetryPolicy = DEFAULT_RETRY
) -> Any:
    """Start an `Uploader` actor (``num_cpus=0``) and return its handle.

    Args:
        connector: The prepared connector; the actor holds a copy.
        gate: The gate its requests go through (a `LimiterGate` on the job's limiter).
        retry: Retry policy for each delivery.

    Returns:
        The actor's handle: ``handle.deliver.remote(batch)`` gives a `BatchOutcome`.

    Example:
        >>> uploader = new_uploader(connector, LimiterGate(limiter))   # doctest: +SKIP
        >>> ray.get(uploader.deliver.remote(predictions)).delivered    # doctest: +SKIP
        ['img-1', 'img-2']

    """
    return _RemoteUploader.options(**near_caller()).remote(connector, gate, retry)
