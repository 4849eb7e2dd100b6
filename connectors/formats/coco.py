"""Predictions as COCO: results lists (for `COCOeval`) and a full dataset (FORMATS.md).

Conventions:

- Category ids come from `coco_category_ids`: a model class's id is its index when the
  class list opens with a placeholder (torchvision's COCO lists, ``["__background__",
  "person", ..., "N/A", ...]``, whose indices are the official COCO category ids), and
  index + 1 otherwise. So ids are 1-based, depend only on the class list, and placeholder
  classes ("__background__", "N/A", and Keypoint R-CNN's "no person") get none: their
  objects are left out. COCO-trained zoo models thus keep COCO's own ids (person = 1).
- ``file_name`` keeps each image's folder below the folder all the images share
  (`with_folders`).
- ``bbox`` is ``[x, y, w, h]`` in float pixels: x = x1, w = x2 - x1 (x2 exclusive).
- Masks are RLE with ``counts`` as a str; box and mask results are separate lists because
  pycocotools decides the mode of a results list from its first element.
- Predictions with an ``error`` contribute neither images nor objects.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import PurePath
from typing import Any

from connectors.formats.names import image_file_name
from engine import masks as mask_utils
from engine.prediction import Prediction

__all__ = [
    "PLACEHOLDER_CLASSES",
    "assemble_dataset",
    "coco_annotations",
    "coco_categories",
    "coco_category_ids",
    "coco_dataset",
    "coco_image",
    "coco_results",
    "image_folder",
    "split_results",
    "with_folders",
]

#: Class names that hold a place in a class list but are no category.
PLACEHOLDER_CLASSES = frozenset({"__background__", "N/A", "no person"})

#: How a caller names image ids: a mapping (by file name or by prediction index) or a
#: function of the prediction.
ImageIds = Mapping[Any, int] | Callable[[Prediction], int]


# ---------------------------------------------------------------------- categories
def coco_category_ids(class_names: list[str]) -> dict[int, int]:
    """Map a model's class indices to COCO category ids (see the module docstring).

    Args:
        class_names: The model's class list.

    Returns:
        ``{class index: category id}`` for every class that is not a placeholder.

    Example:
        >>> coco_category_ids(["__background__", "person", "N/A", "car"])
        {1: 1, 3: 3}
        >>> coco_category_ids(["red", "green"])
        {0: 1, 1: 2}
        >>> coco_category_ids(["no person", "person"])  # Keypoint R-CNN: COCO's person id
        {1: 1}

    """
    offset = 0 if class_names and class_names[0] in PLACEHOLDER_CLASSES else 1
    return {i: i + offset for i, name in enumerate(class_names) if name not in PLACEHOLDER_CLASSES}


def coco_categories(
    class_names: list[str], category_ids: Mapping[int, int] | None = None
) -> list[dict[str, Any]]:
    """Return the ``categories`` of a COCO dataset: ``[{"id", "name"}, ...]``.

    Args:
        class_names: The model's class list.
        category_ids: ``{class index: category id}``; None uses `coco_category_ids`.

    Returns:
        One category per mapped class, by increasing id.

    Example:
        >>> coco_categories(["__background__", "cat"])
        [{'id': 1, 'name': 'cat'}]

    """
    ids = coco_category_ids(class_names) if category_ids is None else category_ids
    return [{"id": int(cid), "name": class_names[i]} for i, cid in sorted(ids.items(), key=_by_id)]


def _by_id(item: tuple[int, int]) -> int:
    return item[1]


# ---------------------------------------------------------------------- one prediction
def coco_image(prediction: Prediction, image_id: int) -> dict[str, Any]:
    """Return the ``images`` entry of a prediction: ``{id, file_name, width, height}``.

    Args:
        prediction: The prediction (``file_name`` is `image_file_name` of it).
        image_id: Its COCO image id.

    Returns:
        The image entry.

    Example:
        >>> coco_image(prediction, 7)["id"]                       # doctest: +SKIP
        7

    """
    return {
        "id": int(image_id),
        "file_name": image_file_name(prediction),
        "width": int(prediction.width),
        "height": int(prediction.height),
    }


def image_folder(prediction: Prediction) -> str | None:
    """The absolute folder of a prediction's image file (of a frame: its video's), or None.

    Example:
        >>> from engine.detections import Detections
        >>> image_folder(Prediction(Detections.empty(), [], name="a.png", path="/d/s/a.png"))
        '/d/s'
    """
    if not prediction.path:
        return None
    return os.path.dirname(os.path.abspath(prediction.path))


def with_folders(images: list[dict[str, Any]], folders: list[str | None]) -> list[dict[str, Any]]:
    """Give each image's ``file_name`` its folder below the folder all the images share.

    Images of one folder keep their bare names; ``a.png`` of ``data/x`` and of
    ``data/y`` become ``x/a.png`` and ``y/a.png`` rather than two ``a.png``. Images
    without a file (URLs, arrays) keep their names.

    Args:
        images: ``images`` entries (see `coco_image`), not changed.
        folders: Each image's `image_folder`, in the same order.

    Returns:
        New entries, with ``file_name`` as a POSIX path relative to the shared folder.

    Example:
        >>> with_folders([{"file_name": "a.png"}, {"file_name": "a.png"}], ["/d/x", "/d/y"])
        [{'file_name': 'x/a.png'}, {'file_name': 'y/a.png'}]
    """
    known = [folder for folder in folders if folder is not None]
    if not known:
        return [dict(image) for image in images]
    shared = os.path.commonpath(known)
    placed = []
    for image, folder in zip(images, folders, strict=True):
        entry = dict(image)
        below = "." if folder is None else os.path.relpath(folder, shared)
        if below != ".":
            entry["file_name"] = PurePath(below, image["file_name"]).as_posix()
        placed.append(entry)
    return placed


def coco_annotations(
    prediction: Prediction, image_id: int, category_ids: Mapping[int, int]
) -> list[dict[str, Any]]:
    """Return a prediction's objects as COCO annotations without ``id``.

    Each holds ``image_id``, ``category_id``, ``bbox`` [x, y, w, h], ``area`` (the mask's
    pixel count with masks, else w * h), ``iscrowd`` 0, ``score`` and, with masks,
    ``segmentation`` as RLE with str counts. Objects of unmapped classes are left out; a
    prediction with an ``error`` gives none.

    Args:
        prediction: The prediction.
        image_id: Its COCO image id.
        category_ids: ``{class index: category id}``.

    Returns:
        The annotations, in the prediction's object order.

    Example:
        >>> anns = coco_annotations(prediction, 1, coco_category_ids(prediction.class_names))
        ... # doctest: +SKIP

    """
    if prediction.error is not None:
        return []
    rles = prediction.masks_rle
    areas = mask_utils.mask_areas(rles) if rles else None
    out = []
    for i, (x1, y1, x2, y2) in enumerate(prediction.boxes.tolist()):
        category_id = category_ids.get(int(prediction.class_idxs[i]))
        if category_id is None:
            continue
        w, h = x2 - x1, y2 - y1
        ann: dict[str, Any] = {
            "image_id": int(image_id),
            "category_id": int(category_id),
            "bbox": [float(x1), float(y1), float(w), float(h)],
            "area": float(areas[i]) if areas is not None else float(w * h),
            "iscrowd": 0,
            "score": float(prediction.scores[i]),
        }
        if rles is not None:
            ann["segmentation"] = mask_utils.rle_to_json(rles[i])
        out.append(ann)
    return out


def split_results(
    annotations: Iterable[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split COCO annotations (as `coco_annotations` gives) into results lists.

    Args:
        annotations: Annotations holding image_id, category_id, bbox, score and
            optionally segmentation.

    Returns:
        ``(bbox_results, segm_results)``: ``{image_id, category_id, bbox, score}`` for
        every annotation, and ``{image_id, category_id, segmentation, score}`` for those
        with a segmentation.

    Example:
        >>> boxes, segms = split_results(coco_annotations(p, 1, ids))   # doctest: +SKIP

    """
    bbox_results, segm_results = [], []
    for ann in annotations:
        common = {"image_id": ann["image_id"], "category_id": ann["category_id"]}
        bbox_results.append({**common, "bbox": ann["bbox"], "score": ann["score"]})
        if "segmentation" in ann:
            segm_results.append(
                {**common, "segmentation": ann["segmentation"], "score": ann["score"]}
            )
    return bbox_results, segm_results


