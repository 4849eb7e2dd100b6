"""A prediction as one line of JSON (NDJSON), and back.

A line is the self-contained, exact JSON of `engine.prediction_json.prediction_to_json`:
origin, size, error and every object, with ``task`` and ``class_names`` (so the line alone
rebuilds the prediction) and ``boxes``, ``scores`` and ``keypoints`` at full float32
precision, so the round trip is exact. Non-finite numbers are written as null and read
back as NaN, so every line is strict JSON.
"""

from __future__ import annotations

import json

from engine.prediction import Prediction
from engine.prediction_json import prediction_from_json, prediction_to_json

__all__ = [
    "prediction_from_json",
    "prediction_from_jsonl",
    "prediction_to_json",
    "prediction_to_jsonl",
]


def prediction_to_jsonl(prediction: Prediction) -> str:
    """Return a prediction as one line of strict JSON, without the line break.

    Args:
        prediction: The prediction, with or without ``error``.

    Returns:
        The compact JSON text of `prediction_to_json` (exact, self-contained).

    Example:
        >>> from engine.detections import Detections
        >>> p = Prediction(Detections([[1.5, 2, 3, 4]], [0.9], [0]), ["car"], name="a.jpg")
        >>> prediction_from_jsonl(prediction_to_jsonl(p)).boxes.tolist()
        [[1.5, 2.0, 3.0, 4.0]]

    """
    return json.dumps(prediction_to_json(prediction), separators=(",", ":"), allow_nan=False)


def prediction_from_jsonl(line: str, class_names: list[str] | None = None) -> Prediction:
    """Rebuild a prediction from one line that `prediction_to_jsonl` wrote.

    Args:
        line: The JSON text (a trailing line break is fine).
        class_names: As in `prediction_from_json`; None uses the line's own.

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
