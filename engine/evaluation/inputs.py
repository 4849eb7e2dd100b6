"""What `engine.evaluate` reads: ground truth as a COCO dataset, and predictions as a stream.

Ground truth is held whole (it is the reference every image is matched against), as a COCO
dataset dict: a COCO dataset file, the Predictions of a labelled set, or a local dataset in
a platform's layout (each platform plug-in reads its own: `engine.plugins.Platform`
``read_local_ground_truth``). Predictions are read one at a time, never all at once: a list
or any iterable of `Prediction` (a `PredictionResults`, a `PredictionStream`, a detached
session), a Tessera ``predictions.jsonl`` export (or its folder), or a COCO results file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from pycocotools import mask as coco_mask

from engine.prediction import Prediction

__all__ = ["Detected", "GroundTruth", "load_ground_truth", "iter_detected"]

#: File names a Tessera export folder holds, in the order they are looked for.
EXPORT_FILES = ("predictions.jsonl", "coco_segm_results.json", "coco_bbox_results.json")


@dataclass
class GroundTruth:
    """A COCO dataset dict and the lookups `engine.evaluate` matches predictions by.

    Attributes:
        dataset: ``images`` (id, file_name, height, width), ``annotations`` (id, image_id,
            category_id, bbox xywh, area, iscrowd, optional segmentation) and
            ``categories`` (id, name).
        source: How the ground truth was given (for messages).
    """

    dataset: dict[str, Any]
    source: str
    by_name: dict[str, int] = field(default_factory=dict)
    category_ids: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names: dict[str, list[int]] = {}
        for image in self.dataset["images"]:
            name = str(image["file_name"])
            for key in {name, PurePath(name).name}:
                names.setdefault(key, []).append(int(image["id"]))
        # a base name two images share would be ambiguous: only full names match those
        self.by_name = {k: v[0] for k, v in names.items() if len(v) == 1}
        self.category_ids = {str(c["name"]): int(c["id"]) for c in self.dataset["categories"]}

    @property
    def image_ids(self) -> list[int]:
        """Every ground-truth image id, in the dataset's order."""
        return [int(image["id"]) for image in self.dataset["images"]]

    @property
    def has_masks(self) -> bool:
        """True when every annotation has a segmentation."""
        anns = self.dataset["annotations"]
        return bool(anns) and all(a.get("segmentation") for a in anns)

    def image_of(self, prediction: Prediction) -> int | None:
        """The id of the ground-truth image a prediction is for (by name), or None."""
        for key in (prediction.name, prediction.path and PurePath(prediction.path).name):
            if key and key in self.by_name:
                return self.by_name[key]
        if prediction.name and PurePath(prediction.name).name in self.by_name:
            return self.by_name[PurePath(prediction.name).name]
        return None


@dataclass
class Detected:
    """One image's predicted objects in COCO result rows (category ids of the ground truth).

    ``error`` is the Prediction's error when the image could not be predicted (no rows).
    """

    image_id: int
    rows: list[dict[str, Any]]
    has_masks: bool
    error: str | None = None


# ------------------------------------------------------------------------- ground truth
def load_ground_truth(ground_truth: Any) -> GroundTruth:
    """Read ground truth: a COCO dataset file, a local dataset folder, or Predictions.

    Raises:
        ValueError: The input is none of these, or cannot be read (the message names it).
    """
    if isinstance(ground_truth, GroundTruth):
        return ground_truth
    if isinstance(ground_truth, (str, Path)):
        path = Path(ground_truth)
        if not path.exists():
            raise ValueError(f"ground truth {str(path)!r}: no such file or folder")
        if path.is_dir():
            return GroundTruth(_local_dataset(path), f"local dataset {path}")
        return GroundTruth(_coco_dataset(path), f"COCO dataset {path}")
    if isinstance(ground_truth, dict) and "images" in ground_truth:
        return GroundTruth(_checked_coco(ground_truth, "the COCO dataset dict"), "a COCO dict")
    if isinstance(ground_truth, Iterable):
        return GroundTruth(predictions_as_coco(ground_truth), "Predictions")
    raise ValueError(
        f"ground truth must be a COCO dataset file, a local dataset folder or Predictions; "
        f"got {type(ground_truth).__name__}"
    )


