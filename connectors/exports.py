"""Streaming local exports of predictions: JSON lines, COCO, Parquet (and platforms' formats).

An exporter receives predictions one at a time, in any number, as they stream out of a
job, and keeps in memory only small records (never images). Every prediction is
accounted for: one with an ``error`` is written where the format can hold it (JSON lines,
Parquet) and, in every format, listed in the summary that `Exporter.close` returns.

Example:
    >>> with open_exporter("coco", "out", model.classes) as exporter:   # doctest: +SKIP
    ...     for prediction in session:
    ...         exporter.write(prediction)
    >>> exporter.close()["files"]                                       # doctest: +SKIP
    ['coco_bbox_results.json', 'coco_dataset.json']
"""

from __future__ import annotations

import abc
import json
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from connectors.formats.coco import (
    assemble_dataset,
    coco_annotations,
    coco_categories,
    coco_category_ids,
    coco_image,
    image_folder,
    split_results,
    with_folders,
)
from connectors.formats.jsonl import prediction_to_jsonl
from engine import plugins
from engine.models.base import check_task
from engine.prediction import Prediction
from engine.schemas import PREDICTION_SCHEMA

__all__ = [
    "EXPORT_FORMATS",
    "CocoExporter",
    "Exporter",
    "JsonlExporter",
    "ParquetExporter",
    "copyable_file",
    "open_exporter",
    "prediction_row",
]

_EXIF_ORIENTATION = 0x0112


class Exporter(abc.ABC):
    """What every local exporter shares: counting, the error list, the summary, ``with``.

    Subclasses set `format` and implement `_write` (and `_finish` for what is written at
    close). Use `open_exporter` to pick one by name.

    Args:
        out_dir: The folder to write into (created when missing; files are overwritten).
        class_names: The model's class list.
        task: The model's task: "detection", "instance_segmentation", "keypoints" or
            "classification".

    Raises:
        ValueError: If ``task`` is unknown.

    Example:
        >>> with open_exporter("jsonl", "out", ["car"]) as exporter:   # doctest: +SKIP
        ...     exporter.write(prediction)

    """

    #: The format's name, as `open_exporter` knows it.
    format: ClassVar[str] = ""

    def __init__(
        self, out_dir: str | Path, class_names: list[str], task: str = "detection"
    ) -> None:
        check_task(task)
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.class_names = list(class_names)
        self.task = task
        self.num_predictions = 0
        self.num_written = 0
        self.num_objects = 0
        self.errors: list[dict[str, Any]] = []
        self.files: list[str] = []
        self._summary: dict[str, Any] | None = None

    def write(self, prediction: Prediction) -> None:
        """Export one prediction (one with an ``error`` is also listed in the summary).

        Args:
            prediction: The prediction.

        Raises:
            RuntimeError: If the exporter is closed.

        Example:
            >>> exporter.write(prediction)                            # doctest: +SKIP

        """
        if self._summary is not None:
            raise RuntimeError(f"the {self.format} exporter of {self.out_dir} is closed")
        self.num_predictions += 1
        if prediction.error is not None:
            self._add_error(prediction, prediction.error)
        self._write(prediction)

    def close(self) -> dict[str, Any]:
        """Finish the files and return the summary; closing again returns it again.

        Returns:
            ``{"format", "out_dir", "files" (relative to out_dir), "predictions" (seen),
            "written" (predictions in the output), "objects" (objects in the output),
            "errors" ([{"index", "name", "error"}, ...]), ...}`` plus the format's own
            counts.

        Example:
            >>> exporter.close()["written"]                           # doctest: +SKIP
            42

        """
        if self._summary is None:
            extra = self._finish()
            self._summary = {
                "format": self.format,
                "out_dir": str(self.out_dir),
                "files": list(self.files),
                "predictions": self.num_predictions,
                "written": self.num_written,
                "objects": self.num_objects,
                "errors": list(self.errors),
                **extra,
            }
        return self._summary

    def __enter__(self) -> Exporter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @abc.abstractmethod
    def _write(self, prediction: Prediction) -> None:
        """Write one prediction (counted already; its error, if any, listed already)."""

    def _finish(self) -> dict[str, Any]:
        """Write what is written at close; return the format's own summary entries."""
        return {}

    def _add_error(self, prediction: Prediction, error: str) -> None:
        self.errors.append({"index": prediction.index, "name": prediction.name, "error": error})

    def _add_file(self, name: str) -> None:
        if name not in self.files:
            self.files.append(name)


