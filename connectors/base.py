"""What every connector implements, and the errors and gate the runtime gives it.

A job (one ``predict(..., upload=MODE, to=connector)``) goes through three steps:

1. ``connector.prepare(plan)`` once, in the driver, before any prediction is sent: check
   the mode is supported, create the destination (a project, a branch...), make sure the
   destination knows the model's classes and the ``confidence`` tag;
2. ``connector.deliver(batch)`` many times, in uploader actors, in parallel: send a batch
   of predictions; every HTTP request goes through the ``gate`` the runtime hands the
   connector (the job's shared rate limiter and in-flight cap);
3. the runtime records each prediction's fate (delivered, or dead with its reason) in the
   job's journal, and a resumed job sends only what was not delivered.

A connector must make a retried delivery idempotent: before creating, it checks whether
the item is already there (or uses the platform's idempotency key), so that a request that
reached the server but whose answer was lost never creates a duplicate.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.outputs import UPLOAD_MODES
from engine.prediction import Prediction

__all__ = [
    "UPLOAD_MODES",
    "Connector",
    "DeliveryError",
    "DeliveryResult",
    "RequestGate",
    "UnsupportedModeError",
    "UploadPlan",
]


class DeliveryError(Exception):
    """A request to the platform failed.

    Attributes:
        retryable: True for a failure that may pass on retry (429, 5xx, a timeout, a dropped
            connection); False for one that never will (400, 401, 404...).
        retry_after: Seconds the server asked to wait (``Retry-After``), or None.
        status: The HTTP status, when there was an answer.
    """

    def __init__(
        self,
        message: str,
        retryable: bool,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status

    def __reduce__(self) -> tuple[Any, ...]:
        # keep the attributes when the error crosses processes (raised in a Ray actor)
        return (type(self), (str(self), self.retryable, self.retry_after, self.status))


class UnsupportedModeError(ValueError):
    """A connector was asked for an upload mode it does not support."""


class RequestGate:
    """Where a connector's HTTP requests wait their turn; the default lets all through.

    The runtime gives every connector of a job a gate backed by the job's shared rate
    limiter (requests per second, and a cap on requests in flight). A connector wraps
    each HTTP request in ``with gate.request():``.

    Example:
        >>> gate = RequestGate()
        >>> with gate.request():
        ...     pass  # the HTTP call
    """

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Hold one request slot while the block runs."""
        yield


@dataclass(frozen=True)
class UploadPlan:
    """What `Connector.prepare` needs to know about a job.

    Attributes:
        job_id: The job's id (journal and dead-letter names use it).
        mode: One of `UPLOAD_MODES`.
        class_names: The model's classes.
        task: The model's task ("detection", "instance_segmentation", ...).
        options: Connector options the user passed (e.g. ``project_name``,
            ``iou_threshold``).
        sources: Where the inputs came from, e.g. Supervisely project/dataset ids of the
            items, so that ``create`` can mirror the source datasets.
    """

    job_id: str
    mode: str
    class_names: list[str]
    task: str = "detection"
    options: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, Any] = field(default_factory=dict)


@dataclass
class DeliveryResult:
    """The outcome of delivering one batch: which items went, which failed for good.

    Attributes:
        delivered: Keys (`Connector.item_key`) the platform now holds.
        failed: Key -> reason, for items that can never be delivered (bad payload,
            unknown image); retryable failures are raised as `DeliveryError` instead.
    """

    delivered: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


class Connector(abc.ABC):
    """A destination for predictions: a labeling platform or a local export.

    Subclasses set `name` and `modes`, and implement `prepare`, `item_key` and `deliver`.
    An instance is pickled to the uploader actors after `prepare`, so what `prepare`
    learned (a project id, a class mapping) travels with it; credentials are read from the
    environment or a config file and never appear in messages, logs or reprs.
    """

    #: Short name used by ``to="..."`` and ``--to``.
    name: str = "connector"
    #: Upload modes this connector supports (a subset of `UPLOAD_MODES`).
    modes: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.gate: RequestGate = RequestGate()

    def bind(self, gate: RequestGate) -> None:
        """Route this connector's requests through ``gate`` (the runtime calls this)."""
        self.gate = gate

    def check_mode(self, mode: str) -> None:
        """Raise `UnsupportedModeError` naming the modes supported when ``mode`` is not."""
        if mode not in self.modes:
            raise UnsupportedModeError(
                f"{self.name} does not support upload={mode!r}; it supports: "
                f"{', '.join(self.modes) or 'none'}"
            )

    def validate(self) -> None:
        """Check the connector can run (credentials, configuration) before a job starts.

        Called in the caller's process when ``predict`` is given ``upload=``, so that a
        missing token fails at once; the default checks nothing.
        """
        return None

    def check_options(self, mode: str, options: dict[str, Any]) -> None:
        """Check the connector's own ``upload_options`` for ``mode`` before a job starts.

        Called in the caller's process beside `validate`, with every upload option (the
        runtime's too: `connectors.runtime.RUNTIME_OPTIONS`); raise ValueError naming the
        option. The default checks nothing.
        """
        return None

    @abc.abstractmethod
    def prepare(self, plan: UploadPlan) -> None:
        """Get the destination ready for ``plan`` (once per job, before any delivery)."""

    @abc.abstractmethod
    def item_key(self, prediction: Prediction) -> str:
        """A stable key naming where ``prediction`` goes (e.g. ``"image:1234"``)."""

    @abc.abstractmethod
    def deliver(self, batch: Sequence[Prediction]) -> DeliveryResult:
        """Send a batch; idempotent, so a retry after a lost answer creates no duplicate.

        Raises:
            DeliveryError: A request failed; the runtime retries retryable ones.
        """

    def start_upload(
        self,
        job_id: str,
        mode: str,
        class_names: list[str],
        task: str,
        options: dict[str, Any],
        sources: dict[str, Any],
    ) -> Any:
        """Prepare the destination and start the job's uploaders (`engine.plugins.Uploader`).

        Args:
            job_id: Names the job's journal (``tessera upload --resume JOB``).
            mode: The upload mode, already checked.
            class_names: The model's classes.
            task: The model's task.
            options: The connector's options and the runtime's (``requests_per_second``,
                ``max_in_flight``, ``num_uploaders``, ``batch_size``, ``journal_dir``).
            sources: What the inputs came from, for ``create``.

        Returns:
            The running `connectors.runtime.UploadJob`: ``write`` predictions, ``close``.
        """
        from connectors.runtime import RUNTIME_OPTIONS, UploadJob

        plan = UploadPlan(
            job_id=job_id,
            mode=mode,
            class_names=list(class_names),
            task=task,
            options={k: v for k, v in options.items() if k not in RUNTIME_OPTIONS},
            sources=sources,
        )
        runtime = {k: options[k] for k in RUNTIME_OPTIONS if k in options and k != "journal_dir"}
        if "journal_dir" in options:
            runtime["root"] = options["journal_dir"]
        return UploadJob.start(self, plan, **runtime)

    def close(self) -> None:
        """Release what the connector holds (sessions, files); called once per process."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
