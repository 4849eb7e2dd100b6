"""Supervisely project meta and annotations as a project writer and the uploader need them.

The image annotation converters are in `connectors.supervisely.annotation`; this module
adds:

- `meta_for`: the project meta for a model, valid for every object the converters write.
  The converters write an instance whose mask is empty as a ``rectangle`` while
  `supervisely_meta` declares the classes of segmentation models as ``bitmap``, and
  Supervisely rejects an object whose geometry does not match its class. `meta_for`
  declares those classes with shape ``"any"`` (Supervisely's ``AnyGeometry``), which
  accepts both, so a mask model's rectangles and bitmaps live in one class of that name.
- `check_annotation`: the same rule Supervisely applies, offline.
- `prediction_from_supervisely`: an annotation back into a `Prediction`.
- `prediction_to_annotation`: a prediction's annotation, the task read from it.
"""

from __future__ import annotations

from typing import Any

from connectors.supervisely.annotation import (
    prediction_to_supervisely,
    supervisely_meta,
    supervisely_to_detections,
)
from engine.prediction import Prediction

__all__ = [
    "ANY_SHAPE",
    "check_annotation",
    "check_task",
    "meta_for",
    "prediction_from_supervisely",
    "prediction_to_annotation",
]

#: The class shape that accepts every geometry (Supervisely's ``AnyGeometry``).
ANY_SHAPE = "any"


# ---------------------------------------------------------------------- converters
def prediction_to_annotation(
    prediction: Prediction, task: str | None = None, keypoint_names: list[str] | None = None
) -> dict[str, Any]:
    """Return a prediction as a Supervisely annotation dict (see `prediction_to_supervisely`).

    Args:
        prediction: A prediction without ``error``.
        task: The model's task; None uses ``prediction.task``.
        keypoint_names: Names of the keypoints, the graph nodes' keys (default "0", "1"...).

    Returns:
        ``{"description": "", "size": {...}, "tags": [...], "objects": [...]}``, valid
        against ``meta_for(prediction.class_names, task)``.

    Raises:
        ValueError: If the prediction has an ``error`` or the task is unknown.

    Example:
        >>> ann = prediction_to_annotation(prediction)            # doctest: +SKIP
        >>> ann["objects"][0]["geometryType"]                      # doctest: +SKIP
        'rectangle'

    """
    return prediction_to_supervisely(
        prediction,
        task=task if task is not None else prediction.task,
        keypoint_names=keypoint_names,
    )


def prediction_from_supervisely(
    annotation: dict[str, Any],
    class_names: list[str],
    name: str = "",
    path: str | None = None,
    dataset: str | None = None,
    source: str = "supervisely",
    index: int = 0,
    task: str | None = None,
) -> Prediction:
    """Build a `Prediction` from a Supervisely annotation.

    Rectangles and bitmaps become detections (see `supervisely_to_detections`); other
    geometries and image tags are not read. The size comes from the annotation.

    Args:
        annotation: A Supervisely annotation dict.
        class_names: The model's class list.
        name: The image's name.
        path: The image's local path, if any.
        dataset: The dataset the image belongs to ("parent/child" when nested).
        source: What the item came from.
        index: Position of the item.
        task: The task to record; None gives "instance_segmentation" when the
            annotation holds a bitmap, else "detection".

    Returns:
        The prediction, without ``error``.

    Raises:
        ValueError: If an object's class is not in ``class_names``.

    Example:
        >>> p = prediction_from_supervisely(ann, ["car"], name="a.jpg")   # doctest: +SKIP
        >>> p.boxes                                                       # doctest: +SKIP

    """
    detections = supervisely_to_detections(annotation, class_names)
    if task is None:
        task = "instance_segmentation" if detections.masks_rle is not None else "detection"
    return Prediction(
        detections=detections,
        class_names=list(class_names),
        source=source,
        name=name,
        path=path,
        dataset=dataset,
        height=int(annotation["size"]["height"]),
        width=int(annotation["size"]["width"]),
        index=index,
        task=task,
    )


# ---------------------------------------------------------------------- meta
def check_task(task: str) -> None:
    """Raise ValueError unless ``task`` is a task the Supervisely converters know.

    Args:
        task: "detection", "instance_segmentation", "keypoints" or "classification".

    Raises:
        ValueError: Naming the valid tasks.

    Example:
        >>> check_task("detection")

    """
    supervisely_meta([], task)  # validates the task; the meta itself is not used


def meta_for(
    class_names: list[str],
    task: str = "detection",
    keypoint_names: list[str] | None = None,
    num_keypoints: int | None = None,
) -> dict[str, Any]:
    """Return the project meta (meta.json) under which every object of a model is valid.

    Like `supervisely_meta`, except that the object classes of an
    ``instance_segmentation`` model get the shape ``"any"``: such a model's instance is a
    bitmap, or a rectangle when its mask is empty, and only ``"any"`` accepts both.
    Detection classes stay ``"rectangle"``. Keypoint graph classes are added when
    ``keypoint_names`` or ``num_keypoints`` is given (nodes named "0", "1"... for the
    latter, as `prediction_to_annotation` names them without names).

    Args:
        class_names: The model's class list (placeholders and repeats are skipped).
        task: "detection", "instance_segmentation", "keypoints" or "classification".
        keypoint_names: Names of the keypoints, for the ``"<class>_keypoints"`` classes.
        num_keypoints: Number of keypoints, when they have no names.

    Returns:
        ``{"classes": [...], "tags": [...]}`` holding the ``confidence`` tag.

    Raises:
        ValueError: If ``task`` is unknown.

    Example:
        >>> meta_for(["car"], "instance_segmentation")["classes"][0]["shape"]
        'any'

    """
    if keypoint_names is None and num_keypoints:
        keypoint_names = [str(k) for k in range(num_keypoints)]
    meta = supervisely_meta(list(class_names), task, keypoint_names)
    if task == "instance_segmentation":
        for cls in meta["classes"]:
            if cls["shape"] in ("bitmap", "rectangle"):
                cls["shape"] = ANY_SHAPE
    return meta


def check_annotation(annotation: dict[str, Any], meta: dict[str, Any]) -> None:
    """Check an annotation against a project meta, as Supervisely does on upload.

    Every object's class must be declared, with the object's geometry as its shape (or
    shape ``"any"``); every tag (object or image) must be declared.

    Args:
        annotation: A Supervisely annotation dict.
        meta: A project meta dict.

    Raises:
        ValueError: Listing every object or tag that the meta does not accept.

    Example:
        >>> check_annotation(prediction_to_annotation(p), meta_for(p.class_names, p.task))
        ... # doctest: +SKIP

    """
    shapes = {c["title"]: c["shape"] for c in meta.get("classes", [])}
    tag_names = {t["name"] for t in meta.get("tags", [])}
    problems = []
    for tag in annotation.get("tags", []):
        if tag.get("name") not in tag_names:
            problems.append(f"image tag {tag.get('name')!r} is not in the meta")
    for i, obj in enumerate(annotation.get("objects", [])):
        title, geometry = obj.get("classTitle"), obj.get("geometryType")
        if title not in shapes:
            problems.append(f"object {i}: class {title!r} is not in the meta")
        elif shapes[title] not in (geometry, ANY_SHAPE):
            problems.append(
                f"object {i}: geometry {geometry!r} does not match class {title!r} "
                f"of shape {shapes[title]!r}"
            )
        for tag in obj.get("tags", []):
            if tag.get("name") not in tag_names:
                problems.append(f"object {i}: tag {tag.get('name')!r} is not in the meta")
    if problems:
        raise ValueError("annotation does not match the project meta: " + "; ".join(problems))
