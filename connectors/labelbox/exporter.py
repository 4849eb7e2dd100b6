"""`LabelboxExporter`: ``format="labelbox"``, every prediction line of a job in ``labelbox.ndjson``.

One annotation a line (`connectors.labelbox.format.prediction_to_ndjson`), each with the
data row's global key: the prediction's image name (what the uploader uses without a
``global_keys`` mapping). Lines stream to ``labelbox.ndjson.partial``, renamed into place
by `LabelboxExporter.close`. A prediction with an ``error``, or past Labelbox's limit of
annotations per feature, is not written: it is listed in the summary's ``errors``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from connectors.labelbox.format import data_row_ref, over_feature_limit, prediction_to_ndjson
from engine.prediction import Prediction

__all__ = ["FILE_NAME", "LabelboxExporter"]

#: The export's file.
FILE_NAME = "labelbox.ndjson"


class LabelboxExporter:
    """Writes ``labelbox.ndjson`` (an `engine.plugins.Exporter`; the class is its factory).

    Args:
        out_dir: The folder to write into (created when missing).
        class_names: The model's classes.
        task: The model's task (each prediction's own task decides its geometries).

    Example:
        >>> exporter = LabelboxExporter(Path("out"), ["car"], "detection")   # doctest: +SKIP
        >>> exporter.write(prediction)                                       # doctest: +SKIP
        >>> exporter.close()["files"]                                        # doctest: +SKIP
        ['labelbox.ndjson']
    """

    def __init__(self, out_dir: Path, class_names: list[str], task: str = "detection") -> None:
        self.path = Path(out_dir) / FILE_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.class_names = list(class_names)
        self.task = task
        self._partial = self.path.with_name(FILE_NAME + ".partial")
        self._file = self._partial.open("w", encoding="utf-8")
        self._images = 0
        self._objects = 0
        self._errors: list[dict[str, Any]] = []

    def write(self, prediction: Prediction) -> None:
        """Append the lines of one prediction (or list its error)."""
        if self._file.closed:
            raise RuntimeError(f"the Labelbox export {self.path} is closed")
        if prediction.error is not None:
            self._errors.append({"name": prediction.name, "error": prediction.error})
            return
        lines = prediction_to_ndjson(prediction, data_row_ref(global_key=prediction.name))
        refusal = over_feature_limit(lines)
        if refusal is not None:
            self._errors.append({"name": prediction.name, "error": refusal})
            return
        for line in lines:
            self._file.write(json.dumps(line) + "\n")
        self._images += 1
        self._objects += len(lines)

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
