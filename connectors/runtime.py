"""The connector runtime: rate-limited uploader actors, retries, and the job's journal.

An upload job runs like this::

    job = UploadJob.start(connector, plan, num_uploaders=4, requests_per_second=10)
    for chunk in prediction_stream:
        job.submit(chunk)           # journaled as pending, batched, sent to uploaders
    summary = job.finish()          # waits, writes the journal and the dead letter

- The driver calls ``connector.check_mode`` (nothing is sent for an unsupported mode), opens
  the job's `Journal`, starts one `RateLimiter` actor, and calls ``connector.prepare`` with
  the connector bound to a `LimiterGate`, so that even ``prepare``'s requests are limited.
- ``num_uploaders`` uploader actors (``num_cpus=0``) each hold a copy of the prepared
  connector bound to a `LimiterGate` on the same limiter: every HTTP request of the job,
  from any process, waits for the shared rate and in-flight limits.
- ``submit`` records each prediction as pending *before* sending it, batches predictions
  and hands batches to the least busy uploader; at most ``max_batches_in_flight`` batches
  are out at once, beyond which ``submit`` waits (backpressure on the producer).
- An uploader delivers a batch with `call_with_retries`. A batch that still fails (a
  non-retryable error, or retries spent) is split: each item is delivered alone, once
  more (with the full retry policy after a non-retryable batch error, which isolates a
  poison item; with a single attempt after spent retries, so that a server that is down
  costs one more request per item, not another round of backoff). An item that fails
  alone is dead, with the error as its reason.
- The uploaders report outcomes to the driver, the journal's only writer. Predictions
  carrying an ``error`` are never sent; they are recorded dead ("prediction failed: ...").
- A re-run with the same ``job_id`` skips what the journal says was delivered;
  `UploadJob.resume` re-sends the pending and dead items from their stored payloads.

Connectors must make deliveries idempotent (check before create): a retry after a lost
answer, or a resume after a crash mid-request, must not create duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import ray

from connectors.base import Connector, DeliveryError, DeliveryResult, RequestGate, UploadPlan
from connectors.journal import (
    Journal,
    job_dir,
    prediction_from_payload,
    prediction_payload,
)
from connectors.retry import RetryPolicy, call_with_retries
from engine.prediction import Prediction

logger = logging.getLogger(__name__)

#: The retry policy used when none is given.
DEFAULT_RETRY = RetryPolicy()
#: ``upload_options`` keys that configure the runtime, not the connector.
RUNTIME_OPTIONS = ("requests_per_second", "max_in_flight", "num_uploaders", "batch_size", "journal_dir")

#: Reason prefix of predictions that were recorded dead because they carry an error.
PREDICTION_FAILED = "prediction failed: "


# ---------------------------------------------------------------------- rate limiting
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
        _check_limits(requests_per_second, max_in_flight, burst)
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


def _check_limits(requests_per_second: float | None, max_in_flight: int | None, burst: int) -> None:
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


# ---------------------------------------------------------------------- delivery
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


_RemoteLimiter = ray.remote(num_cpus=0, max_concurrency=1000)(RateLimiter)


def new_rate_limiter(
    requests_per_second: float | None = 10.0, max_in_flight: int | None = 4, burst: int = 1
) -> Any:
    """Start a `RateLimiter` actor and return its handle (wrap it in a `LimiterGate`)."""
    return _RemoteLimiter.remote(requests_per_second, max_in_flight, burst)


_RemoteUploader = ray.remote(num_cpus=0)(Uploader)


# ---------------------------------------------------------------------- the job
class UploadJob:
    """The driver's side of one upload job (see the module docstring).

    Create one with `UploadJob.start` or `UploadJob.resume`; feed it with `submit`; end
    it with `finish` (or `cancel`). Used as a context manager, it finishes on a normal
    exit and cancels on an exception.
    """

    def __init__(
        self,
        connector: Connector,
        plan: UploadPlan,
        journal: Journal,
        limiter: Any,
        uploaders: list[Any],
        batch_size: int,
        max_batches_in_flight: int,
    ) -> None:
        self.connector = connector
        self.plan = plan
        self.journal = journal
        self.limiter = limiter
        self.uploaders = uploaders
        self._batch_size = batch_size
        self._max_batches = max_batches_in_flight
        self._started = time.monotonic()
        self._delivered_before = journal.delivered_keys()
        self._seen: set[str] = set()
        self._buffer: list[tuple[str, Prediction]] = []
        self._unrecorded: list[tuple[str, dict[str, Any]]] = []
        self._failed_predictions: dict[str, str] = {}
        self._in_flight: dict[Any, tuple[int, list[str]]] = {}
        self._busy = [0] * len(uploaders)
        self._lost_uploaders: set[int] = set()
        self._next = 0
        self._closed = False
        self._counts = {
            "delivered": 0,
            "dead": 0,
            "skipped_already_delivered": 0,
            "skipped_duplicates": 0,
        }

    # ------------------------------------------------------------------ starting
    @classmethod
    def start(
        cls,
        connector: Connector,
        plan: UploadPlan,
        num_uploaders: int = 4,
        requests_per_second: float | None = 10.0,
        max_in_flight: int | None = 4,
        batch_size: int = 50,
        retry: RetryPolicy = DEFAULT_RETRY,
        root: str | Path | None = None,
        burst: int = 1,
        max_batches_in_flight: int | None = None,
    ) -> UploadJob:
        """Prepare ``connector`` for ``plan`` and start the job's actors.

        Args:
            connector: The destination; ``prepare`` runs here, in the driver.
            plan: The job (its ``job_id`` names the journal; the same id re-runs the job,
                skipping what was delivered).
            num_uploaders: Uploader actors (``num_cpus=0``).
            requests_per_second: The job's request rate over all uploaders (None: no limit).
            max_in_flight: Requests running at once over all uploaders (None: no limit).
            batch_size: Predictions per ``deliver`` call.
            retry: Retry policy of each delivery.
            root: Directory of job directories (default ``~/.tessera/jobs``).
            burst: Requests that may start back to back after an idle spell.
            max_batches_in_flight: Batches sent but not answered before ``submit`` waits
                (default: two per uploader).

        Raises:
            UnsupportedModeError: ``plan.mode`` is not supported (nothing was sent).
            ValueError: The job's journal belongs to another connector or mode.
        """
        connector.check_mode(plan.mode)
        if num_uploaders < 1 or batch_size < 1:
            raise ValueError("num_uploaders and batch_size must be >= 1")
        _check_limits(requests_per_second, max_in_flight, burst)
        from engine.runtime import ensure_ray

        journal = Journal.open(
            plan.job_id,
            root,
            connector=connector.name,
            mode=plan.mode,
            plan=dataclasses.asdict(plan),
        )
        limiter = None
        uploaders: list[Any] = []
        try:
            ensure_ray()
            limiter = _RemoteLimiter.remote(requests_per_second, max_in_flight, burst)
            gate = LimiterGate(limiter)
            connector.bind(gate)
            connector.prepare(plan)
            uploaders = [
                _RemoteUploader.remote(connector, gate, retry) for _ in range(num_uploaders)
            ]
        except BaseException:
            connector.bind(RequestGate())
            _kill([a for a in (limiter, *uploaders) if a is not None])
            journal.close()
            raise
        return cls(
            connector,
            plan,
            journal,
            limiter,
            uploaders,
            batch_size,
            max_batches_in_flight or 2 * num_uploaders,
        )

    @classmethod
    def resume(
        cls,
        job_id: str,
        connector: Connector,
        root: str | Path | None = None,
        **options: Any,
    ) -> UploadJob:
        """Restart job ``job_id`` and re-send every item it has not delivered.

        The plan is read back from the journal (secrets redacted: the connector reads
        its credentials from its own configuration) and ``prepare`` runs again, so it
        must find what the first run created rather than create it anew. The pending
        and dead items are rebuilt from their payloads (`prediction_from_payload`) and
        submitted; call `submit` for more, and `finish` to wait for them.

        Args:
            job_id: The job to resume.
            connector: A connector of the kind the job was started with.
            root: Directory of job directories.
            **options: Passed to `start` (``num_uploaders``, ``requests_per_second``...).

        Raises:
            FileNotFoundError: No journal for ``job_id``.
        """
        with Journal.load(job_id, root) as journal:
            meta = journal.meta
        fields = {f.name for f in dataclasses.fields(UploadPlan)}
        plan = UploadPlan(**{k: v for k, v in meta["plan"].items() if k in fields})
        job = cls.start(connector, plan, root=root, **options)
        try:
            job.submit(prediction_from_payload(item.payload) for item in job.journal.undelivered())
        except BaseException:
            job.cancel()
            raise
        return job

    # ------------------------------------------------------------------ feeding
    @property
    def job_id(self) -> str:
        """The job's id."""
        return self.plan.job_id

    @property
    def directory(self) -> Path:
        """The job's directory (journal and dead letter)."""
        return self.journal.path.parent

    def submit(self, predictions: Iterable[Prediction]) -> None:
        """Accept predictions: journal them as pending, batch them, send full batches.

        Skipped: keys the journal says were delivered, and keys already submitted to this
        run. Predictions with an ``error`` are recorded dead, not sent. Blocks only while
        ``max_batches_in_flight`` batches are out.
        """
        self._check_open()
        for prediction in predictions:
            key = self.connector.item_key(prediction)
            if key in self._delivered_before:
                self._counts["skipped_already_delivered"] += 1
                continue
            if key in self._seen:
                self._counts["skipped_duplicates"] += 1
                continue
            self._seen.add(key)
            self._unrecorded.append((key, prediction_payload(prediction)))
            if prediction.error is not None:
                self._failed_predictions[key] = PREDICTION_FAILED + str(prediction.error)
                continue
            self._buffer.append((key, prediction))
            if len(self._buffer) >= self._batch_size:
                self._send(self._take(self._batch_size))
        self._record()
        self._collect(timeout=0)

    def write(self, predictions: Sequence[Prediction]) -> None:
        """Take the next predictions of a streaming job (`engine.plugins.UploadSink`)."""
        self.submit(predictions)

    def close(self) -> dict[str, Any]:
        """Wait for every delivery and return the summary (`engine.plugins.UploadSink`)."""
        return self.finish()

    def finish(self, timeout: float | None = None) -> dict[str, Any]:
        """Send what is buffered, wait for every batch, then stop the actors.

        Args:
            timeout: Seconds to wait at most; batches not answered by then stay pending in
                the journal (a `resume` sends them).

        Returns:
            The summary: ``job_id``, ``delivered``, ``dead`` (this run),
            ``skipped_already_delivered``, ``skipped_duplicates``, ``pending`` (left for a
            resume), ``requests`` (granted by the limiter), ``seconds``, ``journal``,
            ``dead_letter`` (paths) and ``totals`` (the journal's counts over all runs).
        """
        self._check_open()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while self._buffer:
                self._send(self._take(self._batch_size), deadline)
            self._record()
            while self._in_flight:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    logger.warning(
                        "upload job %s: finish timed out; %d batches left pending",
                        self.job_id,
                        len(self._in_flight),
                    )
                    break
                self._collect(timeout=left)
        finally:
            summary = self._close()
        return summary

    def cancel(self) -> dict[str, Any]:
        """Stop now: kill the actors; what was not answered stays pending for a resume."""
        self._check_open()
        self._buffer.clear()
        self._record()
        self._collect(timeout=0)
        return self._close()

    def __enter__(self) -> UploadJob:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if self._closed:
            return
        if exc_type is None:
            self.finish()
        else:
            self.cancel()

    # ------------------------------------------------------------------ internals
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"upload job {self.job_id} is finished")

    def _take(self, n: int) -> list[tuple[str, Prediction]]:
        batch, self._buffer = self._buffer[:n], self._buffer[n:]
        return batch

    def _record(self) -> None:
        """Journal accepted items as pending (before they are sent), and failed ones dead."""
        if self._unrecorded:
            self.journal.record_pending(self._unrecorded)
            self._unrecorded = []
        if self._failed_predictions:
            self.journal.mark_dead(self._failed_predictions)
            self._counts["dead"] += len(self._failed_predictions)
            self._failed_predictions = {}

    def _live(self) -> list[int]:
        live = [i for i in range(len(self.uploaders)) if i not in self._lost_uploaders]
        if not live:
            raise RuntimeError(
                f"upload job {self.job_id}: every uploader actor died; the undelivered "
                f"items are pending in {self.journal.path}; resume the job to send them"
            )
        return live

    def _send(self, batch: list[tuple[str, Prediction]], deadline: float | None = None) -> None:
        self._record()
        while len(self._in_flight) >= self._max_batches:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            self._collect(timeout=left)
            if deadline is not None and time.monotonic() >= deadline:
                break
        live = self._live()
        n = len(self.uploaders)
        index = min(live, key=lambda i: (self._busy[i], (i - self._next) % n))
        self._next = (index + 1) % n
        ref = self.uploaders[index].deliver.remote([p for _, p in batch])
        self._in_flight[ref] = (index, [k for k, _ in batch])
        self._busy[index] += 1

    def _collect(self, timeout: float | None) -> None:
        """Journal the outcomes of answered batches (waiting up to ``timeout`` for one)."""
        if not self._in_flight:
            return
        ready, _ = ray.wait(list(self._in_flight), num_returns=1, timeout=timeout)
        if ready:
            more, _ = ray.wait(list(self._in_flight), num_returns=len(self._in_flight), timeout=0)
            ready = list(dict.fromkeys([*ready, *more]))
        for ref in ready:
            index, keys = self._in_flight.pop(ref)
            self._busy[index] -= 1
            try:
                outcome: BatchOutcome = ray.get(ref)
            except ray.exceptions.RayActorError as error:
                self._lost_uploaders.add(index)
                logger.warning(
                    "upload job %s: uploader %d died (%s); its %d items stay pending",
                    self.job_id,
                    index,
                    error,
                    len(keys),
                )
                continue
            except Exception as error:  # noqa: BLE001 - an uploader bug: record, lose nothing
                self.journal.mark_dead({k: f"uploader failed: {error}" for k in keys})
                self._counts["dead"] += len(keys)
                continue
            self.journal.mark_delivered(outcome.delivered, outcome.attempts)
            self.journal.mark_dead(outcome.dead, outcome.attempts)
            self._counts["delivered"] += len(outcome.delivered)
            self._counts["dead"] += len(outcome.dead)

    def _close(self) -> dict[str, Any]:
        self._closed = True
        requests = None
        try:
            requests = int(ray.get(self.limiter.stats.remote(), timeout=10)["granted"])
        except Exception:  # noqa: BLE001 - the summary does without it
            pass
        if not self._in_flight:  # idle uploaders close their connectors; busy ones die now
            with contextlib.suppress(Exception):
                ray.wait(
                    [u.close.remote() for u in self.uploaders],
                    num_returns=len(self.uploaders),
                    timeout=10,
                )
        _kill([self.limiter, *self.uploaders])
        self.connector.bind(RequestGate())
        self._in_flight.clear()
        dead_letter = self.journal.write_dead_letter()
        totals = self.journal.counts()
        self.journal.close()
        return {
            "job_id": self.job_id,
            **self._counts,
            "pending": totals["pending"],
            "requests": requests,
            "seconds": round(time.monotonic() - self._started, 3),
            "journal": str(self.journal.path),
            "dead_letter": str(dead_letter),
            "totals": totals,
        }


def _kill(actors: Iterable[Any]) -> None:
    for actor in actors:
        with contextlib.suppress(Exception):
            ray.kill(actor)


__all__ = [
    "BatchOutcome",
    "LimiterGate",
    "PREDICTION_FAILED",
    "RateLimiter",
    "UploadJob",
    "Uploader",
    "job_dir",
]