# ---------------------------------------------------------------------- many predictions
def coco_results(
    predictions: Iterable[Prediction],
    image_ids: ImageIds,
    category_ids: Mapping[int, int] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Return predictions as COCO results lists, ready for ``COCO.loadRes``.

    Args:
        predictions: The predictions (those with an ``error`` are skipped).
        image_ids: The COCO image id of each prediction: a mapping looked up by
            `image_file_name` and then by ``prediction.index``, or a function of the
            prediction.
        category_ids: ``{class index: category id}``; None uses `coco_category_ids` of
            the first prediction's class names.

    Returns:
        ``(bbox_results, segm_results)``; ``segm_results`` is empty without masks.

    Raises:
        KeyError: If a mapping holds no id for a prediction.

    Example:
        >>> boxes, segms = coco_results(preds, {"a.jpg": 1, "b.jpg": 2})  # doctest: +SKIP
        >>> coco_gt.loadRes(boxes)                                        # doctest: +SKIP

    """
    annotations: list[dict[str, Any]] = []
    for prediction in predictions:
        if prediction.error is not None:
            continue
        if category_ids is None:
            category_ids = coco_category_ids(prediction.class_names)
        image_id = _image_id(image_ids, prediction)
        annotations.extend(coco_annotations(prediction, image_id, category_ids))
    return split_results(annotations)


def coco_dataset(
    predictions: Iterable[Prediction],
    image_ids: ImageIds | None = None,
    category_ids: Mapping[int, int] | None = None,
    class_names: list[str] | None = None,
) -> dict[str, Any]:
    """Return predictions as a full COCO dataset dict (loadable by ``pycocotools.coco.COCO``).

    Args:
        predictions: The predictions (those with an ``error`` are skipped).
        image_ids: As in `coco_results`; None numbers the images 1, 2, ... in order.
        category_ids: ``{class index: category id}``; None uses `coco_category_ids`.
        class_names: The class list; None takes the first prediction's.

    Returns:
        ``{"info", "licenses", "images", "categories", "annotations"}``; annotations
        are numbered from 1 and keep their ``score``.

    Example:
        >>> dataset = coco_dataset(preds)                            # doctest: +SKIP
        >>> dataset["images"][0]                                     # doctest: +SKIP
        {'id': 1, 'file_name': 'a.jpg', 'width': 640, 'height': 480}

    """
    images: list[dict[str, Any]] = []
    folders: list[str | None] = []
    annotations: list[dict[str, Any]] = []
    for prediction in predictions:
        if prediction.error is not None:
            continue
        if class_names is None:
            class_names = list(prediction.class_names)
        if category_ids is None:
            category_ids = coco_category_ids(class_names)
        image_id = len(images) + 1 if image_ids is None else _image_id(image_ids, prediction)
        images.append(coco_image(prediction, image_id))
        folders.append(image_folder(prediction))
        annotations.extend(coco_annotations(prediction, image_id, category_ids))
    categories = coco_categories(class_names or [], category_ids)
    return assemble_dataset(with_folders(images, folders), categories, annotations)


def assemble_dataset(
    images: list[dict[str, Any]],
    categories: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
) -> dict[str, Any]:
    """Put images, categories and annotations together into a COCO dataset dict.

    Args:
        images: ``images`` entries (see `coco_image`).
        categories: ``categories`` entries (see `coco_categories`).
        annotations: Annotations without ``id`` (see `coco_annotations`); they are
            numbered from 1, in order (the dicts are not changed).

    Returns:
        The dataset dict.

    Example:
        >>> assemble_dataset([], [], [])["annotations"]
        []

    """
    return {
        "info": {"description": "Tessera predictions"},
        "licenses": [],
        "images": images,
        "categories": categories,
        "annotations": [{"id": i, **ann} for i, ann in enumerate(annotations, start=1)],
    }


def _image_id(image_ids: ImageIds, prediction: Prediction) -> int:
    if callable(image_ids):
        return int(image_ids(prediction))
    name = image_file_name(prediction)
    if name in image_ids:
        return int(image_ids[name])
    if prediction.index in image_ids:
        return int(image_ids[prediction.index])
    raise KeyError(
        f"image_ids holds no id for prediction {name!r} (index {prediction.index}): "
        "key the mapping by file name or by prediction index"
    )
