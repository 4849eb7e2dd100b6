"""The Acme annotation JSON: pure functions between `Prediction` and Acme, no Ray.

One image's annotation::

    {"image": "street.png", "objects": [{"label": "car", "box": [x1, y1, x2, y2], "score": 0.93}]}

Boxes are in image pixels (x2, y2 exclusive), rounded to 2 decimals; scores to 4. Acme
holds boxes only: masks and keypoints are not written.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.detections import Detections
from engine.prediction import Prediction

__all__ = ["AcmeFormat", "acme_to_detections", "prediction_to_acme"]


def prediction_to_acme(prediction: Prediction) -> dict[str, Any]:
    """Return ``prediction`` as an Acme annotation.

    Example:
        >>> from engine.detections import Detections
        >>> det = Detections(np.array([[1, 2, 30, 40]], np.float32), np.array([0.9]),
        ...                  np.array([0]))
        >>> prediction_to_acme(Prediction(det, ["car"], name="a.png"))["objects"]
        [{'label': 'car', 'box': [1.0, 2.0, 30.0, 40.0], 'score': 0.9}]
    """
    boxes = np.round(prediction.boxes.astype(np.float64), 2).tolist()
    scores = np.round(prediction.scores.astype(np.float64), 4).tolist()
    objects = [
        {"label": label, "box": box, "score": score}
        for label, box, score in zip(prediction.classes, boxes, scores)
    ]
    return {"image": prediction.name, "objects": objects}


def acme_to_detections(annotation: dict[str, Any], class_names: list[str]) -> Detections:
    """Read an Acme annotation back into `Detections` (``class_idxs`` index ``class_names``).

    Raises:
        ValueError: The annotation is malformed or names a label not in ``class_names``.

    Example:
        >>> acme_to_detections({"image": "a.png", "objects": [
        ...     {"label": "car", "box": [1, 2, 30, 40], "score": 0.9}]}, ["car"]).xyxy.tolist()
        [[1.0, 2.0, 30.0, 40.0]]
    """
    objects = annotation.get("objects")
    if not isinstance(objects, list):
        raise ValueError("an Acme annotation needs an 'objects' list")
    index = {name: i for i, name in enumerate(class_names)}
    boxes, scores, labels = [], [], []
    for number, obj in enumerate(objects):
        label, box = obj.get("label"), obj.get("box")
        if label not in index:
            raise ValueError(f"object {number}: label {label!r} is not one of {class_names}")
        if not isinstance(box, list) or len(box) != 4:
            raise ValueError(f"object {number}: 'box' must be [x1, y1, x2, y2], got {box!r}")
        boxes.append([float(v) for v in box])
        scores.append(float(obj.get("score", 1.0)))
        labels.append(index[label])
    return Detections(
        np.array(boxes, np.float32).reshape(-1, 4),
        np.array(scores, np.float32),
        np.array(labels, np.int64),
    )


class AcmeFormat:
    """The Acme image annotation format (an `engine.plugins.AnnotationFormat`)."""

    def encode(self, prediction: Prediction) -> dict[str, Any]:
        """Return ``prediction`` as Acme JSON (see `prediction_to_acme`)."""
        return prediction_to_acme(prediction)

    def decode(self, annotation: dict[str, Any], class_names: list[str]) -> Detections:
        """Read Acme JSON back into `Detections` (see `acme_to_detections`)."""
        return acme_to_detections(annotation, class_names)

    def __repr__(self) -> str:
        return "AcmeFormat()"
