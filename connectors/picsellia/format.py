"""Picsellia's monitoring bodies: a `Prediction` as ``raw_predictions``, pure (no Ray, no network).

Picsellia takes, for the deployment's type (`PICSELLIA_TYPES`):

- detection (``OBJECT_DETECTION``): ``{"detection_classes": [1], "detection_boxes":
  [[top, left, bottom, right]], "detection_scores": [0.87]}``, boxes as integer pixels:
  ``[y1, x1, y2, x2]`` rounded half up;
- instance segmentation (``SEGMENTATION``): ``detection_classes``, ``detection_scores`` and
  ``detection_masks``, one polygon per object, ``[[x, y], ...]`` integer pixels (the
  outline of the mask's largest part; the box's corners for an empty mask);
- classification (``CLASSIFICATION``): ``detection_classes`` and ``detection_scores``.

Classes are the deployment's integer label ids (`label_ids_from_labels` reads the SDK's
``{"1": "car"}`` labels); a class the deployment does not know is a ValueError naming it.
Each ``raw_predictions`` is built and checked by the ``picsellia`` SDK's own pydantic models
(`picsellia.types.schemas_prediction`), imported on first use (the SDK is slow to load).

`monitoring_body` builds the whole body of ``POST /api/deployment/<id>/predictions`` for an
`engine.plugins.MonitoredImage`, without the ``image`` (the sender adds its base64; the
export and the dead letter keep the body without it).
"""

from __future__ import annotations

import hashlib
import math
import mimetypes
import re
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from engine.plugins import MonitoredImage
from engine.prediction import Prediction

__all__ = [
    "CONTENT_TYPES",
    "PICSELLIA_TYPES",
    "box_tlbr",
    "check_task",
    "content_type_for",
    "default_label_ids",
    "label_ids_from_labels",
    "mask_polygon",
    "monitoring_body",
    "monitoring_filename",
    "prediction_key",
    "raw_predictions",
    "stored_media_type",
]

#: Tessera task -> Picsellia deployment type (``InferenceType``).
PICSELLIA_TYPES = {
    "detection": "OBJECT_DETECTION",
    "instance_segmentation": "SEGMENTATION",
    "classification": "CLASSIFICATION",
}
#: Media type -> what the monitoring service takes (the SDK's ``SupportedContentType``).
CONTENT_TYPES = {"image/png": "IMAGE/PNG", "image/jpeg": "IMAGE/JPEG", "image/jpg": "IMAGE/JPEG"}
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _schema(task: str) -> Any:
    from picsellia.types import schemas_prediction as schemas

    return {
        "detection": schemas.DetectionPredictionFormat,
        "instance_segmentation": schemas.SegmentationPredictionFormat,
        "classification": schemas.ClassificationPredictionFormat,
    }[task]


def check_task(task: str) -> str:
    """Return the Picsellia type of ``task``; a ValueError naming a task Picsellia cannot take.

    Example:
        >>> check_task("detection")
        'OBJECT_DETECTION'
    """
    if task not in PICSELLIA_TYPES:
        raise ValueError(
            f"Picsellia monitoring takes {', '.join(PICSELLIA_TYPES)} predictions, "
            f"not task {task!r}"
        )
    return PICSELLIA_TYPES[task]


def label_ids_from_labels(labels: Mapping[Any, Any]) -> dict[str, int]:
    """Class name -> label id, from a model version's ``labels`` (``{"1": "car", ...}``).

    Raises:
        ValueError: A label id that is not an integer.

    Example:
        >>> label_ids_from_labels({"1": "car", "2": "person"})
        {'car': 1, 'person': 2}
    """
    out: dict[str, int] = {}
    for ident, name in labels.items():
        try:
            out[str(name)] = int(ident)
        except (TypeError, ValueError):
            raise ValueError(
                f"Picsellia label id {ident!r} (class {name!r}) is not an integer"
            ) from None
    return out


def default_label_ids(class_names: list[str]) -> dict[str, int]:
    """Class name -> its position + 1: the ids an export uses without a deployment.

    Example:
        >>> default_label_ids(["car", "person"])
        {'car': 1, 'person': 2}
    """
    return {name: i + 1 for i, name in enumerate(class_names)}


def _half_up(value: float) -> int:
    return int(math.floor(float(value) + 0.5))


