"""`OpenLabelExporter`: ``format="openlabel"``, one Kognic OpenLABEL document per image.

Each prediction is written to ``<out>/openlabel/<image name>.json``
(`connectors.kognic.format.prediction_to_openlabel`, with the default camera stream); a
name that an earlier image of the export took gets a number (``a.png.json``, then
``a.png-2.json``...), so that two images of one name never overwrite each other. A
file is written to ``<name>.partial`` and renamed into place once complete. A prediction
with an ``error`` is not written: it is listed in the summary's ``errors``. A model whose
predictions Kognic does not take (classification, keypoints) is refused when the export
opens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from connectors.formats.names import image_file_name
from connectors.kognic.format import check_task, prediction_to_openlabel
from engine.prediction import Prediction

__all__ = ["FOLDER", "OpenLabelExporter"]

#: The export's folder under ``out``.
FOLDER = "openlabel"


class OpenLabelExporter:
    """Writes ``openlabel/<image name>.json`` (an `engine.plugins.Exporter`, its own factory).

    Args:
        out_dir: The folder to write into (``openlabel/`` is created in it).
        class_names: The model's classes.
        task: The model's task.

    Raises:
        connectors.kognic.format.KognicTaskError: Kognic takes no predictions of ``task``.

    Example:
        >>> exporter = OpenLabelExporter(Path("out"), ["car"], "detection")   # doctest: +SKIP
        >>> exporter.write(prediction)                                        # doctest: +SKIP
        >>> exporter.close()["files"]                                         # doctest: +SKIP
        ['openlabel/a.png.json']
    """

    def __init__(self, out_dir: Path, class_names: list[str], task: str = "detection") -> None:
        check_task(task)
        self.out_dir = Path(out_dir)
        self.folder = self.out_dir / FOLDER
        self.folder.mkdir(parents=True, exist_ok=True)
        self.class_names = list(class_names)
        self.task = task
        self._taken: set[str] = set()
        self._files: list[str] = []
        self._objects = 0
        self._errors: list[dict[str, Any]] = []
        self._closed = False

    def _file_name(self, prediction: Prediction) -> str:
        name = image_file_name(prediction)
        candidate, number = f"{name}.json", 1
        while candidate in self._taken:
            number += 1
            candidate = f"{name}-{number}.json"
        self._taken.add(candidate)
        return candidate

    def write(self, prediction: Prediction) -> None:
        """Write the document of one prediction (or list its error)."""
        if self._closed:
            raise RuntimeError(f"the OpenLABEL export {self.folder} is closed")
        if prediction.error is not None:
            self._errors.append({"name": prediction.name, "error": prediction.error})
            return
        try:
            document = prediction_to_openlabel(prediction)
        except ValueError as error:
            self._errors.append({"name": prediction.name, "error": str(error)})
            return
        file_name = self._file_name(prediction)
        path = self.folder / file_name
        partial = path.with_name(file_name + ".partial")
        partial.write_text(json.dumps(document), encoding="utf-8")
        partial.replace(path)
        self._files.append(f"{FOLDER}/{file_name}")
        self._objects += len(document["openlabel"]["objects"])

    def close(self) -> dict[str, Any]:
        """Finish; return ``files`` (relative to ``out``), ``images``, ``objects``, ``errors``."""
        self._closed = True
        return {
            "files": list(self._files),
            "images": len(self._files),
            "objects": self._objects,
            "errors": list(self._errors),
        }
