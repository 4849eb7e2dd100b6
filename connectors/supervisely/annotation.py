"""A `Prediction` as Supervisely annotation JSON, and back (see FORMATS.md, "Supervisely").

Conventions:

- Rectangles hold integer pixel indices with inclusive right/bottom: for an xyxy box
  (x2, y2 exclusive) left = floor(x1), top = floor(y1), right = ceil(x2) - 1,
  bottom = ceil(y2) - 1, clamped to the image with right >= left and bottom >= top.
  Coordinates within 1e-3 of an integer are snapped to it first, so float32 noise does not
  grow a box; integer boxes round-trip exactly (x2 = right + 1 on the way back).
- Masks become "bitmap" objects cropped to the mask's tight bounding box; the PNG is a
  1-bit palette image (black, white; index 0 transparent), as the Supervisely SDK writes
  it. An empty mask falls back to the object's rectangle.
- Keypoints add one "graph" object per instance, class ``"<class>_keypoints"``, with
  nodes keyed by keypoint name (or index as a string) and ``loc`` [x, y] rounded to
  pixels; a keypoint with score <= 0 is marked ``"disabled": true``.
- Every object carries the tag ``{"name": "confidence", "value": round(score, 4)}``.
"""

from __future__ import annotations

import base64
import io
import math
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from engine import masks as mask_utils
from engine.detections import Detections
from engine.visualize import class_color

if TYPE_CHECKING:
    from engine.prediction import Prediction

__all__ = [
    "CONFIDENCE_TAG",
    "bitmap_to_mask",
    "box_to_rectangle",
    "mask_to_bitmap",
    "prediction_to_supervisely",
    "supervisely_meta",
    "supervisely_to_detections",
]

#: The tag meta that holds each object's score.
CONFIDENCE_TAG: dict[str, str] = {
    "name": "confidence",
    "value_type": "any_number",
    "color": "#888888",
}

_TASKS = ("detection", "instance_segmentation", "keypoints", "classification")
_PLACEHOLDERS = {"__background__", "N/A"}


