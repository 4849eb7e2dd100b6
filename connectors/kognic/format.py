"""Kognic OpenLABEL 1.0.0: pure functions from `Prediction` to one image's prediction, no Ray.

One document per image, its objects in frame ``"0"`` (``timestamp`` 0) of the one camera
stream (see ``../shared/FORMATS.md``, Kognic)::

    {"openlabel": {
        "metadata": {"schema_version": "1.0.0", "name": "a.png"},
        "streams": {"CAM": {"type": "camera", "uri": ""}},
        "objects": {"<uuid>": {"name": "car-0", "type": "car"}},
        "frames": {"0": {
            "frame_properties": {"timestamp": 0, "streams": {"CAM": {}}},
            "objects": {"<uuid>": {"object_data": {"bbox": [{
                "name": "car-0-bbox", "val": [x_center, y_center, width, height],
                "attributes": {"num": [{"name": "confidence", "val": 0.87}],
                               "text": [{"name": "stream", "val": "CAM"}]}}]}}}}}}}

- detection: a ``bbox`` per object, ``val`` the centre and size of the exclusive pixel box
  (``[x1, y1, x2, y2]`` = ``[10, 20, 50, 60]`` gives ``[30, 40, 40, 40]``), rounded to 2;
- instance segmentation: an ``image`` per object instead (Kognic's segmentation bitmap), a
  base64 grayscale PNG of the image's size, 255 on the object and 0 elsewhere; an object
  with an empty mask gets its box as the mask.

Each carries the ``confidence`` (the score, rounded to 4, in [0, 1]) and the ``stream``
text attributes. Kognic accepts only bounding boxes, cuboids and segmentation bitmaps as
predictions, so a classification or keypoints model is refused (`check_task`) rather than
written in part. Object keys are uuid5s of a seed (the job), the scene (or image) and the
object's position, so that the same prediction always gives the same document.
"""

from __future__ import annotations

import base64
import io
import uuid
from typing import Any

import numpy as np
from PIL import Image

from engine.prediction import Prediction

__all__ = [
    "ACCEPTED_TASKS",
    "DEFAULT_STREAM",
    "SCHEMA_VERSION",
    "KognicTaskError",
    "bbox_val",
    "check_task",
    "mask_png",
    "object_key",
    "prediction_to_openlabel",
]

#: The OpenLABEL schema version Kognic reads.
SCHEMA_VERSION = "1.0.0"
#: The camera id of the ``stream`` attribute, when none is given.
DEFAULT_STREAM = "CAM"
#: Model tasks whose predictions Kognic accepts (bounding boxes, segmentation bitmaps).
ACCEPTED_TASKS = ("detection", "instance_segmentation")
_NAMESPACE = uuid.UUID("0b6a8f0e-3c3e-4f9e-9a43-5b2f8d1c7e21")


class KognicTaskError(ValueError):
    """A model task Kognic takes no predictions of."""


def check_task(task: str) -> None:
    """Refuse a task whose predictions Kognic does not take.

    Raises:
        KognicTaskError: ``task`` is not one of `ACCEPTED_TASKS`; the message names it.

    Example:
        >>> check_task("detection")
        >>> try:
        ...     check_task("keypoints")
        ... except KognicTaskError as error:
        ...     print("a keypoints model" in str(error))
        True

    """
    if task not in ACCEPTED_TASKS:
        raise KognicTaskError(
            "Kognic takes predictions of bounding boxes and segmentation bitmaps only (tasks "
            f"{', '.join(ACCEPTED_TASKS)}); a {task} model's predictions cannot be written"
        )


def object_key(seed: str, item: str, index: int) -> str:
    """The uuid of object ``index`` of ``item`` (a scene uuid or image name) under ``seed``.

    Example:
        >>> object_key("job", "scene-1", 0) == object_key("job", "scene-1", 0)
        True
    """
    return str(uuid.uuid5(_NAMESPACE, f"{seed}\x00{item}\x00{index}"))


