"""A platform's deployment monitor behind the server (``tessera serve --monitor NAME``).

`PlatformMonitor` holds the monitor of one ingress replica: it finds the platform through
the plug-in registry (`engine.plugins.monitor`), starts it on the first answered request
(when the model's classes are known; starting sends nothing to the platform), and hands
it one `engine.plugins.MonitoredImage` per predicted image. Handing over never waits: the
platform's sink queues the record and its sender actors deliver it later, so a slow or
dead platform adds nothing to a request's latency. Images whose prediction failed are not
sent (the monitoring JSONL line of the request names their errors).

Example:
    >>> monitor = PlatformMonitor("picsellia", {"deployment_id": "d-1"})   # doctest: +SKIP
    >>> monitor.submit("req-1", predictions, data)                          # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from engine import plugins
from engine.plugins import MonitoredImage, MonitorSink
from engine.prediction import Prediction

__all__ = ["PlatformMonitor", "check_monitor", "sniff_content_type"]

logger = logging.getLogger(__name__)

#: Monitor options the server reads itself (the others go to the platform).
SERVER_OPTIONS = ("source", "tags")


def sniff_content_type(data: bytes | None) -> str | None:
    r"""The image media type of encoded bytes, from their first bytes; None if unknown.

    Example:
        >>> sniff_content_type(b"\x89PNG\r\n\x1a\n...")
        'image/png'
        >>> sniff_content_type(b"\xff\xd8\xff\xe0...")
        'image/jpeg'
    """
    if not data:
        return None
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:3] == b"GIF":
        return "image/gif"
    if data[:2] in (b"BM",):
        return "image/bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    return None


def check_monitor(name: str | None, options: dict[str, Any] | None = None) -> None:
    """Refuse an unknown monitor, or one that cannot run (no credentials), before serving.

    Raises:
        ValueError: The message names the monitor and what is wrong.
    """
    if name is None:
        return
    plugins.monitor(name, **_platform_options(options or {})).validate()


def _platform_options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k not in SERVER_OPTIONS}


class PlatformMonitor:
    """The monitor of one ingress replica: started on first use, never blocking a request.

    Args:
        name: The platform (``--monitor NAME``).
        options: Its options (``--monitor-option``): the platform's (credentials may be
            among them, else the platform reads its environment), the runtime's
            (``queue_size``, ``num_senders``, ``requests_per_second``, ``max_in_flight``,
            ``dead_letter``...), and ``source`` / ``tags``, which the server puts on every
            record. The platform's plug-in gets them as ``Platform.monitor(**options)``.
    """

    def __init__(self, name: str, options: dict[str, Any] | None = None) -> None:
        self.name = name
        options = dict(options or {})
        self.source = options.pop("source", "tessera-serve")
        tags = options.pop("tags", [])
        self.tags = [tags] if isinstance(tags, str) else [str(t) for t in tags]
        self.options = options
        self._sink: MonitorSink | None = None
        self._lock = threading.Lock()
        self._failed: str | None = None

    @property
    def started(self) -> bool:
        """True once the platform's sink runs, or its start failed (it is not tried again)."""
        return self._sink is not None or self._failed is not None

    def start(
        self, class_names: list[str], task: str, shadow_class_names: list[str] | None
    ) -> None:
        """Start the platform's sink (once); a failure is logged and named by `stats`."""
        with self._lock:
            if self._sink is not None or self._failed is not None:
                return
            try:
                monitor = plugins.monitor(self.name, **self.options)
                self._sink = monitor.start_monitor(list(class_names), task, shadow_class_names)
            except Exception as error:  # noqa: BLE001 - serving goes on without the monitor
                self._failed = f"{type(error).__name__}: {error}"
                logger.error("the %s monitor could not start: %s", self.name, self._failed)

    def submit(
        self,
        request_id: str,
        predictions: Sequence[Prediction],
        data: Sequence[bytes | None],
        shadow: Sequence[Prediction] | None = None,
    ) -> int:
        """Hand the request's predicted images to the sink; return how many it took.

        Args:
            request_id: The request's id (records are keyed ``<request id>:<position>``).
            predictions: The model's predictions, in request order.
            data: Each image's encoded bytes, as received.
            shadow: The shadow model's predictions of the same images, when one runs.
        """
        sink = self._sink
        if sink is None:
            return 0
        now = time.time()
        taken = 0
        for position, prediction in enumerate(predictions):
            if prediction.error is not None:
                continue
            other = shadow[position] if shadow is not None else None
            if other is not None and other.error is not None:
                other = None
            raw = data[position] if position < len(data) else None
            record = MonitoredImage(
                key=f"{request_id}:{position}",
                prediction=prediction,
                latency_s=(prediction.latency_ms or 0.0) / 1000.0,
                timestamp=now + position * 1e-6,
                image=raw,
                content_type=sniff_content_type(raw),
                source=self.source,
                tags=list(self.tags),
                shadow=other,
                shadow_latency_s=None if other is None else (other.latency_ms or 0.0) / 1000.0,
            )
            taken += bool(sink.submit(record))
        return taken

    def stats(self) -> dict[str, Any]:
        """The sink's counts (``queued``, ``delivered``, ``dead``, ``overflow``, ``pending``)."""
        if self._sink is None:
            return {"monitor": self.name, "started": False, "error": self._failed}
        return {"monitor": self.name, "started": True, **self._sink.stats()}

    def close(self, timeout: float | None = 10.0) -> dict[str, Any]:
        """Send what is queued (up to ``timeout`` s) and stop the sink."""
        sink, self._sink = self._sink, None
        if sink is None:
            return self.stats()
        return {"monitor": self.name, "started": True, **sink.close(timeout)}
