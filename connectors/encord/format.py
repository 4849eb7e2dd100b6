"""Encord label JSON: pure functions between `Prediction` and Encord's label rows, no Ray.

An Encord label row (the shape `encord.objects.LabelRowV2.to_encord_dict` gives) holds, per
data unit, ``labels.objects``: object instances with the ontology feature they belong to
(``featureHash``, ``name``, ``shape``), a ``confidence``, ``manualAnnotation: false`` for a
model's work, and their geometry normalised to 0..1 of the media's size::

    "boundingBox": {"x": left / W, "y": top / H, "w": width / W, "h": height / H}
    "bitmask": {"top": 0, "left": 0, "height": H, "width": W, "rleString": "..."}

A classifier's prediction is one classification instance in ``classification_answers``:
the answer of a radio attribute whose options are the model's classes (the top class,
with its score as ``confidence``).

Boxes come from ``prediction.boxes`` (pixels, x2 and y2 exclusive); an object of a
``bitmask`` feature carries the instance mask (the media's size, Encord's row-major RLE).
Object hashes are derived from a prefix and the object's index (`object_hash`), so that an
uploader recognises (and rewrites) the objects a job wrote before.

Example:
    >>> from engine.detections import Detections
    >>> det = Detections(np.array([[8, 6, 40, 30]]), np.array([0.9]), np.array([0]))
    >>> p = Prediction(det, ["red"], name="a.png", height=60, width=80)
    >>> features = features_for_task(["red"], "detection")
    >>> obj = prediction_objects(p, features, "ab12", created_at="T")[0]
    >>> obj["boundingBox"], obj["confidence"], obj["manualAnnotation"]
    ({'x': 0.1, 'y': 0.1, 'w': 0.4, 'h': 0.4}, 0.9, False)
"""

from __future__ import annotations

import datetime
import hashlib
import re
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.detections import Detections
from engine.prediction import Prediction

__all__ = [
    "BRANCH_NAME",
    "Classifier",
    "Feature",
    "bitmask_rle",
    "box_iou",
    "branch_name_error",
    "classifier_for_classes",
    "encord_time",
    "features_for_task",
    "label_row",
    "match_classifier",
    "match_features",
    "object_box",
    "object_hash",
    "objects_to_detections",
    "ontology_structure",
    "prediction_classification",
    "prediction_objects",
    "shapes_for_task",
    "video_classification_hash",
    "video_object_hash",
]

#: What a branch name may hold (Encord's rule; case sensitive).
BRANCH_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
#: Colours given to exported ontology objects, in turn.
_COLOURS = ("#D33115", "#E27300", "#FCC400", "#B0BC00", "#68BC00", "#16A5A5", "#009CE0")
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Feature:
    """One ontology object a model class maps to.

    Attributes:
        name: The object's title (the model's class name).
        shape: ``bounding_box`` or ``bitmask``.
        feature_hash: The ontology's ``featureNodeHash`` of the object.
        color: The object's colour.
    """

    name: str
    shape: str
    feature_hash: str
    color: str = "#D33115"


@dataclass(frozen=True)
class Classifier:
    """The ontology classification a classifier's classes map to: one radio attribute.

    Attributes:
        feature_hash: The classification's ``featureNodeHash``.
        attribute: The radio attribute's name.
        attribute_hash: Its ``featureNodeHash``.
        options: Class name -> the option's ``featureNodeHash``.
    """

    feature_hash: str
    attribute: str
    attribute_hash: str
    options: dict[str, str]


def _hash8(*parts: str) -> str:
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()[:8]


def classifier_for_classes(class_names: list[str], attribute: str = "class") -> Classifier:
    """A radio classification of ``class_names`` (for an export); stable hashes.

    Example:
        >>> sorted(classifier_for_classes(["cat", "dog"]).options)
        ['cat', 'dog']
    """
    return Classifier(
        _hash8("classification", attribute),
        attribute,
        _hash8("attribute", attribute),
        {name: _hash8("option", attribute, name) for name in class_names},
    )