def _coco_dataset(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"ground truth {str(path)!r}: not a readable JSON file ({exc})") from exc
    if not isinstance(data, dict) or "images" not in data or "categories" not in data:
        raise ValueError(
            f"ground truth {str(path)!r}: not a COCO dataset (needs images, annotations, "
            "categories)"
        )
    return _checked_coco(data, repr(str(path)))


def _checked_coco(data: dict[str, Any], where: str) -> dict[str, Any]:
    data = {**data, "annotations": list(data.get("annotations", []))}
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"ground truth {where}: {key!r} must be a list")
    names = [c.get("name") for c in data["categories"]]
    if len(set(names)) != len(names):
        raise ValueError(f"ground truth {where}: category names repeat: {names}")
    for ann in data["annotations"]:
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
    return data


def _local_dataset(path: Path) -> dict[str, Any]:
    """A local dataset folder in a platform's layout, through its plug-in."""
    from engine import plugins

    for platform in plugins.platforms().values():
        reader = getattr(platform, "read_local_ground_truth", None)
        found = reader(path) if reader is not None else None
        if found is not None:
            return predictions_as_coco(found)
    if (path / "coco_dataset.json").exists():  # a Tessera COCO export's dataset file
        return _coco_dataset(path / "coco_dataset.json")
    raise ValueError(
        f"ground truth {str(path)!r}: a folder that no installed platform reads as a local "
        "dataset (and no coco_dataset.json in it)"
    )


def predictions_as_coco(predictions: Iterable[Prediction]) -> dict[str, Any]:
    """Labelled images (Predictions; scores ignored) as a COCO dataset dict.

    Example:
        >>> import numpy as np
        >>> from engine.detections import Detections
        >>> p = Prediction(Detections(np.array([[0, 0, 4, 2]]), [1.0], [0]), ["car"],
        ...                name="a.png", height=8, width=8)
        >>> predictions_as_coco([p])["annotations"][0]["bbox"]
        [0.0, 0.0, 4.0, 2.0]
    """
    images, annotations, categories = [], [], {}
    for image_id, prediction in enumerate(predictions, 1):
        if not isinstance(prediction, Prediction):
            raise ValueError(
                f"ground truth item {image_id}: a Prediction expected, "
                f"got {type(prediction).__name__}"
            )
        images.append(
            {
                "id": image_id,
                "file_name": prediction.name or PurePath(prediction.path or "").name,
                "height": int(prediction.height),
                "width": int(prediction.width),
            }
        )
        rles = prediction.masks_rle
        for k, (box, name) in enumerate(zip(prediction.boxes, prediction.classes)):
            category = categories.setdefault(name, len(categories) + 1)
            x1, y1, x2, y2 = (float(v) for v in box)
            ann = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": category,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1),
                "iscrowd": 0,
            }
            if rles is not None:
                ann["segmentation"] = _text_rle(rles[k])
                ann["area"] = float(coco_mask.area(_binary_rle(rles[k])))
            annotations.append(ann)
    return {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": n} for n, i in categories.items()],
    }


# -------------------------------------------------------------------------- predictions
def iter_detected(predictions: Any, truth: GroundTruth) -> Iterator[Detected]:
    """Each predicted image's objects as COCO result rows, one image at a time.

    Raises:
        ValueError: An unreadable input, a prediction for an image the ground truth does
            not hold, or a class the ground truth does not name (each message names it).
    """
    if isinstance(predictions, (str, Path)):
        path = Path(predictions)
        if path.is_dir():
            found = [path / name for name in EXPORT_FILES if (path / name).exists()]
            if not found:
                raise ValueError(
                    f"predictions {str(path)!r}: a folder without {' or '.join(EXPORT_FILES)}"
                )
            path = found[0]
        if not path.exists():
            raise ValueError(f"predictions {str(path)!r}: no such file or folder")
        if path.suffix == ".jsonl":
            yield from _from_predictions(_read_jsonl(path), truth)
        else:
            yield from _from_coco_results(path, truth)
        return
    if isinstance(predictions, Prediction):
        predictions = [predictions]
    if not isinstance(predictions, Iterable):
        raise ValueError(
            "predictions must be Predictions (a list, results, a stream or a session), a "
            f"predictions.jsonl export or a COCO results file; got {type(predictions).__name__}"
        )
    yield from _from_predictions(predictions, truth)


