"""A prediction as one line of JSON (NDJSON), and back.

A line is `Prediction.to_dict()` with, in addition, ``task``, ``class_names`` (so the
line alone rebuilds the prediction) and, with keypoints, ``num_keypoints``; and with
``boxes``, ``scores`` and ``keypoints`` written at full float32 precision (each value in
its shortest form that reads back as the same float32) instead of rounded, so the round
trip is exact. Non-finite numbers are written as null and read back as NaN, so every line
is strict JSON.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from engine.detections import Detections
from engine.prediction import Prediction

__all__ = [
    "prediction_from_json",
    "prediction_from_jsonl",
    "prediction_to_json",
    "prediction_to_jsonl",
]


def prediction_to_json(prediction: Prediction) -> dict[str, Any]:
    """Return a prediction as a JSON-serialisable dict (see the module docstring).

    Args:
        prediction: The prediction, with or without ``error``.

    Returns:
        `Prediction.to_dict` plus ``task`` and ``class_names``, numbers exact.

    Example:
        >>> from engine.detections import Detections
        >>> p = Prediction(Detections([[1.5, 2, 3, 4]], [0.9], [0]), ["car"], name="a.jpg")
        >>> prediction_to_json(p)["boxes"]
        [[1.5, 2.0, 3.0, 4.0]]

    """
    out = prediction.to_dict()
    out["boxes"] = _exact(prediction.boxes)
    out["scores"] = _exact(prediction.scores)
    if prediction.keypoints is not None:
        out["keypoints"] = _exact(prediction.keypoints)
        out["num_keypoints"] = int(prediction.keypoints.shape[1])
    if out.get("timestamp") is not None and not math.isfinite(out["timestamp"]):
        out["timestamp"] = None
    out["task"] = prediction.task
    out["class_names"] = list(prediction.class_names)
    return out


def prediction_to_jsonl(prediction: Prediction) -> str:
    """Return a prediction as one line of strict JSON, without the line break.

    Args:
        prediction: The prediction.

    Returns:
        The compact JSON text of `prediction_to_json`.

    Example:
        >>> line = prediction_to_jsonl(prediction)                   # doctest: +SKIP
        >>> prediction_from_jsonl(line).boxes                        # doctest: +SKIP

    """
    return json.dumps(prediction_to_json(prediction), separators=(",", ":"), allow_nan=False)


def prediction_from_json(data: dict[str, Any], class_names: list[str] | None = None) -> Prediction:
    """Rebuild a prediction from the dict of `prediction_to_json` (or `Prediction.to_dict`).

    Args:
        data: The dict.
        class_names: The class list; None uses ``data["class_names"]``, else (a plain
            ``to_dict``) a list made of the classes named in ``data``, indices kept.

    Returns:
        The prediction (without its in-memory image).

    Example:
        >>> p2 = prediction_from_json(prediction_to_json(p))         # doctest: +SKIP

    """
    if class_names is None:
        class_names = data.get("class_names") or _names_from_objects(data)
    n = len(data.get("boxes") or [])
    masks = data.get("masks")
    keypoints = data.get("keypoints")
    track_ids = data.get("track_ids")
    detections = Detections(
        xyxy=_array(data.get("boxes"), np.float32).reshape(n, 4),
        scores=_array(data.get("scores"), np.float32),
        class_idxs=np.asarray(data.get("class_idxs") or [], np.int64),
        masks_rle=None
        if masks is None
        else [{"size": list(m["size"]), "counts": _counts_bytes(m["counts"])} for m in masks],
        keypoints=None if keypoints is None else _keypoints(keypoints, n, data),
        track_ids=None if track_ids is None else np.asarray(track_ids, np.int64),
    )
    return Prediction(
        detections=detections,
        class_names=list(class_names),
        source=data.get("source", "array"),
        name=data.get("name", ""),
        path=data.get("path"),
        url=data.get("url"),
        dataset=data.get("dataset"),
        frame_index=data.get("frame_index"),
        timestamp=data.get("timestamp"),
        height=int(data.get("height") or 0),
        width=int(data.get("width") or 0),
        error=data.get("error"),
        index=int(data.get("index") or 0),
        task=data.get("task", "detection"),
    )


def prediction_from_jsonl(line: str, class_names: list[str] | None = None) -> Prediction:
    """Rebuild a prediction from one line that `prediction_to_jsonl` wrote.

    Args:
        line: The JSON text (a trailing line break is fine).
        class_names: As in `prediction_from_json`.

    Returns:
        The prediction.

    Raises:
        ValueError: If the line is not a JSON object.

    Example:
        >>> with open("predictions.jsonl") as f:                     # doctest: +SKIP
        ...     predictions = [prediction_from_jsonl(line) for line in f]

    """
    data = json.loads(line)
    if not isinstance(data, dict):
        raise ValueError(f"a prediction line must hold a JSON object, got {type(data).__name__}")
    return prediction_from_json(data, class_names)


def _exact(values: np.ndarray) -> list:
    """Nested lists of floats that read back as the same float32 values (None for NaN)."""
    flat = [
        float(str(v)) if math.isfinite(v) else None
        for v in np.asarray(values, np.float32).reshape(-1)
    ]
    shape = np.shape(values)
    for size in reversed(shape[1:]):
        flat = [flat[i : i + size] for i in range(0, len(flat), size)]
    return flat


def _array(values: Any, dtype: type) -> np.ndarray:
    if values is None:
        return np.zeros((0,), dtype)
    array = np.asarray(values, dtype=object)
    array[np.equal(array, None)] = np.nan
    return array.astype(dtype)


def _keypoints(values: Any, n: int, data: dict[str, Any]) -> np.ndarray:
    k = int(data["num_keypoints"]) if data.get("num_keypoints") is not None else -1
    if n == 0:
        return np.zeros((0, max(k, 0), 3), np.float32)
    return _array(values, np.float32).reshape(n, k, 3)


def _counts_bytes(counts: str | bytes) -> bytes:
    return counts.encode("ascii") if isinstance(counts, str) else bytes(counts)


def _names_from_objects(data: dict[str, Any]) -> list[str]:
    pairs = zip(data.get("class_idxs") or [], data.get("classes") or [])
    by_index = dict(pairs)
    size = max(by_index, default=-1) + 1
    return [by_index.get(i, str(i)) for i in range(size)]