# ---------------------------------------------------------------------- JSON lines
class JsonlExporter(Exporter):
    """``predictions.jsonl``: one line per prediction (see `connectors.formats.jsonl`).

    Every prediction is written, those with an ``error`` included; each line is flushed
    as it is written.

    Args:
        out_dir: The folder to write into.
        class_names: The model's class list.
        task: The model's task.

    Example:
        >>> exporter = JsonlExporter("out", ["car"])                  # doctest: +SKIP

    """

    format = "jsonl"
    FILE_NAME = "predictions.jsonl"

    def __init__(
        self, out_dir: str | Path, class_names: list[str], task: str = "detection"
    ) -> None:
        super().__init__(out_dir, class_names, task)
        self._file = open(self.out_dir / self.FILE_NAME, "w", encoding="utf-8")  # noqa: SIM115
        self._add_file(self.FILE_NAME)

    def _write(self, prediction: Prediction) -> None:
        self._file.write(prediction_to_jsonl(prediction) + "\n")
        self._file.flush()
        self.num_written += 1
        self.num_objects += len(prediction)

    def _finish(self) -> dict[str, Any]:
        self._file.close()
        return {}


# ---------------------------------------------------------------------- COCO
class CocoExporter(Exporter):
    """COCO results and dataset files (see `connectors.formats.coco`), written at close.

    Files: ``coco_bbox_results.json``, ``coco_segm_results.json`` (only when a prediction
    had masks) and ``coco_dataset.json`` (images, categories, annotations with scores).
    Image ids are 1, 2, ... in the order predictions arrive; an image's ``file_name``
    keeps its folder below the folder all the images share (`with_folders`, so two
    ``a.png`` do not collide); predictions with an
    ``error`` get none. Objects of placeholder classes have no category and are left out
    (counted as ``skipped_objects``). Only each prediction's small records are kept.

    Args:
        out_dir: The folder to write into.
        class_names: The model's class list.
        task: The model's task.

    Example:
        >>> exporter = CocoExporter("out", model.classes)            # doctest: +SKIP

    """

    format = "coco"
    BBOX_FILE = "coco_bbox_results.json"
    SEGM_FILE = "coco_segm_results.json"
    DATASET_FILE = "coco_dataset.json"

    def __init__(
        self, out_dir: str | Path, class_names: list[str], task: str = "detection"
    ) -> None:
        super().__init__(out_dir, class_names, task)
        self.category_ids = coco_category_ids(self.class_names)
        self._images: list[dict[str, Any]] = []
        self._folders: list[str | None] = []
        self._annotations: list[dict[str, Any]] = []
        self._has_masks = False
        self._skipped_objects = 0

    def _write(self, prediction: Prediction) -> None:
        if prediction.error is not None:
            return
        image_id = len(self._images) + 1
        annotations = coco_annotations(prediction, image_id, self.category_ids)
        self._images.append(coco_image(prediction, image_id))
        self._folders.append(image_folder(prediction))
        self._annotations.extend(annotations)
        self._has_masks |= prediction.masks_rle is not None
        self._skipped_objects += len(prediction) - len(annotations)
        self.num_written += 1
        self.num_objects += len(annotations)

    def _finish(self) -> dict[str, Any]:
        bbox_results, segm_results = split_results(self._annotations)
        self._dump(self.BBOX_FILE, bbox_results)
        if self._has_masks:
            self._dump(self.SEGM_FILE, segm_results)
        categories = coco_categories(self.class_names, self.category_ids)
        images = with_folders(self._images, self._folders)
        self._dump(self.DATASET_FILE, assemble_dataset(images, categories, self._annotations))
        return {"images": len(self._images), "skipped_objects": self._skipped_objects}

    def _dump(self, name: str, data: Any) -> None:
        with open(self.out_dir / name, "w", encoding="utf-8") as f:
            json.dump(data, f, separators=(",", ":"))
        self._add_file(name)


# ---------------------------------------------------------------------- shared by exporters
def copyable_file(prediction: Prediction) -> Path | None:
    """The prediction's local image file, when a plain copy of it shows what was predicted."""
    if prediction.path is None or prediction.frame_index is not None:
        return None
    path = Path(prediction.path)
    if not path.is_file():
        return None
    try:
        with Image.open(path) as image:
            size = image.size
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - not for PIL (a huge or exotic file): copy it as is
        return path
    if orientation not in (None, 1):
        return None  # the engine predicted on the rotated pixels: write those
    if prediction.width and prediction.height and size != (prediction.width, prediction.height):
        return None
    return path