def box_tlbr(box: Any) -> list[int]:
    """An xyxy box as Picsellia's integer ``[top, left, bottom, right]`` (rounded half up).

    Example:
        >>> box_tlbr([10.4, 20.6, 50, 60])
        [21, 10, 60, 50]
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    return [_half_up(y1), _half_up(x1), _half_up(y2), _half_up(x2)]


def _box_polygon(box: Any) -> list[list[int]]:
    top, left, bottom, right = box_tlbr(box)
    return [[left, top], [right, top], [right, bottom], [left, bottom]]


def mask_polygon(mask: np.ndarray, box: Any) -> list[list[int]]:
    """The outline of ``mask``'s largest part as ``[[x, y], ...]``; the box's corners if empty.

    Example:
        >>> m = np.zeros((10, 10), bool); m[2:5, 3:7] = True
        >>> mask_polygon(m, [3, 2, 7, 5])
        [[3, 2], [3, 4], [6, 4], [6, 2]]
    """
    import cv2

    if mask is None or not np.asarray(mask).any():
        return _box_polygon(box)
    contours, _ = cv2.findContours(
        np.ascontiguousarray(mask, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    largest = max(contours, key=lambda c: (cv2.contourArea(c), len(c)))
    points = [[int(x), int(y)] for x, y in largest.reshape(-1, 2)]
    if len(points) < 3:  # a line or a dot: its bounding box
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        return [[min(xs), min(ys)], [max(xs), min(ys)], [max(xs), max(ys)], [min(xs), max(ys)]]
    return points


def _class_ids(prediction: Prediction, label_ids: Mapping[str, int]) -> list[int]:
    ids = []
    for name in prediction.classes:
        if name not in label_ids:
            raise ValueError(
                f"{prediction.name or 'prediction'}: class {name!r} is not a label of the "
                f"Picsellia deployment (labels: {sorted(label_ids)}); pass "
                "upload_options={'label_ids': {...}} to map it"
            )
        ids.append(int(label_ids[name]))
    return ids


def raw_predictions(prediction: Prediction, label_ids: Mapping[str, int]) -> dict[str, Any]:
    """``prediction`` in Picsellia's format for its task, checked by the SDK's model.

    Args:
        prediction: Detections in original-image pixels; ``prediction.task`` decides.
        label_ids: Class name -> the deployment's label id.

    Raises:
        ValueError: A task Picsellia does not take (keypoints), a class not in
            ``label_ids``, or a body the SDK's model refuses.

    Example:
        >>> from engine.detections import Detections
        >>> det = Detections(np.array([[10.4, 20.6, 50, 60]], np.float32),
        ...                  np.array([0.5], np.float32), np.array([0]))
        >>> raw_predictions(Prediction(det, ["car"]), {"car": 7})["detection_boxes"]
        [[21, 10, 60, 50]]
    """
    task = prediction.task
    check_task(task)
    classes = _class_ids(prediction, label_ids)
    scores = [float(s) for s in np.asarray(prediction.scores, np.float64)]
    body: dict[str, Any] = {"detection_classes": classes, "detection_scores": scores}
    if task == "detection":
        body["detection_boxes"] = [box_tlbr(b) for b in prediction.boxes]
    elif task == "instance_segmentation":
        masks = prediction.masks if prediction.masks_rle is not None else None
        body["detection_masks"] = [
            mask_polygon(None if masks is None else masks[i], box)
            for i, box in enumerate(prediction.boxes)
        ]
    schema = _schema(task)
    try:
        return schema.model_validate(body).model_dump()
    except Exception as error:  # pydantic's ValidationError
        raise ValueError(
            f"{prediction.name or 'prediction'}: Picsellia's {schema.__name__} refused the "
            f"prediction: {error}"
        ) from None


def content_type_for(name: str, content_type: str | None = None) -> str:
    """The monitoring service's content type (``IMAGE/PNG``, ``IMAGE/JPEG``) of an image.

    Raises:
        ValueError: A media type Picsellia does not take (it takes PNG and JPEG).

    Example:
        >>> content_type_for("a.jpg"), content_type_for("x", "image/png")
        ('IMAGE/JPEG', 'IMAGE/PNG')
    """
    kind = content_type or mimetypes.guess_type(name, strict=False)[0] or "image/png"
    found = CONTENT_TYPES.get(kind.lower().split(";")[0].strip())
    if found is None:
        raise ValueError(
            f"{name or 'image'}: Picsellia takes PNG and JPEG images, not {kind!r}; "
            "encode it as PNG first"
        )
    return found


def monitoring_filename(name: str, key: str, content_type: str) -> str:
    """A filename unique to ``key``: ``<stem>_<digest of key><extension>``.

    Two images called ``a.png`` from different folders (or requests) get different names;
    the same key always gets the same one, so a retried body is recognised.

    Example:
        >>> monitoring_filename("dir/a.png", "file:dir/a.png#0", "IMAGE/PNG")[:2]
        'a_'
    """
    path = PurePosixPath(str(name).replace("\\", "/"))
    stem = _SAFE.sub("_", path.stem)[:80] or "image"
    extension = ".jpg" if content_type == "IMAGE/JPEG" else ".png"
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return f"{stem}_{digest}{extension}"


def prediction_key(prediction: Prediction) -> str:
    """A stable key for a predicted item: where it came from, its frame, its position.

    The same item gets the same key in a retry and in a resumed job (the journal keeps the
    fields it is made of); two files of the same name in different folders get two keys.

    Example:
        >>> from engine.detections import Detections
        >>> prediction_key(Prediction(Detections.empty(), ["car"], source="file",
        ...                           path="/data/a.png", index=3))  # doctest: +SKIP
        'file:/data/a.png#3'
    """
    where = prediction.path or prediction.url or prediction.name
    frame = "" if prediction.frame_index is None else f"@{prediction.frame_index}"
    return f"{prediction.source}:{where}{frame}#{prediction.index}"


def stored_media_type(prediction: Prediction) -> str:
    """The media type the uploader sends for ``prediction``'s image.

    A PNG or JPEG file (not a video frame) goes as it is; anything else is encoded as PNG.

    Example:
        >>> from engine.detections import Detections
        >>> stored_media_type(Prediction(Detections.empty(), [], path="a.JPG"))  # doctest: +SKIP
        'image/jpeg'
    """
    if prediction.path is not None and prediction.frame_index is None:
        kind = mimetypes.guess_type(prediction.path, strict=False)[0]
        if kind in ("image/png", "image/jpeg"):
            return kind
    return "image/png"


def _plain_name(name: str, key: str, content_type: str) -> str:
    plain = PurePosixPath(str(name).replace("\\", "/")).name
    return plain or monitoring_filename("image", key, content_type)


def monitoring_body(
    record: MonitoredImage,
    label_ids: Mapping[str, int],
    shadow_label_ids: Mapping[str, int] | None = None,
    filename: str | None = None,
) -> dict[str, Any]:
    """The body of ``POST /api/deployment/<id>/predictions`` for ``record``, without ``image``.

    Args:
        record: One answered image.
        label_ids: The deployment's class name -> label id.
        shadow_label_ids: The shadow model's (default: ``label_ids``).
        filename: The body's filename (default: the prediction's name, without folders;
            `monitoring_filename` of the record's key when it has none). A batch job passes
            `monitoring_filename` so that two ``a.png`` of different folders differ.

    Returns:
        ``filename, content_type, height, width, latency`` (seconds), ``raw_predictions``,
        ``tags``, ``timestamp``, ``source`` when known, and ``shadow_latency`` +
        ``shadow_raw_predictions`` when the record has a shadow prediction.

    Raises:
        ValueError: See `raw_predictions` and `content_type_for`; a shadow prediction
            without its latency; an image of unknown size.

    Example:
        >>> body = monitoring_body(record, {"car": 1})        # doctest: +SKIP
        >>> sorted(body)[:3]                                   # doctest: +SKIP
        ['content_type', 'filename', 'height']
    """
    prediction = record.prediction
    content_type = content_type_for(prediction.name, record.content_type)
    if prediction.height <= 0 or prediction.width <= 0:
        raise ValueError(
            f"{prediction.name or record.key}: the image's size is unknown "
            f"({prediction.width}x{prediction.height})"
        )
    body: dict[str, Any] = {
        "filename": filename or _plain_name(prediction.name, record.key, content_type),
        "content_type": content_type,
        "height": int(prediction.height),
        "width": int(prediction.width),
        "latency": float(record.latency_s),
        "raw_predictions": raw_predictions(prediction, label_ids),
        "tags": [str(t) for t in record.tags],
        "timestamp": float(record.timestamp),
    }
    if record.source is not None:
        body["source"] = str(record.source)
    if record.shadow is not None:
        if record.shadow_latency_s is None:
            raise ValueError(f"{record.key}: a shadow prediction needs its shadow_latency_s")
        shadow_ids = label_ids if shadow_label_ids is None else shadow_label_ids
        body["shadow_latency"] = float(record.shadow_latency_s)
        body["shadow_raw_predictions"] = raw_predictions(record.shadow, shadow_ids)
    return body
