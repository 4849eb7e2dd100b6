"""`Prediction` <-> JSON: the one codec of server answers, NDJSON exports and upload journals.

A prediction is a JSON object with every key present::

    {"index": 0, "source": "file", "name": "a.png", "path": "/data/a.png", "url": null,
     "dataset": null, "frame_index": null, "timestamp": null,
     "height": 480, "width": 640, "error": null,
     "latency_ms": 11.8,                     # the model's time for the image, or null
     "boxes": [[x1, y1, x2, y2], ...],       # original-image pixels, x2/y2 exclusive
     "scores": [0.98, ...], "classes": ["car", ...], "class_idxs": [2, ...],
     "masks": [{"size": [h, w], "counts": "<COCO RLE string>"}, ...] | null,
     "keypoints": [[[x, y, score], ...], ...] | null, "num_keypoints": K | null,
     "track_ids": [...] | null,
     "task": "detection", "class_names": [...]}   # with self_contained=True

By default numbers are exact: boxes, scores and keypoints are written at float32
precision (each value in its shortest form that reads back as the same float32), so
`prediction_from_json` rebuilds the prediction exactly. ``rounded=True`` writes readable
answers instead (coordinates to 2 decimals, scores to 4). Non-finite numbers are written
as null and read back as NaN, so the object is always strict JSON. Not kept: the
in-memory image and ``Detections.data``.

Example:
    >>> from engine.detections import Detections
    >>> p = Prediction(Detections([[1.5, 2, 3, 4]], [0.9], [0]), ["car"], name="a.png")
    >>> data = prediction_to_json(p)
    >>> data["boxes"], data["classes"], data["class_names"]
    ([[1.5, 2.0, 3.0, 4.0]], ['car'], ['car'])
    >>> prediction_from_json(data).boxes.tolist()
    [[1.5, 2.0, 3.0, 4.0]]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from engine import masks as mask_utils
from engine.detections import Detections
from engine.prediction import Prediction
from engine.schemas import PREDICTION_FIELDS

#: Decimals a rounded ``latency_ms`` keeps.
LATENCY_DECIMALS = 3

__all__ = ["prediction_from_json", "prediction_to_json"]

#: Decimals of coordinates and of scores with ``rounded=True``.
COORDINATE_DECIMALS, SCORE_DECIMALS = 2, 4


def prediction_to_json(
    prediction: Prediction, *, rounded: bool = False, self_contained: bool = True
) -> dict[str, Any]:
    """Return a prediction as a JSON-serialisable dict (see the module docstring).

    Args:
        prediction: The prediction, with or without ``error``.
        rounded: Round coordinates to 2 decimals and scores to 4 (readable answers);
            False writes them exactly.
        self_contained: Add ``task`` and ``class_names``, so that the object alone
            rebuilds the prediction.

    Returns:
        The dict; `json.dumps` writes it as strict JSON.

    Example:
        >>> from engine.detections import Detections
        >>> p = Prediction(Detections([[1.234, 2, 3, 4]], [0.91234567], [0]), ["car"])
        >>> short = prediction_to_json(p, rounded=True, self_contained=False)
        >>> short["boxes"], short["scores"], "class_names" in short
        ([[1.23, 2.0, 3.0, 4.0]], [0.9123], False)
    """
    coordinates, scores = (COORDINATE_DECIMALS, SCORE_DECIMALS) if rounded else (None, None)
    keypoints = prediction.keypoints
    out: dict[str, Any] = {name: _plain(getattr(prediction, name)) for name in PREDICTION_FIELDS}
    if rounded and out.get("latency_ms") is not None:
        out["latency_ms"] = round(float(out["latency_ms"]), LATENCY_DECIMALS)
    out.update(
        boxes=_numbers(prediction.boxes, coordinates),
        scores=_numbers(prediction.scores, scores),
        classes=prediction.classes,
        class_idxs=prediction.class_idxs.tolist(),
        masks=None
        if prediction.masks_rle is None
        else [mask_utils.rle_to_json(m) for m in prediction.masks_rle],
        keypoints=None if keypoints is None else _numbers(keypoints, coordinates),
        num_keypoints=None if keypoints is None else int(keypoints.shape[1]),
        track_ids=None if prediction.track_ids is None else prediction.track_ids.tolist(),
    )
    if self_contained:
        out.update(task=prediction.task, class_names=list(prediction.class_names))
    return out


def prediction_from_json(
    data: Mapping[str, Any], class_names: list[str] | None = None, task: str | None = None
) -> Prediction:
    """Rebuild a prediction from the dict of `prediction_to_json` (or `Prediction.to_dict`).

    Args:
        data: The dict.
        class_names: The model's class list; None uses ``data["class_names"]``, else (an
            object written without them) a list made of the classes named in ``data``,
            indices kept.
        task: The model's task; None uses ``data["task"]`` ("detection" when absent).

    Returns:
        The prediction (without its in-memory image). A key that is absent takes the
        `Prediction` default.

    Example:
        >>> p = prediction_from_json({"name": "a.png", "boxes": [[0, 0, 2, 2]],
        ...                           "scores": [0.5], "class_idxs": [1], "classes": ["dog"]})
        >>> p.class_names, p.classes, p.name
        (['0', 'dog'], ['dog'], 'a.png')
    """
    if class_names is None:
        class_names = data.get("class_names") or _names_from_objects(data)
    n = len(data.get("boxes") or [])
    masks, track_ids = data.get("masks"), data.get("track_ids")
    detections = Detections(
        xyxy=_floats(data.get("boxes")).reshape(n, 4),
        scores=_floats(data.get("scores")),
        class_idxs=np.asarray(data.get("class_idxs") or [], np.int64),
        masks_rle=None
        if masks is None
        else [
            {"size": [int(s) for s in m["size"]], "counts": _counts_bytes(m["counts"])}
            for m in masks
        ],
        keypoints=_keypoints(data, n),
        track_ids=None if track_ids is None else np.asarray(track_ids, np.int64),
    )
    fields = {name: data[name] for name in PREDICTION_FIELDS if name in data}
    for name in ("index", "height", "width"):
        fields[name] = int(data.get(name) or 0)
    return Prediction(
        detections=detections,
        class_names=list(class_names),
        task=task or data.get("task") or "detection",
        **fields,
    )


def _plain(value: Any) -> Any:
    """A numpy scalar as its Python value; a non-finite float as None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _numbers(values: np.ndarray, decimals: int | None) -> list:
    """Nested lists of floats, NaN as None: rounded to ``decimals``, or exact float32 values.

    An exact value is the shortest decimal that reads back as the same float32.
    """
    array = np.asarray(values, np.float32)
    if decimals is None:
        flat = [float(str(v)) if math.isfinite(v) else None for v in array.reshape(-1)]
    else:
        rounded = np.round(array.astype(np.float64), decimals).reshape(-1)
        flat = [float(v) if math.isfinite(v) else None for v in rounded]
    for size in reversed(array.shape[1:]):
        flat = [flat[i : i + size] for i in range(0, len(flat), size)]
    return flat


def _floats(values: Any) -> np.ndarray:
    """float32 array of (nested) JSON numbers, None read as NaN."""
    if values is None:
        return np.zeros((0,), np.float32)
    array = np.asarray(values, dtype=object)
    array[np.equal(array, None)] = np.nan
    return array.astype(np.float32)


def _keypoints(data: Mapping[str, Any], n: int) -> np.ndarray | None:
    values = data.get("keypoints")
    if values is None:
        return None
    k = int(data["num_keypoints"]) if data.get("num_keypoints") is not None else -1
    if n == 0:
        return np.zeros((0, max(k, 0), 3), np.float32)
    return _floats(values).reshape(n, k, 3)


def _counts_bytes(counts: str | bytes) -> bytes:
    return counts.encode("ascii") if isinstance(counts, str) else bytes(counts)


def _names_from_objects(data: Mapping[str, Any]) -> list[str]:
    by_index = dict(zip(data.get("class_idxs") or [], data.get("classes") or []))
    size = max(by_index, default=-1) + 1
    return [by_index.get(i, str(i)) for i in range(size)]
