"""The "encord" export: ``encord/ontology.json`` and one label row per image.

``<out>/encord/ontology.json`` is the ontology of the model's classes (the shape
`encord.objects.OntologyStructure.to_dict` gives: one object per class, a bounding box, or
a bitmask for an instance segmentation model; for a classifier, one radio classification
whose options are the classes); ``<out>/encord/<image name>.json`` is the
image's label row on branch ``main``, in the shape `encord.objects.LabelRowV2.to_encord_dict`
gives (`connectors.encord.format.label_row`). A prediction of an Encord image keeps its
data hash; others get one derived from the image name. A name already used by this export
gets a numeric prefix (``1_<name>``); a prediction with an ``error`` is listed in the
summary, not written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from connectors.encord.format import (
    classifier_for_classes,
    features_for_task,
    label_row,
    ontology_structure,
)
from connectors.encord.urls import parse_data_url
from connectors.exports import Exporter
from connectors.formats.names import image_file_name
from engine.prediction import Prediction

__all__ = ["EncordExporter"]

#: The folder under the output directory.
FOLDER = "encord"
#: The ontology file in it.
ONTOLOGY_FILE = "ontology.json"


class EncordExporter(Exporter):
    """Writes ``encord/ontology.json`` and ``encord/<image name>.json``.

    Args:
        out_dir: The output folder (``encord/`` is made in it).
        class_names: The model's classes.
        task: The model's task.

    Example:
        >>> with EncordExporter("out", ["car"]) as exporter:    # doctest: +SKIP
        ...     exporter.write(prediction)
    """

    format = "encord"

    def __init__(self, out_dir: str | Path, class_names: list[str], task: str = "detection"):
        super().__init__(out_dir, class_names, task)
        self.folder = self.out_dir / FOLDER
        self.folder.mkdir(parents=True, exist_ok=True)
        classify = task == "classification"
        self.features = {} if classify else features_for_task(self.class_names, task)
        self.classifier = classifier_for_classes(self.class_names) if classify else None
        self._used: set[str] = set()
        with open(self.folder / ONTOLOGY_FILE, "w", encoding="utf-8") as f:
            json.dump(ontology_structure(self.features, self.classifier), f, indent=2)
        self._add_file(f"{FOLDER}/{ONTOLOGY_FILE}")

    def _write(self, prediction: Prediction) -> None:
        if prediction.error is not None:
            return
        parsed = parse_data_url(prediction.url)
        try:
            row = label_row(
                prediction,
                self.features,
                data_hash=parsed[1] if parsed else None,
                classifier=self.classifier,
            )
        except ValueError as exc:
            self._add_error(prediction, str(exc))
            return
        name = self._free_name(image_file_name(prediction))
        with open(self.folder / f"{name}.json", "w", encoding="utf-8") as f:
            json.dump(row, f)
        self._add_file(f"{FOLDER}/{name}.json")
        self.num_written += 1
        unit = next(iter(row["data_units"].values()))
        self.num_objects += len(unit["labels"]["objects"]) + len(row["classification_answers"])

    def _finish(self) -> dict[str, Any]:
        return {"images": self.num_written}

    def _free_name(self, name: str) -> str:
        free, k = name, 0
        while free in self._used or free == ONTOLOGY_FILE[: -len(".json")]:
            k += 1
            free = f"{k}_{name}"
        self._used.add(free)
        return free
