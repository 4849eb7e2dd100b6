"""Predictions to and from the ``supervision`` package's ``Detections`` (optional extra).

``pip install tessera[supervision]``. Boxes, scores, class ids, masks (as (N, H, W) bool)
and track ids go across; class names travel in ``data["class_name"]``, as supervision's
own converters put them, so its annotators' labels read them. Keypoints have their own
type in supervision (``KeyPoints``) and stay on the Prediction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from engine.detections import Detections
from engine.masks import encode_masks

if TYPE_CHECKING:
    import supervision

    from engine.prediction import Prediction

__all__ = ["from_supervision", "to_supervision"]

#: The ``data`` key that carries class names, as supervision names it.
CLASS_NAME_KEY = "class_name"


def _supervision() -> Any:
    try:
        import supervision
    except ImportError as exc:
        raise ImportError(
            "the supervision package is not installed: pip install 'tessera[supervision]'"
        ) from exc
    return supervision


def to_supervision(prediction: Prediction) -> supervision.Detections:
    """The prediction's objects as ``supervision.Detections``.

    Raises:
        ImportError: supervision is not installed.
        ValueError: The prediction failed (its ``error`` says why).
    """
    sv = _supervision()
    if prediction.error is not None:
        raise ValueError(f"{prediction.name}: no objects to convert: {prediction.error}")
    detections = prediction.detections
    masks = prediction.masks
    return sv.Detections(
        xyxy=detections.xyxy.astype(np.float32),
        confidence=detections.scores.astype(np.float32),
        class_id=detections.class_idxs.astype(int),
        mask=None if masks is None else masks.astype(bool),
        tracker_id=None if detections.track_ids is None else detections.track_ids.astype(int),
        data={CLASS_NAME_KEY: np.array(prediction.classes, dtype=object)},
    )


def from_supervision(
    detections: supervision.Detections,
    class_names: list[str],
    **origin: Any,
) -> Prediction:
    """A Prediction holding ``supervision.Detections`` (e.g. after its filters or zones).

    Args:
        detections: supervision's detections; ``class_id`` indexes ``class_names``, and
            ``confidence`` may be None (scores of 1).
        class_names: The class list.
        **origin: The Prediction's other fields (``name``, ``path``, ``height``,
            ``width``, ``task``...); with masks, ``height`` and ``width`` default to the
            masks' size.

    Raises:
        ValueError: No ``class_id``, or an id outside ``class_names``.
    """
    from engine.prediction import Prediction

    count = len(detections.xyxy)
    if detections.class_id is None:
        raise ValueError("supervision detections without class_id: set class_id to use them")
    class_ids = np.asarray(detections.class_id, dtype=np.int64)
    outside = class_ids[(class_ids < 0) | (class_ids >= len(class_names))]
    if outside.size:
        raise ValueError(
            f"class_id {int(outside[0])} is outside the {len(class_names)} class names given"
        )
    scores = np.ones(count) if detections.confidence is None else detections.confidence
    masks_rle = None
    if detections.mask is not None:
        origin.setdefault("height", int(detections.mask.shape[1]))
        origin.setdefault("width", int(detections.mask.shape[2]))
        masks_rle = encode_masks(np.asarray(detections.mask, dtype=bool))
    ours = Detections(
        xyxy=np.asarray(detections.xyxy, dtype=np.float32),
        scores=np.asarray(scores, dtype=np.float32),
        class_idxs=class_ids,
        masks_rle=masks_rle,
        track_ids=None if detections.tracker_id is None else np.asarray(detections.tracker_id),
    )
    if masks_rle is not None:
        origin.setdefault("task", "instance_segmentation")
    return Prediction(ours, list(class_names), **origin)