def bbox_val(box: Any) -> list[float]:
    """``[x_center, y_center, width, height]`` of an ``[x1, y1, x2, y2]`` box, rounded to 2.

    Example:
        >>> bbox_val([10, 20, 50, 60])
        [30.0, 40.0, 40.0, 40.0]
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    return [
        round((x1 + x2) / 2, 2),
        round((y1 + y2) / 2, 2),
        round(x2 - x1, 2),
        round(y2 - y1, 2),
    ]


def mask_png(mask: np.ndarray) -> str:
    """A boolean (H, W) mask as a base64 grayscale PNG: 255 on the object, 0 elsewhere.

    Example:
        >>> png = base64.b64decode(mask_png(np.eye(3, dtype=bool)))
        >>> np.asarray(Image.open(io.BytesIO(png))).tolist()
        [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
    """
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255, mode="L").save(
        buffer, format="PNG"
    )
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _filled(box: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape, bool)
    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    mask[max(y1, 0) : max(y2, 0), max(x1, 0) : max(x2, 0)] = True
    return mask


def _score(value: float) -> float:
    return min(max(round(float(value), 4), 0.0), 1.0)


def prediction_to_openlabel(
    prediction: Prediction,
    stream: str = DEFAULT_STREAM,
    seed: str = "",
    item: str | None = None,
) -> dict[str, Any]:
    """Return ``prediction`` as Kognic's OpenLABEL prediction of one image.

    Args:
        prediction: One image's prediction (its ``task`` decides the geometries).
        stream: The camera id (the ``stream`` attribute and the document's stream).
        seed: Makes one job's object keys differ from another's (the job id).
        item: What the object keys derive from besides ``seed`` (the scene uuid); default
            the image's name.

    Returns:
        ``{"openlabel": {...}}`` (see the module docstring); an image with no objects has
        an empty frame.

    Raises:
        KognicTaskError: The prediction's task is not one Kognic accepts.
        ValueError: ``stream`` is empty.

    Example:
        >>> from engine.detections import Detections
        >>> det = Detections(np.array([[10, 20, 50, 60]], np.float32), np.array([0.87]),
        ...                  np.array([0]))
        >>> doc = prediction_to_openlabel(Prediction(det, ["car"], name="a.png"))
        >>> [o["object_data"]["bbox"][0]["val"]
        ...  for o in doc["openlabel"]["frames"]["0"]["objects"].values()]
        [[30.0, 40.0, 40.0, 40.0]]
    """
    check_task(prediction.task)
    if not str(stream).strip():
        raise ValueError("the Kognic stream (camera id) cannot be empty")
    stream = str(stream)
    item = prediction.name if item is None else item
    masks = None
    if prediction.task == "instance_segmentation" and prediction.masks_rle is not None:
        masks = prediction.masks
    objects: dict[str, Any] = {}
    frame_objects: dict[str, Any] = {}
    classes, scores = prediction.classes, prediction.scores
    for i, box in enumerate(prediction.boxes):
        key = object_key(seed, item, i)
        name = f"{classes[i]}-{i}"
        attributes = {
            "num": [{"name": "confidence", "val": _score(scores[i])}],
            "text": [{"name": "stream", "val": stream}],
        }
        if masks is not None:
            mask = masks[i] if masks[i].any() else _filled(box, masks[i].shape)
            data = {
                "image": [
                    {
                        "name": f"{name}-mask",
                        "val": mask_png(mask),
                        "mime_type": "image/png",
                        "encoding": "base64",
                        "attributes": attributes,
                    }
                ]
            }
        else:
            data = {
                "bbox": [{"name": f"{name}-bbox", "val": bbox_val(box), "attributes": attributes}]
            }
        objects[key] = {"name": name, "type": classes[i]}
        frame_objects[key] = {"object_data": data}
    return {
        "openlabel": {
            "metadata": {"schema_version": SCHEMA_VERSION, "name": prediction.name},
            "streams": {stream: {"type": "camera", "uri": ""}},
            "objects": objects,
            "frames": {
                "0": {
                    "frame_properties": {"timestamp": 0, "streams": {stream: {}}},
                    "objects": frame_objects,
                }
            },
        }
    }
