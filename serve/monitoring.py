"""The monitoring sink: one JSON line per `/predict` request, and per shadow prediction.

A request's line::

    {"time": "2024-05-01T12:00:00.123+00:00", "kind": "predict", "request_id": "9f3c...",
     "model": "reference/color-boxes", "status": 200, "latency_ms": 12.4,
     "images": [{"name": "a.png", "width": 640, "height": 480, "objects": 3,
                 "classes": {"red": 2, "blue": 1}, "error": null}],
     "error": null}

A shadow model's line has ``"kind": "shadow"``, the same ``request_id``, its own
``model`` and ``latency_ms`` (the shadow's time, measured off the request path) and its
``images``; ``status`` is "ok" or "error".
"""

from __future__ import annotations

import collections
import datetime
import json
import threading
from pathlib import Path
from typing import Any

from engine.prediction import Prediction

#: Where the lines go unless the server is given another path.
DEFAULT_MONITORING_PATH = "~/.tessera/serve/monitoring.jsonl"


class MonitoringSink:
    """Append JSON lines to a file, one whole line per write (safe across threads).

    Args:
        path: The JSONL file; its folder is created.

    Example:
        >>> sink = MonitoringSink("/tmp/monitoring.jsonl")        # doctest: +SKIP
        >>> sink.write({"kind": "predict", "status": 200})         # doctest: +SKIP
    """

    def __init__(self, path: str | Path = DEFAULT_MONITORING_PATH) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line, stamped with the current UTC time."""
        stamped = {"time": now_iso(), **record}
        line = json.dumps(stamped, default=str, separators=(",", ":")) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as sink:
            sink.write(line)


def now_iso() -> str:
    """Return the current UTC time as ISO 8601 with milliseconds."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def image_summaries(predictions: list[Prediction]) -> list[dict[str, Any]]:
    """Summarise each prediction: size, number of objects, objects per class, error.

    Example:
        >>> from engine.detections import Detections
        >>> import numpy as np
        >>> p = Prediction(Detections(np.zeros((2, 4)), np.ones(2), np.array([1, 1])),
        ...                ["a", "b"], name="x.png", width=4, height=3)
        >>> image_summaries([p])[0]["classes"]
        {'b': 2}
    """
    return [
        {
            "name": p.name,
            "width": p.width,
            "height": p.height,
            "objects": len(p),
            "classes": dict(collections.Counter(p.classes)),
            "error": p.error,
        }
        for p in predictions
    ]
