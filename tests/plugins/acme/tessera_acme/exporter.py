"""`AcmeExporter`: ``format="acme"``, every prediction of a job in one ``<out>/acme.json``.

The file is the manifest of a local Acme folder (see `tessera_acme.inputs`): the model's
classes, and one Acme annotation per predicted image, with the Acme image ``id`` when the
prediction came from one. Records are streamed to ``acme.json.partial`` as predictions
come and the file is renamed into place by `AcmeExporter.close`, so a reader never sees
half a file. A prediction that carries an ``error`` has no place in Acme JSON: it is left
out of the file and listed in the summary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.prediction import Prediction
from tessera_acme.format import prediction_to_acme
from tessera_acme.inputs import MANIFEST
from tessera_acme.urls import parse_image_url

__all__ = ["AcmeExporter"]


class AcmeExporter:
    """Writes ``acme.json`` (an `engine.plugins.Exporter`; the class is its factory).

    Args:
        out_dir: The folder to write into (created when missing).
        class_names: The model's classes.
        task: The model's task (Acme keeps the boxes of any task).

    Example:
        >>> exporter = AcmeExporter(Path("out"), ["car"], "detection")   # doctest: +SKIP
        >>> exporter.write(prediction)                                   # doctest: +SKIP
        >>> exporter.close()["files"]                                    # doctest: +SKIP
        ['acme.json']
    """

    def __init__(self, out_dir: Path, class_names: list[str], task: str = "detection") -> None:
        self.path = Path(out_dir) / MANIFEST
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._partial = self.path.with_name(MANIFEST + ".partial")
        self._file = self._partial.open("w", encoding="utf-8")
        header = json.dumps({"classes": list(class_names), "task": task})
        self._file.write(header[:-1] + ', "images": [')  # the header object, left open
        self._images = 0
        self._objects = 0
        self._errors: list[dict[str, Any]] = []

    def write(self, prediction: Prediction) -> None:
        """Append one prediction's annotation (or list its error)."""
        if self._file.closed:
            raise RuntimeError(f"the Acme export {self.path} is closed")
        if prediction.error is not None:
            self._errors.append({"name": prediction.name, "error": prediction.error})
            return
        record = prediction_to_acme(prediction)
        image_id = parse_image_url(prediction.url)
        if image_id is not None:
            record["id"] = image_id
        self._file.write(("\n  " if not self._images else ",\n  ") + json.dumps(record))
        self._images += 1
        self._objects += len(record["objects"])

    def close(self) -> dict[str, Any]:
        """Finish ``acme.json``; return ``files``, ``images``, ``objects`` and ``errors``."""
        if not self._file.closed:
            self._file.write("\n]}\n")
            self._file.close()
            self._partial.replace(self.path)
        return {
            "files": [self.path.name],
            "images": self._images,
            "objects": self._objects,
            "errors": list(self._errors),
        }
