"""Pure converters between Tessera's predictions and local formats (no Ray, no network).

A platform's own formats live in its package (`connectors.supervisely.annotation`).

- `connectors.formats.names`: the file name a prediction's image is written under.
- `connectors.formats.coco`: COCO results lists and datasets.
- `connectors.formats.jsonl`: one prediction per JSON line.
"""

from connectors.formats.coco import (
    PLACEHOLDER_CLASSES,
    assemble_dataset,
    coco_annotations,
    coco_categories,
    coco_category_ids,
    coco_dataset,
    coco_image,
    coco_results,
    split_results,
)
from connectors.formats.jsonl import (
    prediction_from_json,
    prediction_from_jsonl,
    prediction_to_json,
    prediction_to_jsonl,
)
from connectors.formats.names import image_file_name

__all__ = [
    "PLACEHOLDER_CLASSES",
    "assemble_dataset",
    "coco_annotations",
    "coco_categories",
    "coco_category_ids",
    "coco_dataset",
    "coco_image",
    "coco_results",
    "image_file_name",
    "prediction_from_json",
    "prediction_from_jsonl",
    "prediction_to_json",
    "prediction_to_jsonl",
    "split_results",
]