def _read_jsonl(path: Path) -> Iterator[Prediction]:
    from engine.prediction_json import prediction_from_json

    with path.open() as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                yield prediction_from_json(json.loads(line))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"predictions {str(path)!r}, line {number}: {exc}") from exc


def _from_predictions(predictions: Iterable[Any], truth: GroundTruth) -> Iterator[Detected]:
    for position, prediction in enumerate(predictions):
        if not isinstance(prediction, Prediction):
            raise ValueError(
                f"prediction {position}: a Prediction expected, got {type(prediction).__name__}"
            )
        image_id = truth.image_of(prediction)
        if image_id is None:
            raise ValueError(
                f"prediction {position} ({prediction.name or prediction.path!r}) is for an "
                f"image the ground truth ({truth.source}) does not hold"
            )
        if prediction.error is not None:
            yield Detected(image_id, [], False, error=prediction.error)
            continue
        missing = sorted(set(prediction.classes) - set(truth.category_ids))
        if missing:
            raise ValueError(
                f"classes {missing} are predicted (in {prediction.name!r}) but the ground "
                f"truth ({truth.source}) has no such category; it names "
                f"{sorted(truth.category_ids)}"
            )
        rles = prediction.masks_rle
        rows = []
        for k, (box, score, name) in enumerate(
            zip(prediction.boxes, prediction.scores, prediction.classes)
        ):
            x1, y1, x2, y2 = (float(v) for v in box)
            row = {
                "image_id": image_id,
                "category_id": truth.category_ids[name],
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": float(score),
            }
            if rles is not None:
                row["segmentation"] = _text_rle(rles[k])
            rows.append(row)
        yield Detected(image_id, rows, rles is not None)


def _from_coco_results(path: Path, truth: GroundTruth) -> Iterator[Detected]:
    try:
        rows = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"predictions {str(path)!r}: not a readable JSON file ({exc})") from exc
    if not isinstance(rows, list):
        raise ValueError(f"predictions {str(path)!r}: a COCO results file is a JSON list")
    images = set(truth.image_ids)
    categories = set(truth.category_ids.values())
    by_image: dict[int, list[dict[str, Any]]] = {}
    for number, row in enumerate(rows):
        if not isinstance(row, dict) or not {"image_id", "category_id", "score"} <= set(row):
            raise ValueError(
                f"predictions {str(path)!r}, result {number}: needs image_id, category_id, "
                "score and bbox or segmentation"
            )
        if row["image_id"] not in images:
            raise ValueError(
                f"predictions {str(path)!r}, result {number}: image_id {row['image_id']} is "
                f"not in the ground truth ({truth.source})"
            )
        if row["category_id"] not in categories:
            raise ValueError(
                f"predictions {str(path)!r}, result {number}: category_id "
                f"{row['category_id']} is not in the ground truth ({truth.source})"
            )
        by_image.setdefault(int(row["image_id"]), []).append(row)
    for image_id, image_rows in by_image.items():
        yield Detected(image_id, image_rows, all("segmentation" in r for r in image_rows))


def _text_rle(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    return {
        "size": [int(s) for s in rle["size"]],
        "counts": counts.decode() if isinstance(counts, bytes) else counts,
    }


def _binary_rle(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    counts = counts.encode() if isinstance(counts, str) else counts
    return {"size": list(rle["size"]), "counts": counts}