# ---------------------------------------------------------------------- Parquet
def prediction_row(prediction: Prediction) -> dict[str, Any]:
    """Return a prediction as a row of `engine.schemas.PREDICTION_SCHEMA`.

    The pipeline's prediction row (`Prediction.to_row`): origin fields, size, error, then
    `Detections.to_arrow` columns. `Prediction.from_arrow` reads it back.

    Args:
        prediction: The prediction.

    Returns:
        The row dict.

    Example:
        >>> prediction_row(prediction)["xyxy"][:4]                   # doctest: +SKIP
        [10.0, 20.0, 50.0, 80.0]

    """
    return prediction.to_row()


class ParquetExporter(Exporter):
    """``predictions.parquet``: one `prediction_row` per prediction, errors included.

    Rows are written in row groups of ``row_group_size`` as they arrive, through one
    `pyarrow.parquet.ParquetWriter`. The schema is `PREDICTION_SCHEMA` with metadata
    ``tessera.class_names`` (JSON list) and ``tessera.task``, so that
    ``Prediction.from_arrow(row, class_names, task)`` rebuilds each prediction.

    Args:
        out_dir: The folder to write into.
        class_names: The model's class list.
        task: The model's task.
        row_group_size: Rows per row group (at least 1).

    Raises:
        ValueError: If ``row_group_size`` is below 1.

    Example:
        >>> exporter = ParquetExporter("out", model.classes)         # doctest: +SKIP

    """

    format = "parquet"
    FILE_NAME = "predictions.parquet"

    def __init__(
        self,
        out_dir: str | Path,
        class_names: list[str],
        task: str = "detection",
        row_group_size: int = 256,
    ) -> None:
        if row_group_size < 1:
            raise ValueError(f"row_group_size must be at least 1, got {row_group_size}")
        super().__init__(out_dir, class_names, task)
        self.row_group_size = row_group_size
        self.schema = PREDICTION_SCHEMA.with_metadata(
            {"tessera.class_names": json.dumps(self.class_names), "tessera.task": task}
        )
        self._writer = pq.ParquetWriter(self.out_dir / self.FILE_NAME, self.schema)
        self._rows: list[dict[str, Any]] = []
        self._row_groups = 0
        self._add_file(self.FILE_NAME)

    def _write(self, prediction: Prediction) -> None:
        self._rows.append(prediction_row(prediction))
        self.num_written += 1
        self.num_objects += len(prediction)
        if len(self._rows) >= self.row_group_size:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            table = pa.Table.from_pylist(self._rows, schema=self.schema)
            self._writer.write_table(table, row_group_size=len(self._rows))
            self._rows = []
            self._row_groups += 1

    def _finish(self) -> dict[str, Any]:
        self._flush()
        self._writer.close()
        return {"row_groups": self._row_groups}


# ---------------------------------------------------------------------- registry
_EXPORTERS: dict[str, type[Exporter]] = {
    cls.format: cls for cls in (CocoExporter, JsonlExporter, ParquetExporter)
}

#: The format names `open_exporter` accepts.
EXPORT_FORMATS: tuple[str, ...] = tuple(sorted(_EXPORTERS))


def open_exporter(
    format: str,  # noqa: A002 - the public name of the option
    out_dir: str | Path,
    class_names: list[str],
    task: str = "detection",
    **options: Any,
) -> Exporter:
    """Open a streaming exporter of predictions into a local folder.

    Args:
        format: "coco", "jsonl", "parquet", or a format an installed platform adds
            (`engine.plugins.export_formats`, e.g. "sly").
        out_dir: The folder to write into (created when missing).
        class_names: The model's class list.
        task: The model's task.
        **options: The format's own options (``row_group_size`` for "parquet").

    Returns:
        The exporter: call ``write(prediction)`` for each prediction, then ``close()``
        (or use it in a ``with`` block).

    Raises:
        ValueError: If the format or the task is unknown; the message lists the valid
            ones.

    Example:
        >>> with open_exporter("sly", "project", model.classes) as exporter:  # doctest: +SKIP
        ...     for prediction in predictions:
        ...         exporter.write(prediction)

    """
    cls = _EXPORTERS.get(format)
    if cls is None:
        return plugins.exporter(format)(Path(out_dir), list(class_names), task, **options)
    return cls(out_dir, class_names, task, **options)
