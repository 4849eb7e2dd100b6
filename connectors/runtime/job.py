"""The driver's side of an upload job: journal, batch and dispatch predictions, collect outcomes.

`UploadJob.start` checks the mode, opens the job's `Journal`, starts the `RateLimiter` and
the `Uploader` actors; `submit` records each prediction as pending *before* sending it and
hands full batches to the least busy uploader (at most ``max_batches_in_flight`` out at once,
beyond which it waits); the driver journals every outcome, as the journal's only writer.
Predictions carrying an ``error`` are never sent; they are recorded dead (`PREDICTION_FAILED`).

Example:
    >>> with UploadJob.start(connector, plan, num_uploaders=4) as job:   # doctest: +SKIP
    ...     job.submit(predictions)

"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import ray

from connectors.base import Connector, RequestGate, UploadPlan
from connectors.journal import Journal, prediction_from_payload, prediction_payload
from connectors.retry import RetryPolicy
from connectors.runtime.limiter import LimiterGate, check_limits, new_rate_limiter
from connectors.runtime.uploader import DEFAULT_RETRY, BatchOutcome, new_uploader
from engine.prediction import Prediction

logger = logging.getLogger(__name__)

#: ``upload_options`` keys that configure the runtime, not the connector.
RUNTIME_OPTIONS = (
    "requests_per_second",
    "max_in_flight",
    "num_uploaders",
    "batch_size",
    "journal_dir",
)

#: Reason prefix of predictions that were recorded dead because they carry an error.
PREDICTION_FAILED = "prediction failed: "


class UploadJob:
    """The driver's side of one upload job (see `connectors.runtime`).

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
        check_limits(requests_per_second, max_in_flight, burst)
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
            limiter = new_rate_limiter(requests_per_second, max_in_flight, burst)
            gate = LimiterGate(limiter)
            connector.bind(gate)
            connector.prepare(plan)
            uploaders = [new_uploader(connector, gate, retry) for _ in range(num_uploaders)]
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
                logger.warning(
                    "upload job %s: %r goes where an earlier item of this run went (%s); "
                    "it is not sent (counted in skipped_duplicates)",
                    self.job_id,
                    prediction.name,
                    key,
                )
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
