"""`MonitorJob`: send a deployment's answered images to a platform, never blocking a request.

The server's process holds a bounded queue; `MonitorJob.submit` puts a record in it and
returns at once. A dispatcher thread takes records out in batches and hands each batch to
the least busy sender actor (``num_cpus=0``); the senders share one `RateLimiter`, so every
request of the monitor, from any process, waits for the job's rate and in-flight limits.
A sender delivers a batch as an upload does (`connectors.runtime.uploader.Uploader`:
retries with backoff, honouring ``Retry-After``; a batch that still fails is delivered item
by item, so that one refused record never takes the others with it).

Nothing is dropped silently:

- a record that arrives while the queue is full is counted (``overflow``), logged (at most
  one warning every `OVERFLOW_LOG_INTERVAL_S`, with the count) and written to the dead letter;
- a record the platform refused, or whose retries were spent, is written to the dead letter
  with the reason and the platform's body (`MonitorTarget.dead_letter_line`, without the
  image);
- records still queued when the monitor closes past its timeout are dead-lettered too.

Dead-letter lines are JSON: ``{"key", "reason", "time", "record"}``, where ``record`` is the
platform's body for refused records and Tessera's own summary (image name, size, latency,
timestamp, the prediction as `engine.prediction_json` writes it) for overflowed ones, which
never reach a sender.

Example:
    >>> job = MonitorJob.start(target, queue_size=1000, requests_per_second=20)  # doctest: +SKIP
    >>> job.submit(record)                                                      # doctest: +SKIP
    True
    >>> job.close(timeout=10)["delivered"]                                      # doctest: +SKIP
    1
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray

from connectors.base import Connector, DeliveryResult, RequestGate, UploadPlan
from connectors.retry import RetryPolicy
from connectors.runtime.limiter import LimiterGate, check_limits, new_rate_limiter
from connectors.runtime.monitor_target import MonitorTarget
from connectors.runtime.uploader import DEFAULT_RETRY, Uploader
from engine.plugins import MonitoredImage
from engine.prediction_json import prediction_to_json
from engine.runtime import near_caller

__all__ = [
    "DEFAULT_DEAD_LETTER_DIR",
    "OVERFLOW_LOG_INTERVAL_S",
    "MonitorJob",
    "MonitorSender",
    "record_summary",
]

logger = logging.getLogger(__name__)

#: Where dead letters go unless ``dead_letter`` names a file: ``<dir>/<target>_dead_letter.jsonl``.
DEFAULT_DEAD_LETTER_DIR = "~/.tessera/monitor"
#: Shortest time between two "queue full" warnings.
OVERFLOW_LOG_INTERVAL_S = 10.0


def record_summary(record: MonitoredImage) -> dict[str, Any]:
    """What the dead letter keeps of a record that never reached a sender.

    Example:
        >>> from engine.detections import Detections
        >>> from engine.prediction import Prediction
        >>> p = Prediction(Detections.empty(), ["car"], name="a.png", width=4, height=3)
        >>> record_summary(MonitoredImage("r1:0", p, 0.012, 1700000000.0))["name"]
        'a.png'
    """
    prediction = record.prediction
    return {
        "name": prediction.name,
        "width": prediction.width,
        "height": prediction.height,
        "latency_s": record.latency_s,
        "timestamp": record.timestamp,
        "content_type": record.content_type,
        "prediction": prediction_to_json(prediction, rounded=True),
        "shadow_latency_s": record.shadow_latency_s,
    }


class _TargetConnector(Connector):
    """A `MonitorTarget` seen as a `Connector`, so that `Uploader` retries and isolates."""

    name = "monitor"
    modes = ("append",)

    def __init__(self, target: MonitorTarget) -> None:
        super().__init__()
        self.target = target
        self.name = target.name

    def bind(self, gate: RequestGate) -> None:
        super().bind(gate)
        self.target.bind(gate)

    def prepare(self, plan: UploadPlan) -> None:  # pragma: no cover - never called
        return None

    def item_key(self, prediction: Any) -> str:
        return str(prediction.key)

    def deliver(self, batch: Sequence[Any]) -> DeliveryResult:
        return self.target.deliver_monitored(batch)

    def close(self) -> None:
        self.target.close()


class MonitorSender:
    """Delivers batches of records with one target copy (runs as a ``num_cpus=0`` actor).

    Args:
        target: The prepared target (a copy of the server's).
        gate: Where its requests wait their turn (a `LimiterGate` on the job's limiter).
        retry: Retry policy of each delivery.
    """

    def __init__(
        self, target: MonitorTarget, gate: RequestGate, retry: RetryPolicy = DEFAULT_RETRY
    ) -> None:
        self._target = target
        self._uploader = Uploader(_TargetConnector(target), gate, retry)

    def deliver(self, records: Sequence[MonitoredImage]) -> dict[str, Any]:
        """Deliver ``records``; return ``delivered`` keys and ``dead`` key -> (reason, line)."""
        outcome = self._uploader.deliver(records)
        by_key = {r.key: r for r in records}
        dead = {}
        for key, reason in outcome.dead.items():
            try:
                line = self._target.dead_letter_line(by_key[key])
            except Exception as error:  # noqa: BLE001 - the reason must still be kept
                line = {"unformattable": f"{type(error).__name__}: {error}"}
            dead[key] = (reason, line)
        return {"delivered": list(outcome.delivered), "dead": dead}

    def close(self) -> None:
        """Close the target copy."""
        self._uploader.close()


_RemoteSender = ray.remote(num_cpus=0)(MonitorSender)


class MonitorJob:
    """A running monitor (an `engine.plugins.MonitorSink`); see the module docstring.

    Create one with `MonitorJob.start`.
    """

    def __init__(
        self,
        target: MonitorTarget,
        limiter: Any,
        senders: list[Any],
        queue_size: int,
        batch_size: int,
        dead_letter: Path,
    ) -> None:
        self.target = target
        self.limiter = limiter
        self.senders = senders
        self.batch_size = batch_size
        self.dead_letter = dead_letter
        self._queue: queue.Queue[MonitoredImage] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._counts = {"queued": 0, "delivered": 0, "dead": 0, "overflow": 0}
        self._in_flight: dict[Any, tuple[int, list[MonitoredImage]]] = {}
        self._busy = [0] * len(senders)
        self._lost: set[int] = set()
        self._last_overflow_log = 0.0
        self._overflow_logged = 0
        self._closing = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._dispatch, name=f"tessera-monitor-{target.name}", daemon=True
        )
        self._thread.start()

    @classmethod
    def start(
        cls,
        target: MonitorTarget,
        queue_size: int = 1000,
        num_senders: int = 2,
        batch_size: int = 8,
        requests_per_second: float | None = 20.0,
        max_in_flight: int | None = 4,
        dead_letter: str | Path | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> MonitorJob:
        """Start the sender actors, the limiter and the dispatcher for a prepared ``target``.

        Args:
            target: The platform's target, after `MonitorTarget.prepare_monitor`.
            queue_size: Records waiting at most; beyond, a record overflows (counted,
                logged, dead-lettered) and `submit` still returns at once.
            num_senders: Sender actors (``num_cpus=0``).
            batch_size: Records per delivery.
            requests_per_second: The monitor's request rate over all senders (None: none).
            max_in_flight: Requests running at once over all senders (None: no limit).
            dead_letter: The dead-letter JSONL file (default
                ``~/.tessera/monitor/<target>_dead_letter.jsonl``).
            retry: Retry policy of each delivery.

        Raises:
            ValueError: A bad size or limit.
        """
        for name, value in (
            ("queue_size", queue_size),
            ("num_senders", num_senders),
            ("batch_size", batch_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"monitor option {name} must be an integer >= 1, got {value!r}")
        check_limits(requests_per_second, max_in_flight, 1)
        path = Path(
            dead_letter
            if dead_letter is not None
            else Path(DEFAULT_DEAD_LETTER_DIR) / f"{target.name}_dead_letter.jsonl"
        ).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        from engine.runtime import ensure_ray

        ensure_ray()
        limiter = new_rate_limiter(requests_per_second, max_in_flight)
        gate = LimiterGate(limiter)
        place = near_caller()
        senders = [
            _RemoteSender.options(**place).remote(target, gate, retry) for _ in range(num_senders)
        ]
        return cls(target, limiter, senders, queue_size, batch_size, path)

    # ------------------------------------------------------------------ the sink
    def submit(self, record: MonitoredImage) -> bool:
        """Queue ``record`` without waiting; False when the queue was full (dead-lettered)."""
        if self._closing.is_set():
            self._dead([record.key], "the monitor is closed", [record_summary(record)])
            return False
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._overflow(record)
            return False
        with self._lock:
            self._counts["queued"] += 1
        return True

    def stats(self) -> dict[str, Any]:
        """Counts: ``queued`` (accepted), ``delivered``, ``dead``, ``overflow``, ``pending``."""
        with self._lock:
            counts = dict(self._counts)
            in_flight = sum(len(r) for _, r in self._in_flight.values())
        counts["pending"] = self._queue.qsize() + in_flight
        counts["dead_letter"] = str(self.dead_letter)
        return counts

    def close(self, timeout: float | None = 30.0) -> dict[str, Any]:
        """Send what is queued (up to ``timeout`` s), dead-letter the rest, stop the actors."""
        self._closing.set()
        self._thread.join(timeout)
        self._stopped.set()
        self._thread.join(5.0)
        left: list[MonitoredImage] = []
        while True:
            try:
                left.append(self._queue.get_nowait())
            except queue.Empty:
                break
        with self._lock:
            flying = [r for _, records in self._in_flight.values() for r in records]
            self._in_flight.clear()
        if left:
            self._dead(
                [r.key for r in left],
                "not sent before the monitor closed",
                [record_summary(r) for r in left],
            )
        if flying:
            self._dead(
                [r.key for r in flying],
                "sent, but not answered before the monitor closed (it may have arrived)",
                [record_summary(r) for r in flying],
            )
        for actor in [*self.senders, self.limiter]:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - an actor already gone
                pass
        return self.stats()

    # ------------------------------------------------------------------ internals
    def _overflow(self, record: MonitoredImage) -> None:
        with self._lock:
            self._counts["overflow"] += 1
            total = self._counts["overflow"]
        reason = f"the monitoring queue was full ({self._queue.maxsize} records waiting)"
        self._dead([record.key], reason, [record_summary(record)])
        now = time.monotonic()
        if now - self._last_overflow_log >= OVERFLOW_LOG_INTERVAL_S:
            logger.warning(
                "%s monitor: queue full; %d records overflowed so far (%d since the last "
                "warning), written to %s",
                self.target.name,
                total,
                total - self._overflow_logged,
                self.dead_letter,
            )
            self._last_overflow_log, self._overflow_logged = now, total

    def _dead(self, keys: list[str], reason: str | list[str], lines: list[dict[str, Any]]) -> None:
        reasons = reason if isinstance(reason, list) else [reason] * len(keys)
        stamp = time.time()
        text = "".join(
            json.dumps({"key": k, "reason": r, "time": stamp, "record": line}, default=str) + "\n"
            for k, r, line in zip(keys, reasons, lines)
        )
        with self._lock:
            self._counts["dead"] += len(keys)
            with self.dead_letter.open("a", encoding="utf-8") as out:
                out.write(text)

    def _dispatch(self) -> None:
        """The dispatcher thread: batch the queue out to the senders, collect outcomes."""
        while not self._stopped.is_set():
            if self._closing.is_set() and self._queue.empty() and not self._in_flight:
                return
            self._collect(timeout=0)
            if len(self._in_flight) >= 2 * max(len(self.senders) - len(self._lost), 1):
                self._collect(timeout=0.05)
                continue
            batch = self._take(wait=0.05)
            if batch:
                self._send(batch)
            elif self._in_flight:
                self._collect(timeout=0.05)

    def _take(self, wait: float) -> list[MonitoredImage]:
        try:
            batch = [self._queue.get(timeout=wait)]
        except queue.Empty:
            return []
        while len(batch) < self.batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _send(self, batch: list[MonitoredImage]) -> None:
        live = [i for i in range(len(self.senders)) if i not in self._lost]
        if not live:
            self._dead(
                [r.key for r in batch],
                "every monitor sender actor died",
                [record_summary(r) for r in batch],
            )
            return
        index = min(live, key=lambda i: self._busy[i])
        ref = self.senders[index].deliver.remote(batch)
        with self._lock:
            self._in_flight[ref] = (index, batch)
            self._busy[index] += 1

    def _collect(self, timeout: float) -> None:
        if not self._in_flight:
            return
        refs = list(self._in_flight)
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        for ref in ready:
            with self._lock:
                index, batch = self._in_flight.pop(ref)
                self._busy[index] -= 1
            try:
                outcome = ray.get(ref)
            except ray.exceptions.RayActorError as error:
                self._lost.add(index)
                logger.warning("%s monitor: a sender died (%s)", self.target.name, error)
                self._dead(
                    [r.key for r in batch],
                    f"the sender actor died: {error}",
                    [record_summary(r) for r in batch],
                )
                continue
            except Exception as error:  # noqa: BLE001 - a sender bug: record, lose nothing
                self._dead(
                    [r.key for r in batch],
                    f"the sender failed: {error}",
                    [record_summary(r) for r in batch],
                )
                continue
            with self._lock:
                self._counts["delivered"] += len(outcome["delivered"])
            dead = outcome["dead"]
            if dead:
                reasons = [reason for reason, _ in dead.values()]
                self._dead(list(dead), reasons, [line for _, line in dead.values()])