def match_classifier(
    class_names: list[str], ontology_classifications: list[dict[str, Any]]
) -> Classifier:
    """The project's radio classification whose options hold every model class.

    Raises:
        ValueError: None does; the message lists the classes and the radio options found.

    Example:
        >>> ontology = [{"featureNodeHash": "c1", "attributes": [{"name": "kind",
        ...     "type": "radio", "featureNodeHash": "a1",
        ...     "options": [{"label": "cat", "featureNodeHash": "o1"}]}]}]
        >>> match_classifier(["cat"], ontology).options
        {'cat': 'o1'}
    """
    found: list[str] = []
    for classification in ontology_classifications:
        for attribute in classification.get("attributes", []):
            if attribute.get("type") != "radio":
                continue
            options = {o.get("label"): str(o.get("featureNodeHash")) for o in attribute["options"]}
            found.append(f"{attribute.get('name')}: {sorted(map(str, options))}")
            if all(name in options for name in class_names):
                return Classifier(
                    str(classification["featureNodeHash"]),
                    str(attribute.get("name")),
                    str(attribute["featureNodeHash"]),
                    {name: options[name] for name in class_names},
                )
    raise ValueError(
        "the Encord ontology has no radio classification whose options hold every model "
        f"class; model classes: {class_names}; radio classifications: {found or 'none'}"
    )


def shapes_for_task(task: str) -> tuple[str, ...]:
    """The Encord shapes a model of ``task`` can fill, the preferred first.

    Example:
        >>> shapes_for_task("instance_segmentation")
        ('bitmask', 'bounding_box')
    """
    if task == "instance_segmentation":
        return ("bitmask", "bounding_box")
    return ("bounding_box",)


def branch_name_error(name: object) -> str | None:
    """Why ``name`` cannot be a prediction branch, or None when it can.

    Example:
        >>> branch_name_error("model-v1.2"), branch_name_error("main")
        (None, "predictions never go into 'main' (ground truth); choose another branch_name")
    """
    if not isinstance(name, str) or not BRANCH_NAME.match(name):
        return (
            f"branch_name must be letters, digits, '_', '.' or '-' (case sensitive), got {name!r}"
        )
    if name == "main":
        return "predictions never go into 'main' (ground truth); choose another branch_name"
    return None


