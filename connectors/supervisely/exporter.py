"""The "sly" export: predictions written as a local Supervisely project, as they stream."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from PIL import Image

from connectors.exports import Exporter, copyable_file
from connectors.formats.names import image_file_name
from connectors.supervisely.format import meta_for, prediction_to_annotation
from connectors.supervisely.project import dataset_dir, png_file_name
from engine.prediction import Prediction

__all__ = ["SuperviselyExporter"]


class SuperviselyExporter(Exporter):
    """A local Supervisely project: ``meta.json``, ``<dataset>/img/``, ``<dataset>/ann/``.

    - The dataset is ``prediction.dataset`` or "ds0"; "a/b" goes to ``a/datasets/b``.
    - The image is a copy of the prediction's local file when it has one (and it needs no
      EXIF rotation); otherwise its pixels (``prediction.image`` or `load_image`) are
      written as PNG, the name's image suffix becoming ".png". A video frame is
      ``<video stem>_<frame:06d>.png``. A name already used in the dataset by this export
      gets a numeric prefix: ``1_<name>``, ``2_<name>``...
    - The annotation is ``ann/<image name>.json`` (`prediction_to_annotation`).
    - meta.json is `meta_for` the classes: written at once, and again at close when the
      predictions held masks or keypoints that the task did not announce, so every object
      written is valid for its class.
    - A prediction with an ``error``, or whose image cannot be written, is not put in the
      project; it is listed in the summary's ``errors``.

    Args:
        out_dir: The project folder.
        class_names: The model's class list.
        task: The model's task.
        keypoint_names: Names of the keypoints (graph nodes), if the model has them.

    Example:
        >>> exporter = SuperviselyExporter("project", model.classes)  # doctest: +SKIP

    """

    format = "sly"
    META_FILE = "meta.json"

    def __init__(
        self,
        out_dir: str | Path,
        class_names: list[str],
        task: str = "detection",
        keypoint_names: list[str] | None = None,
    ) -> None:
        super().__init__(out_dir, class_names, task)
        self.keypoint_names = keypoint_names
        self._used: dict[Path, set[str]] = {}
        self._datasets: dict[str, int] = {}
        self._has_masks = False
        self._num_keypoints: int | None = None
        self._meta = self._current_meta()
        self._write_meta()

    def _write(self, prediction: Prediction) -> None:
        if prediction.error is not None:
            return
        annotation = prediction_to_annotation(prediction, self.task, self.keypoint_names)
        dataset = prediction.dataset or "ds0"
        directory = dataset_dir(self.out_dir, dataset)
        source = copyable_file(prediction)
        name = image_file_name(prediction)
        name = self._free_name(directory, name if source is not None else png_file_name(name))
        (directory / "img").mkdir(parents=True, exist_ok=True)
        (directory / "ann").mkdir(parents=True, exist_ok=True)
        try:
            if source is not None:
                shutil.copyfile(source, directory / "img" / name)
            else:
                pixels = prediction.image
                if pixels is None:
                    pixels = prediction.load_image()
                Image.fromarray(pixels).save(directory / "img" / name, format="PNG")
        except Exception as e:  # noqa: BLE001 - any failure is reported, not raised
            self._used[directory].discard(name)
            self._add_error(prediction, f"could not write the image {name!r}: {e}")
            return
        with open(directory / "ann" / f"{name}.json", "w", encoding="utf-8") as f:
            json.dump(annotation, f)
        self._has_masks |= prediction.masks_rle is not None
        if prediction.keypoints is not None and self._num_keypoints is None:
            self._num_keypoints = int(prediction.keypoints.shape[1])
        self._datasets[dataset] = self._datasets.get(dataset, 0) + 1
        self.num_written += 1
        self.num_objects += len(annotation["objects"])

    def _finish(self) -> dict[str, Any]:
        meta = self._current_meta()
        if meta != self._meta:
            self._meta = meta
            self._write_meta()
        return {"images": self.num_written, "datasets": dict(self._datasets)}

    def _current_meta(self) -> dict[str, Any]:
        task = self.task
        if self._has_masks and task != "classification":
            task = "instance_segmentation"  # bitmaps (and rectangles for empty masks)
        return meta_for(self.class_names, task, self.keypoint_names, self._num_keypoints)

    def _write_meta(self) -> None:
        with open(self.out_dir / self.META_FILE, "w", encoding="utf-8") as f:
            json.dump(self._meta, f, indent=2)
        self._add_file(self.META_FILE)

    def _free_name(self, directory: Path, name: str) -> str:
        used = self._used.setdefault(directory, set())
        free, k = name, 0
        while free in used:
            k += 1
            free = f"{k}_{name}"
        used.add(free)
        return free
