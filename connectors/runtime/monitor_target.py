"""What a platform implements to monitor a deployment: `MonitorTarget`.

A target turns `engine.plugins.MonitoredImage` records (one answered image each) into the
platform's requests. `connectors.runtime.monitor.MonitorJob` runs it: a bounded queue in
the server's process, sender actors that call `MonitorTarget.deliver_monitored` under the
job's rate limit, retries, and a dead letter.

1. ``target.prepare_monitor(...)`` once, where the monitor starts (the server's process):
   it stores the model's classes and checks the options; it sends nothing, so a slow or
   dead platform never delays the server's start;
2. ``target.deliver_monitored(records)`` in sender actors, many times: it resolves what it
   needs from the platform on first use (a deployment, its labels, a login) and sends the
   records; every request goes through ``self.gate``; it must be idempotent (a retried
   record the platform already holds counts as delivered, never as a second one).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

from connectors.base import DeliveryResult, RequestGate
from engine.plugins import MonitoredImage, MonitorSink

__all__ = ["MONITOR_OPTIONS", "MonitorTarget"]

#: Monitor options that configure the runtime (`MonitorJob.start`), not the target.
MONITOR_OPTIONS = (
    "queue_size",
    "num_senders",
    "batch_size",
    "requests_per_second",
    "max_in_flight",
    "dead_letter",
)


class MonitorTarget(abc.ABC):
    """A platform's deployment monitor (an `engine.plugins.Monitor`); picklable.

    Subclasses set `name` and implement `prepare_monitor`, `deliver_monitored` and
    `dead_letter_line`; `start_monitor` starts a `MonitorJob` on them.
    """

    #: The platform's name (``--monitor NAME``).
    name: str = "monitor"

    def __init__(self) -> None:
        self.gate: RequestGate = RequestGate()
        #: The options `start_monitor` uses when it is given none (the plug-in's
        #: ``Platform.monitor(**options)`` keeps them here).
        self.monitor_options: dict[str, Any] = {}

    def bind(self, gate: RequestGate) -> None:
        """Route this target's requests through ``gate`` (the runtime calls this)."""
        self.gate = gate

    def validate(self) -> None:
        """Check credentials and configuration without a request; the default checks nothing."""
        return None

    @abc.abstractmethod
    def prepare_monitor(
        self,
        class_names: list[str],
        task: str,
        shadow_class_names: list[str] | None,
        options: dict[str, Any],
    ) -> None:
        """Keep the model's classes and check the target's ``options`` (no request).

        Raises:
            ValueError: An unknown or invalid option, or a task the platform cannot take.
        """

    @abc.abstractmethod
    def deliver_monitored(self, records: Sequence[MonitoredImage]) -> DeliveryResult:
        """Send ``records`` (idempotent), keyed by ``record.key``.

        Returns:
            The keys delivered (an "already processed" answer counts) and those refused
            for good, with the reason.

        Raises:
            connectors.base.DeliveryError: A request failed; retryable ones are retried.
        """

    @abc.abstractmethod
    def dead_letter_line(self, record: MonitoredImage) -> dict[str, Any]:
        """What the dead letter keeps of ``record``: the platform's body, without the image."""

    def start_monitor(
        self,
        class_names: list[str],
        task: str,
        shadow_class_names: list[str] | None = None,
        options: dict[str, Any] | None = None,
    ) -> MonitorSink:
        """Prepare and start the monitor (`engine.plugins.Monitor.start_monitor`).

        Args:
            class_names: The model's classes.
            task: The model's task.
            shadow_class_names: The shadow model's classes, when one runs.
            options: The target's options and the runtime's (`MONITOR_OPTIONS`); None
                takes `monitor_options`.

        Returns:
            The running `connectors.runtime.monitor.MonitorJob`.
        """
        from connectors.runtime.monitor import MonitorJob

        options = dict(self.monitor_options if options is None else options)
        runtime = {k: options.pop(k) for k in MONITOR_OPTIONS if k in options}
        self.prepare_monitor(list(class_names), task, shadow_class_names, options)
        return MonitorJob.start(self, **runtime)

    def close(self) -> None:
        """Release what the target holds (sessions); called once per process."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