# ---------------------------------------------------------------------- bitmaps
def mask_to_bitmap(mask: np.ndarray) -> dict[str, Any]:
    """Encode a full-image mask as a Supervisely bitmap cropped to its bounding box.

    Args:
        mask: (H, W) array; nonzero pixels belong to the mask.

    Returns:
        ``{"origin": [x, y], "data": base64(zlib(PNG of the cropped mask))}``.

    Raises:
        ValueError: If the mask is not 2-D or has no pixel set.

    Example:
        >>> m = np.zeros((4, 5), bool); m[1:3, 2:4] = True
        >>> mask_to_bitmap(m)["origin"]
        [2, 1]

    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got {mask.shape}")
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        raise ValueError("mask is empty: a bitmap needs at least one pixel")
    crop = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(bool)
    png = Image.fromarray(crop.astype(np.uint8), mode="P")
    png.putpalette([0, 0, 0, 255, 255, 255])
    buf = io.BytesIO()
    png.save(buf, format="PNG", transparency=0)
    data = base64.b64encode(zlib.compress(buf.getvalue())).decode("ascii")
    return {"origin": [int(cols[0]), int(rows[0])], "data": data}


def bitmap_to_mask(bitmap: dict[str, Any], height: int, width: int) -> np.ndarray:
    """Decode a Supervisely bitmap into a full-image boolean mask.

    The PNG may be a palette image with transparency or any image with alpha (the
    alpha channel is the mask), or a grayscale/RGB image (nonzero pixels are the mask).
    Parts that fall outside the image are cut off.

    Args:
        bitmap: ``{"origin": [x, y], "data": "<base64 zlib PNG>"}``.
        height: Image height.
        width: Image width.

    Returns:
        (height, width) bool array.

    Example:
        >>> m = np.zeros((4, 5), bool); m[1:3, 2:4] = True
        >>> bool((bitmap_to_mask(mask_to_bitmap(m), 4, 5) == m).all())
        True

    """
    with Image.open(io.BytesIO(zlib.decompress(base64.b64decode(bitmap["data"])))) as png:
        if png.mode == "P" and "transparency" in png.info:
            png = png.convert("RGBA")
        if png.mode in ("RGBA", "LA", "PA"):
            crop = np.asarray(png.getchannel("A")) > 0
        else:
            crop = np.asarray(png.convert("L")) > 0
    x, y = (int(v) for v in bitmap["origin"])
    canvas = np.zeros((height, width), dtype=bool)
    y0, x0 = max(y, 0), max(x, 0)
    y1, x1 = min(y + crop.shape[0], height), min(x + crop.shape[1], width)
    if y1 > y0 and x1 > x0:
        canvas[y0:y1, x0:x1] = crop[y0 - y : y1 - y, x0 - x : x1 - x]
    return canvas


# ---------------------------------------------------------------------- prediction -> JSON
def prediction_to_supervisely(
    prediction: Prediction,
    task: str | None = None,
    keypoint_names: list[str] | None = None,
) -> dict[str, Any]:
    """Return a prediction as a Supervisely annotation dict (JSON-serialisable).

    Objects are rectangles, or bitmaps when the prediction has masks (see the module
    docstring for the exact rules), each tagged with its confidence; keypoints add a
    ``"<class>_keypoints"`` graph object per instance. With ``task="classification"`` the
    classes become image-level tags ``{"name": class, "value": score}`` and there are no
    objects.

    Args:
        prediction: The prediction to convert.
        task: The model's task; only "classification" changes the output.
        keypoint_names: Names of the K keypoints, used as graph node keys (default: the
            keypoint indices as strings).

    Returns:
        ``{"description": "", "size": {...}, "tags": [...], "objects": [...]}``.

    Raises:
        ValueError: If the prediction has an ``error`` or ``task`` is unknown.

    Example:
        >>> ann = prediction_to_supervisely(prediction)               # doctest: +SKIP
        >>> ann["objects"][0]["points"]["exterior"]                   # doctest: +SKIP
        [[10, 20], [49, 79]]

    """
    _check_task(task)
    if prediction.error is not None:
        raise ValueError(
            f"cannot convert prediction {prediction.name!r}: it failed with error: "
            f"{prediction.error}"
        )
    height, width = int(prediction.height), int(prediction.width)
    annotation: dict[str, Any] = {
        "description": "",
        "size": {"height": height, "width": width},
        "tags": [],
        "objects": [],
    }
    classes, scores = prediction.classes, [round(float(s), 4) for s in prediction.scores]
    if task == "classification":
        annotation["tags"] = [{"name": c, "value": s} for c, s in zip(classes, scores, strict=True)]
        return annotation

    masks = prediction.masks if prediction.masks_rle is not None else None
    objects = annotation["objects"]
    for i, box in enumerate(prediction.boxes):
        obj: dict[str, Any] = {
            "classTitle": classes[i],
            "tags": [{"name": "confidence", "value": scores[i]}],
        }
        if masks is not None and masks[i].any():
            obj.update(geometryType="bitmap", bitmap=mask_to_bitmap(masks[i]))
        else:
            left, top, right, bottom = box_to_rectangle(box, height, width)
            obj.update(
                geometryType="rectangle",
                points={"exterior": [[left, top], [right, bottom]], "interior": []},
            )
        objects.append(obj)
    if prediction.keypoints is not None:
        for i, points in enumerate(prediction.keypoints):
            objects.append(_graph_object(classes[i], scores[i], points, keypoint_names))
    return annotation


def box_to_rectangle(box: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """Return the inclusive pixel rectangle (left, top, right, bottom) of an xyxy box.

    Args:
        box: x1, y1, x2, y2 with x2, y2 exclusive.
        height: Image height (no clamping when 0).
        width: Image width (no clamping when 0).

    Returns:
        Integer left, top, right, bottom with right >= left and bottom >= top.

    Example:
        >>> box_to_rectangle(np.array([10, 20, 50, 80]), 100, 100)
        (10, 20, 49, 79)

    """
    x1, y1, x2, y2 = (_snap(v) for v in box)
    left, top = math.floor(x1), math.floor(y1)
    right, bottom = math.ceil(x2) - 1, math.ceil(y2) - 1
    if width > 0:
        left, right = min(max(left, 0), width - 1), min(max(right, 0), width - 1)
    if height > 0:
        top, bottom = min(max(top, 0), height - 1), min(max(bottom, 0), height - 1)
    return left, top, max(right, left), max(bottom, top)


def _snap(value: float) -> float:
    value = float(value)
    nearest = round(value)
    return float(nearest) if abs(value - nearest) < 1e-3 else value


def _graph_object(
    class_name: str, score: float, points: np.ndarray, keypoint_names: list[str] | None
) -> dict[str, Any]:
    if keypoint_names is not None and len(keypoint_names) != len(points):
        raise ValueError(
            f"keypoint_names has {len(keypoint_names)} names but the prediction has "
            f"{len(points)} keypoints per object"
        )
    nodes: dict[str, Any] = {}
    for k, (x, y, kp_score) in enumerate(points):
        node: dict[str, Any] = {"loc": [_pixel(x), _pixel(y)]}
        if not kp_score > 0:
            node["disabled"] = True
        nodes[keypoint_names[k] if keypoint_names is not None else str(k)] = node
    return {
        "classTitle": f"{class_name}_keypoints",
        "geometryType": "graph",
        "tags": [{"name": "confidence", "value": score}],
        "nodes": nodes,
    }


def _pixel(value: float) -> int:
    return int(round(float(value))) if math.isfinite(value) else 0


# ---------------------------------------------------------------------- JSON -> detections
def supervisely_to_detections(annotation: dict[str, Any], class_names: list[str]) -> Detections:
    """Read the rectangle and bitmap objects of a Supervisely annotation back.

    Rectangles give boxes (x2 = right + 1, y2 = bottom + 1); a bitmap gives its mask and
    the mask's tight box. When any object is a bitmap, every object gets a mask (a
    rectangle's mask is its filled box). Other geometries (graph, polygon, point, ...) are
    skipped. The "confidence" tag gives the score (1.0 without one).

    Args:
        annotation: A Supervisely annotation dict.
        class_names: The class list that ``class_idxs`` index into.

    Returns:
        The objects as `Detections` in the annotation's image size.

    Raises:
        ValueError: If an object's class is not in ``class_names``.

    Example:
        >>> ann = prediction.annotation                                   # doctest: +SKIP
        >>> d = supervisely_to_detections(ann, prediction.class_names)    # doctest: +SKIP

    """
    height, width = int(annotation["size"]["height"]), int(annotation["size"]["width"])
    index = {name: i for i, name in reversed(list(enumerate(class_names)))}
    boxes, scores, class_idxs, masks = [], [], [], []
    for obj in annotation.get("objects", []):
        geometry = obj.get("geometryType")
        if geometry not in ("rectangle", "bitmap"):
            continue
        title = obj["classTitle"]
        if title not in index:
            raise ValueError(f"class {title!r} of the annotation is not in class_names")
        if geometry == "rectangle":
            (ax, ay), (bx, by) = obj["points"]["exterior"][:2]
            left, right = sorted((int(round(ax)), int(round(bx))))
            top, bottom = sorted((int(round(ay)), int(round(by))))
            box = [left, top, right + 1, bottom + 1]
            mask = None
        else:
            mask = bitmap_to_mask(obj["bitmap"], height, width)
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            box = [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1] if len(rows) else [0, 0, 0, 0]
        tags = {t.get("name"): t.get("value") for t in obj.get("tags", [])}
        confidence = tags.get("confidence")
        boxes.append(box)
        scores.append(1.0 if confidence is None else float(confidence))
        class_idxs.append(index[title])
        masks.append(mask)
    masks_rle = None
    if any(m is not None for m in masks):
        stack = np.zeros((len(masks), height, width), dtype=bool)
        for i, (m, (x1, y1, x2, y2)) in enumerate(zip(masks, boxes, strict=True)):
            if m is not None:
                stack[i] = m
            else:
                stack[i, max(y1, 0) : y2, max(x1, 0) : x2] = True
        masks_rle = mask_utils.encode_masks(stack)
    return Detections(
        xyxy=np.asarray(boxes, np.float32).reshape(-1, 4),
        scores=np.asarray(scores, np.float32),
        class_idxs=np.asarray(class_idxs, np.int64),
        masks_rle=masks_rle,
    )


# ---------------------------------------------------------------------- meta.json
def supervisely_meta(
    class_names: list[str],
    task: str = "detection",
    keypoint_names: list[str] | None = None,
) -> dict[str, Any]:
    """Return a Supervisely project meta (meta.json) for a model's classes.

    Placeholder names ("__background__", "N/A") and repeated names are skipped. Each
    class gets the color `engine.visualize.class_color` gives its index, as "#RRGGBB".
    Shapes are "rectangle" ("bitmap" for instance_segmentation); with ``keypoint_names``
    each class also gets a ``"<class>_keypoints"`` graph class whose template holds one
    node per keypoint. For classification the classes are number-valued tag metas
    (image-level tags) instead of object classes. The "confidence" tag is always there.

    Args:
        class_names: The model's class list.
        task: "detection", "instance_segmentation", "keypoints" or "classification".
        keypoint_names: Names of the keypoints, for the graph classes.

    Returns:
        ``{"classes": [...], "tags": [...]}``.

    Raises:
        ValueError: If ``task`` is unknown.

    Example:
        >>> supervisely_meta(["__background__", "car"])["classes"][0]["title"]
        'car'

    """
    _check_task(task)
    names = _named_classes(class_names)
    colors = {name: "#{:02X}{:02X}{:02X}".format(*class_color(i)) for i, name in names}
    if task == "classification":
        tags = [{"name": n, "value_type": "any_number", "color": colors[n]} for _, n in names]
        return {"classes": [], "tags": [dict(CONFIDENCE_TAG), *tags]}
    shape = "bitmap" if task == "instance_segmentation" else "rectangle"
    classes: list[dict[str, Any]] = [
        {"title": n, "shape": shape, "color": colors[n]} for _, n in names
    ]
    if keypoint_names is not None:
        template = {
            "nodes": {
                str(k): {"label": str(k), "loc": [10 * i, 0], "color": "#FFFFFF"}
                for i, k in enumerate(keypoint_names)
            },
            "edges": [],
        }
        classes += [
            {
                "title": f"{n}_keypoints",
                "shape": "graph",
                "color": colors[n],
                "geometry_config": template,
            }
            for _, n in names
        ]
    return {"classes": classes, "tags": [dict(CONFIDENCE_TAG)]}


def _named_classes(class_names: list[str]) -> list[tuple[int, str]]:
    seen: set[str] = set()
    out = []
    for i, name in enumerate(class_names):
        if name in _PLACEHOLDERS or name in seen:
            continue
        seen.add(name)
        out.append((i, name))
    return out


def _check_task(task: str | None) -> None:
    if task is not None and task not in _TASKS:
        raise ValueError(f"task must be one of {', '.join(_TASKS)}, got {task!r}")
