"""Labelbox prediction NDJSON: pure functions from `Prediction` to annotation lines, no Ray.

One line per annotation (see ``../shared/FORMATS.md``, Labelbox)::

    {"uuid": "...", "name": "car", "confidence": 0.93, "dataRow": {"globalKey": "a.png"},
     "bbox": {"top": 50, "left": 100, "height": 90, "width": 120}}

- detection: a ``bbox`` per object (``top``/``left`` = ``y1``/``x1``, ``height``/``width``
  = ``y2 - y1``/``x2 - x1`` of the exclusive pixel box), rounded to 2 decimals;
- instance segmentation: a ``mask`` per object, a base64 PNG of the image's size holding
  0 and 1 (what ``NDMask`` accepts); an object with an empty mask gets its box as the mask,
  so that each class stays one tool (a Labelbox feature has one shape);
- keypoints: the object's box, and one ``point`` per visible keypoint, named
  ``"<class> keypoint <j>"`` (feature names are unique in a Labelbox ontology);
- classification: one radio line, ``{"name": <classification name>, "answer": {"name":
  <top class>, "confidence": s}}``.

Every object line carries ``confidence`` (the score, rounded to 4, in [0, 1]). Each line's
``uuid`` derives from a seed (the job), the item and the line's position, so a re-delivery
sends the same uuids. Labelbox takes at most `MAX_PER_FEATURE` annotations per data row
per feature: `over_feature_limit` names the features past it (the uploader and the export
refuse such an item, never truncating it silently).
"""

from __future__ import annotations

import base64
import io
import uuid
from collections import Counter
from typing import Any

import numpy as np
from PIL import Image

from engine.prediction import Prediction

__all__ = [
    "CLASSIFICATION_NAME",
    "MAX_PER_FEATURE",
    "data_row_ref",
    "is_mask_line",
    "keypoint_feature",
    "line_uuid",
    "mask_png",
    "over_feature_limit",
    "prediction_to_ndjson",
]

#: Labelbox's limit of annotations per data row per feature (name) in one import.
MAX_PER_FEATURE = 5000
#: The default name of the radio classification a classifier's answers go to.
CLASSIFICATION_NAME = "class"
_NAMESPACE = uuid.UUID("6f1d3f3e-8a53-4d59-9c7e-1c3b6a1f7a10")


def data_row_ref(global_key: str | None = None, data_row_id: str | None = None) -> dict[str, str]:
    """The ``dataRow`` of a line: exactly one of ``globalKey`` or ``id``.

    Raises:
        ValueError: Both or neither are given.

    Example:
        >>> data_row_ref(global_key="a.png")
        {'globalKey': 'a.png'}
    """
    if (global_key is None) == (data_row_id is None):
        raise ValueError("a Labelbox dataRow needs exactly one of a global key or a data row id")
    return {"globalKey": str(global_key)} if global_key is not None else {"id": str(data_row_id)}


def line_uuid(seed: str, item: str, number: int) -> str:
    """A stable uuid for line ``number`` of ``item`` under ``seed`` (a job id).

    Example:
        >>> line_uuid("job", "a.png", 0) == line_uuid("job", "a.png", 0)
        True
    """
    return str(uuid.uuid5(_NAMESPACE, f"{seed}\x00{item}\x00{number}"))


def keypoint_feature(class_name: str, index: int) -> str:
    """The feature name of keypoint ``index`` of ``class_name``.

    Example:
        >>> keypoint_feature("person", 3)
        'person keypoint 3'
    """
    return f"{class_name} keypoint {index}"


def mask_png(mask: np.ndarray) -> str:
    """A boolean (H, W) mask as a base64 PNG holding 0 and 1 (Labelbox's ``mask.png``).

    Example:
        >>> len(base64.b64decode(mask_png(np.eye(4, dtype=bool)))) > 0
        True
    """
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _box(box: np.ndarray) -> dict[str, float]:
    x1, y1, x2, y2 = (round(float(v), 2) for v in box)
    return {"top": y1, "left": x1, "height": round(y2 - y1, 2), "width": round(x2 - x1, 2)}


def _filled(box: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape, bool)
    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    mask[max(y1, 0) : max(y2, 0), max(x1, 0) : max(x2, 0)] = True
    return mask


def _score(value: float) -> float:
    return min(max(round(float(value), 4), 0.0), 1.0)


def prediction_to_ndjson(
    prediction: Prediction,
    data_row: dict[str, str],
    seed: str = "",
    classification_name: str = CLASSIFICATION_NAME,
) -> list[dict[str, Any]]:
    """Return ``prediction`` as Labelbox prediction lines (see the module docstring).

    Args:
        prediction: One image's prediction (its ``task`` decides the geometries).
        data_row: The line's ``dataRow`` (`data_row_ref`).
        seed: Makes the uuids of one job differ from another's (the job id).
        classification_name: The radio classification of a classifier's answer.

    Returns:
        The lines, in object order (an empty list for an image with no objects).

    Example:
        >>> from engine.detections import Detections
        >>> det = Detections(np.array([[100, 50, 220, 140]], np.float32), np.array([0.9]),
        ...                  np.array([0]))
        >>> line = prediction_to_ndjson(Prediction(det, ["car"]), {"globalKey": "a"})[0]
        >>> line["bbox"], line["confidence"]
        ({'top': 50.0, 'left': 100.0, 'height': 90.0, 'width': 120.0}, 0.9)
    """
    item = data_row.get("globalKey") or data_row.get("id") or prediction.name
    lines: list[dict[str, Any]] = []

    def add(line: dict[str, Any]) -> None:
        lines.append({"uuid": line_uuid(seed, item, len(lines)), **line, "dataRow": data_row})

    classes, scores = prediction.classes, prediction.scores
    if prediction.task == "classification":
        if len(classes):
            top = int(np.argmax(scores))
            answer = {"name": classes[top], "confidence": _score(scores[top])}
            add({"name": classification_name, "answer": answer})
        return lines
    masks = None
    if prediction.task == "instance_segmentation" and prediction.masks_rle is not None:
        masks = prediction.masks
    keypoints = prediction.keypoints if prediction.task == "keypoints" else None
    for i, box in enumerate(prediction.boxes):
        base = {"name": classes[i], "confidence": _score(scores[i])}
        if masks is not None:
            add(
                {
                    **base,
                    "mask": {
                        "png": mask_png(
                            masks[i] if masks[i].any() else _filled(box, masks[i].shape)
                        )
                    },
                }
            )
        else:
            add({**base, "bbox": _box(box)})
        if keypoints is not None:
            for j, (x, y, visible) in enumerate(keypoints[i]):
                if visible > 0:
                    point = {"x": round(float(x), 2), "y": round(float(y), 2)}
                    add({**base, "name": keypoint_feature(classes[i], j), "point": point})
    return lines


def is_mask_line(line: dict[str, Any]) -> bool:
    """True for a mask annotation (imports of masks are split into smaller jobs)."""
    return "mask" in line


def over_feature_limit(lines: list[dict[str, Any]], limit: int = MAX_PER_FEATURE) -> str | None:
    """Why ``lines`` (one data row's) break Labelbox's per-feature limit, or None.

    Example:
        >>> over_feature_limit([{"name": "car"}] * 3, limit=2)
        "3 annotations of feature 'car' on one data row; Labelbox takes at most 2"
    """
    counts = Counter(str(line.get("name")) for line in lines)
    over = [f"{n} annotations of feature {name!r}" for name, n in counts.items() if n > limit]
    if not over:
        return None
    return f"{', '.join(over)} on one data row; Labelbox takes at most {limit}"
