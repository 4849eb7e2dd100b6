"""`PicselliaExporter`: ``format="picsellia"``, one monitoring body per image, ``picsellia.jsonl``.

Each line is what the uploader would ``POST`` for that image
(`connectors.picsellia.format.monitoring_body`) without its ``image``: filename (unique in
the export, as a batch upload names it), content
type, size, the model's latency for the image (``prediction.latency_ms / 1000``, 0.0 when
unknown), ``raw_predictions``, tags and timestamp (the export's start plus the image's
index in milliseconds). Without a deployment to ask, the label ids are the classes'
positions + 1 (`format.default_label_ids`). Lines stream to ``picsellia.jsonl.partial``,
renamed into place by `PicselliaExporter.close`. A prediction with an ``error``, or one
Picsellia cannot take, is not written: it is listed in the summary's ``errors``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from connectors.picsellia.format import (
    check_task,
    content_type_for,
    default_label_ids,
    monitoring_body,
    monitoring_filename,
    prediction_key,
    stored_media_type,
)
from engine.plugins import MonitoredImage
from engine.prediction import Prediction

__all__ = ["FILE_NAME", "PicselliaExporter"]

#: The export's file.
FILE_NAME = "picsellia.jsonl"


class PicselliaExporter:
    """Writes ``picsellia.jsonl`` (an `engine.plugins.Exporter`; the class is its factory).

    Args:
        out_dir: The folder to write into (created when missing).
        class_names: The model's classes (label id: position + 1).
        task: The model's task: detection, instance_segmentation or classification.

    Raises:
        ValueError: A task Picsellia does not take (keypoints).

    Example:
        >>> exporter = PicselliaExporter(Path("out"), ["car"], "detection")   # doctest: +SKIP
        >>> exporter.write(prediction)                                        # doctest: +SKIP
        >>> exporter.close()["files"]                                         # doctest: +SKIP
        ['picsellia.jsonl']
    """

    def __init__(self, out_dir: Path, class_names: list[str], task: str = "detection") -> None:
        check_task(task)
        self.path = Path(out_dir) / FILE_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.label_ids = default_label_ids(list(class_names))
        self.task = task
        self.started = time.time()
        self._partial = self.path.with_name(FILE_NAME + ".partial")
        self._file = self._partial.open("w", encoding="utf-8")
        self._images = 0
        self._objects = 0
        self._errors: list[dict[str, Any]] = []

    def write(self, prediction: Prediction) -> None:
        """Append the body of one prediction (or list its error)."""
        if self._file.closed:
            raise RuntimeError(f"the Picsellia export {self.path} is closed")
        if prediction.error is not None:
            self._errors.append({"name": prediction.name, "error": prediction.error})
            return
        latency_ms = getattr(prediction, "latency_ms", None)
        record = MonitoredImage(
            key=prediction_key(prediction),
            prediction=prediction,
            latency_s=0.0 if latency_ms is None else float(latency_ms) / 1000.0,
            timestamp=round(self.started + prediction.index / 1000.0, 3),
            content_type=stored_media_type(prediction),
        )
        try:
            kind = content_type_for(prediction.name, record.content_type)
            filename = monitoring_filename(prediction.name, record.key, kind)
            body = monitoring_body(record, self.label_ids, filename=filename)
        except ValueError as error:
            self._errors.append({"name": prediction.name, "error": str(error)})
            return
        self._file.write(json.dumps(body) + "\n")
        self._images += 1
        self._objects += len(body["raw_predictions"]["detection_classes"])

    def close(self) -> dict[str, Any]:
        """Finish the file; return ``files``, ``images``, ``objects`` and ``errors``."""
        if not self._file.closed:
            self._file.close()
            self._partial.replace(self.path)
        return {
            "files": [self.path.name],
            "images": self._images,
            "objects": self._objects,
            "errors": list(self._errors),
        }