def encord_time(moment: datetime.datetime | None = None) -> str:
    """A time as Encord writes it (``Wed, 02 Dec 2026 02:03:55 UTC``); default now."""
    moment = moment or datetime.datetime.now(datetime.timezone.utc)
    return moment.astimezone(datetime.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S UTC")


def features_for_task(class_names: list[str], task: str) -> dict[str, Feature]:
    """Ontology objects for a model's classes (for an export): class -> `Feature`.

    Feature hashes are derived from the class and shape, so the same model always gets the
    same ontology.
    """
    shape = shapes_for_task(task)[0]
    return {
        name: Feature(
            name,
            shape,
            hashlib.sha1(f"{name}\0{shape}".encode()).hexdigest()[:8],
            _COLOURS[i % len(_COLOURS)],
        )
        for i, name in enumerate(class_names)
    }


def ontology_structure(
    features: dict[str, Feature], classifier: Classifier | None = None
) -> dict[str, Any]:
    """The ontology JSON (``OntologyStructure.to_dict`` shape) of ``features``, ``classifier``."""
    objects = [
        {
            "id": str(i + 1),
            "name": f.name,
            "color": f.color,
            "shape": f.shape,
            "featureNodeHash": f.feature_hash,
            "required": False,
            "archived": False,
        }
        for i, f in enumerate(features.values())
    ]
    classifications = []
    if classifier is not None:
        options = [
            {"id": f"1.1.{i + 1}", "label": name, "value": _snake(name), "featureNodeHash": h}
            for i, (name, h) in enumerate(classifier.options.items())
        ]
        attribute = {
            "id": "1.1",
            "name": classifier.attribute,
            "type": "radio",
            "featureNodeHash": classifier.attribute_hash,
            "required": False,
            "options": options,
        }
        classifications.append(
            {"id": "1", "featureNodeHash": classifier.feature_hash, "attributes": [attribute]}
        )
    return {"objects": objects, "classifications": classifications}


def match_features(
    class_names: list[str], task: str, ontology_objects: list[dict[str, Any]]
) -> dict[str, Feature]:
    """Map each model class to the ontology object of the same title and a fitting shape.

    Args:
        class_names: The model's classes.
        task: The model's task (`shapes_for_task` gives the shapes it can fill).
        ontology_objects: The ``objects`` of the project's ontology (``name``, ``shape``,
            ``featureNodeHash``).

    Raises:
        ValueError: A class has no match; the message lists both sides.

    Example:
        >>> ontology = [{"name": "red", "shape": "bounding_box", "featureNodeHash": "f1"}]
        >>> match_features(["red"], "detection", ontology)["red"].feature_hash
        'f1'
    """
    shapes = shapes_for_task(task)
    found: dict[str, Feature] = {}
    for name in class_names:
        candidates = [
            o for o in ontology_objects if o.get("name") == name and o.get("shape") in shapes
        ]
        if candidates:
            best = min(candidates, key=lambda o: shapes.index(o["shape"]))
            found[name] = Feature(
                name, best["shape"], str(best["featureNodeHash"]), best.get("color", "#D33115")
            )
    missing = [n for n in class_names if n not in found]
    if missing:
        have = ", ".join(f"{o.get('name')} ({o.get('shape')})" for o in ontology_objects) or "none"
        raise ValueError(
            f"the Encord ontology has no object for the model's classes {missing} "
            f"(a {task} model needs the shape {' or '.join(shapes)} and the same title); "
            f"model classes: {class_names}; ontology objects: {have}"
        )
    return found


def object_hash(prefix: str, index: int) -> str:
    """The 8-character hash of object ``index`` of a job (``prefix``: 4 characters).

    Example:
        >>> object_hash("ab12", 37)
        'ab120011'
    """
    if len(prefix) != 4 or index < 0 or index >= len(_DIGITS) ** 4:
        raise ValueError(f"object hash prefix {prefix!r} / index {index} out of range")
    digits = ""
    for _ in range(4):
        index, digit = divmod(index, len(_DIGITS))
        digits = _DIGITS[digit] + digits
    return prefix + digits


def video_object_hash(prefix: str, frame: int, index: int) -> str:
    """The hash of object ``index`` on video frame ``frame`` of a job (unique in the row).

    Example:
        >>> video_object_hash("ab12", 37, 2)
        'ab12f00011o002'
    """
    if len(prefix) != 4 or frame < 0 or index < 0:
        raise ValueError(f"object hash prefix {prefix!r} / frame {frame} / index {index}")
    return f"{prefix}f{_base36(frame, 5)}o{_base36(index, 3)}"


def video_classification_hash(prefix: str, frame: int) -> str:
    """The hash of a job's classification instance on video frame ``frame``.

    Example:
        >>> video_classification_hash("ab12", 37)
        'ab12f00011c'
    """
    if len(prefix) != 4 or frame < 0:
        raise ValueError(f"classification hash prefix {prefix!r} / frame {frame}")
    return f"{prefix}f{_base36(frame, 5)}c"


def _base36(value: int, width: int) -> str:
    digits = ""
    while value or not digits:
        value, digit = divmod(value, len(_DIGITS))
        digits = _DIGITS[digit] + digits
    return digits.rjust(width, "0")


def bitmask_rle(rle: dict[str, Any], height: int, width: int) -> str:
    """Encord's ``rleString`` (row-major) of a COCO RLE mask of the media's size."""
    from encord.common.bitmask_operations import coco_rle_to_encord_rle

    counts = rle["counts"]
    if isinstance(counts, list):  # an uncompressed RLE: compress it first
        from pycocotools import mask as coco

        counts = coco.frPyObjects(rle, height, width)["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return coco_rle_to_encord_rle(counts, height=height, width=width)


def _round(value: float) -> float:
    return round(float(value), 6)


def prediction_objects(
    prediction: Prediction,
    features: dict[str, Feature],
    prefix: str,
    created_at: str | None = None,
) -> list[dict[str, Any]]:
    """The Encord object instances of ``prediction`` (see the module docstring).

    Args:
        prediction: A prediction with its ``height`` and ``width``.
        features: Class -> ontology `Feature` (from `match_features`).
        prefix: The job's 4-character object hash prefix (`object_hash`).
        created_at: The time to stamp (default now, `encord_time`).

    Raises:
        ValueError: The prediction has no size, or a class without a feature.
    """
    height, width = int(prediction.height), int(prediction.width)
    if height <= 0 or width <= 0:
        raise ValueError(f"{prediction.name}: the image size is unknown")
    stamp = created_at or encord_time()
    rles = prediction.masks_rle
    objects = []
    for i, (box, name, score) in enumerate(
        zip(prediction.boxes, prediction.classes, prediction.scores, strict=True)
    ):
        feature = features.get(name)
        if feature is None:
            raise ValueError(f"class {name!r} has no Encord ontology object")
        x1, y1 = max(float(box[0]), 0.0), max(float(box[1]), 0.0)
        x2, y2 = min(float(box[2]), width), min(float(box[3]), height)
        obj: dict[str, Any] = {
            "name": feature.name,
            "color": feature.color,
            "shape": feature.shape,
            "value": _snake(feature.name),
            "createdAt": stamp,
            "createdBy": None,
            "confidence": _round(min(max(float(score), 0.0), 1.0)),
            "objectHash": object_hash(prefix, i),
            "featureHash": feature.feature_hash,
            "manualAnnotation": False,
            "lastEditedAt": stamp,
        }
        if feature.shape == "bitmask":
            if rles is None:
                raise ValueError(f"class {name!r} is a bitmask in the ontology, but has no mask")
            obj["bitmask"] = {
                "top": 0,
                "left": 0,
                "height": height,
                "width": width,
                "rleString": bitmask_rle(rles[i], height, width),
            }
        else:
            obj["boundingBox"] = {
                "x": _round(x1 / width),
                "y": _round(y1 / height),
                "w": _round(max(x2 - x1, 0.0) / width),
                "h": _round(max(y2 - y1, 0.0) / height),
            }
        objects.append(obj)
    return objects


def prediction_classification(
    prediction: Prediction,
    classifier: Classifier,
    prefix: str,
    created_at: str | None = None,
    frame: int | None = None,
) -> dict[str, dict[str, Any]]:
    """The classification instance of a classifier's prediction: ``{hash: answer}``.

    The answer is the class of the highest score, with that score as ``confidence``; a
    prediction without classes gives ``{}``. For a video ``frame``, the instance is on that
    frame only (``range`` ``[[frame, frame]]``, hash `video_classification_hash`), the
    shape `encord.objects.LabelRowV2` keeps a frame-level classification in.

    Raises:
        ValueError: The top class is not an option of ``classifier``.
    """
    if not len(prediction.scores):
        return {}
    top = int(np.argmax(prediction.scores))
    name, score = prediction.classes[top], float(prediction.scores[top])
    option = classifier.options.get(name)
    if option is None:
        raise ValueError(f"class {name!r} is not an option of the Encord classification")
    stamp = created_at or encord_time()
    key = object_hash(prefix, 0) if frame is None else video_classification_hash(prefix, frame)
    span = 0 if frame is None else int(frame)
    answer = {
        "name": classifier.attribute,
        "value": _snake(classifier.attribute),
        "answers": [{"name": name, "value": _snake(name), "featureHash": option}],
        "featureHash": classifier.attribute_hash,
        "manualAnnotation": False,
    }
    return {
        key: {
            "classifications": [answer],
            "classificationHash": key,
            "featureHash": classifier.feature_hash,
            "spaces": {},
            "range": [[span, span]],
            "createdBy": None,
            "createdAt": stamp,
            "lastEditedBy": None,
            "lastEditedAt": stamp,
            "confidence": round(min(max(score, 0.0), 1.0), 6),
            "manualAnnotation": False,
        }
    }


def _snake(name: str) -> str:
    return re.sub(r"\s+", "_", name.strip().lower())


def _mime(name: str) -> str:
    suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return {"jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp"}.get(
        suffix, "image/png" if suffix in ("png", "") else f"image/{suffix}"
    )


def label_row(
    prediction: Prediction,
    features: dict[str, Feature],
    prefix: str = "0000",
    data_hash: str | None = None,
    branch_name: str = "main",
    created_at: str | None = None,
    classifier: Classifier | None = None,
) -> dict[str, Any]:
    """A whole label row for one image, as `LabelRowV2.to_encord_dict` writes it.

    Args:
        prediction: The prediction (its ``name`` is the data title).
        features: Class -> `Feature` (boxes and masks; empty for a classifier).
        prefix: Object hash prefix.
        data_hash: The data unit's hash; default derived from the name (stable).
        branch_name: The branch the row belongs to.
        created_at: The time to stamp (default now).
        classifier: For a classifier: its radio classification (then no objects).
    """
    stamp = created_at or encord_time()
    data_hash = data_hash or str(uuid.uuid5(uuid.NAMESPACE_URL, f"tessera:{prediction.name}"))
    nil = "00000000-0000-0000-0000-000000000000"
    if classifier is not None:
        objects: list[dict[str, Any]] = []
        answers = prediction_classification(prediction, classifier, prefix, stamp)
    else:
        objects = prediction_objects(prediction, features, prefix, stamp)
        answers = {}
    return {
        "label_hash": nil,
        "branch_name": branch_name,
        "created_at": stamp,
        "last_edited_at": stamp,
        "data_hash": data_hash,
        "dataset_hash": nil,
        "dataset_title": prediction.dataset or "",
        "data_title": prediction.name,
        "data_type": "image",
        "annotation_task_status": "QUEUED",
        "is_shadow_data": False,
        "object_answers": {
            o["objectHash"]: {"classifications": [], "objectHash": o["objectHash"]} for o in objects
        },
        "classification_answers": answers,
        "object_actions": {},
        "label_status": "LABEL_IN_PROGRESS",
        "data_units": {
            data_hash: {
                "data_hash": data_hash,
                "data_title": prediction.name,
                "data_link": "",
                "data_type": _mime(prediction.name),
                "data_sequence": 0,
                "width": int(prediction.width),
                "height": int(prediction.height),
                "labels": {"objects": objects, "classifications": []},
            }
        },
        "spaces": {},
    }


def object_box(obj: dict[str, Any], height: int, width: int) -> list[float] | None:
    """The pixel box ``[x1, y1, x2, y2]`` of an Encord object (box or bitmask), or None."""
    box = obj.get("boundingBox")
    if isinstance(box, dict):
        x, y = float(box["x"]) * width, float(box["y"]) * height
        return [x, y, x + float(box["w"]) * width, y + float(box["h"]) * height]
    mask = obj.get("bitmask")
    if isinstance(mask, dict):
        from encord.common.bitmask_operations import deserialise_bitmask

        h, w = int(mask["height"]), int(mask["width"])
        pixels = np.frombuffer(deserialise_bitmask(mask["rleString"], h * w), np.uint8)
        rows, cols = np.nonzero(pixels.reshape(h, w))
        if not len(rows):
            return [0.0, 0.0, 0.0, 0.0]
        top, left = int(mask.get("top", 0)), int(mask.get("left", 0))
        return [left + cols.min(), top + rows.min(), left + cols.max() + 1, top + rows.max() + 1]
    return None


def objects_to_detections(
    objects: list[dict[str, Any]], class_names: list[str], height: int, width: int
) -> Detections:
    """Read Encord object instances back into `Detections` (boxes in pixels).

    Objects of a name not in ``class_names``, or without a box or bitmask, are skipped.

    Example:
        >>> objects_to_detections([{"name": "red", "confidence": 0.5,
        ...     "boundingBox": {"x": 0.1, "y": 0.1, "w": 0.4, "h": 0.4}}], ["red"], 60, 80).xyxy
        array([[ 8.,  6., 40., 30.]], dtype=float32)
    """
    index = {name: i for i, name in enumerate(class_names)}
    boxes, scores, labels = [], [], []
    for obj in objects:
        box = object_box(obj, height, width) if obj.get("name") in index else None
        if box is None:
            continue
        boxes.append(box)
        scores.append(float(obj.get("confidence", 1.0)))
        labels.append(index[obj["name"]])
    return Detections(
        np.array(boxes, np.float32).reshape(-1, 4),
        np.array(scores, np.float32),
        np.array(labels, np.int64),
    )


def box_iou(a: list[float], b: list[float]) -> float:
    """IoU of two ``[x1, y1, x2, y2]`` boxes.

    Example:
        >>> box_iou([0, 0, 10, 10], [5, 0, 15, 10])
        0.3333333333333333
    """
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
