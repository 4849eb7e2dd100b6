"""Pure converters between Tessera's predictions and platform formats (no Ray, no network).

- `connectors.formats.supervisely`: Supervisely annotation JSON and project meta.
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
from connectors.formats.supervisely import (
    ANY_SHAPE,
    CONFIDENCE_TAG,
    annotation_to_detections,
    bitmap_to_mask,
    box_to_rectangle,
    check_annotation,
    check_task,
    dataset_dir,
    image_file_name,
    mask_to_bitmap,
    meta_for,
    png_file_name,
    prediction_from_supervisely,
    prediction_to_annotation,
    prediction_to_supervisely,
    supervisely_meta,
    supervisely_to_detections,
)

__all__ = [
    "ANY_SHAPE",
    "CONFIDENCE_TAG",
    "PLACEHOLDER_CLASSES",
    "annotation_to_detections",
    "assemble_dataset",
    "bitmap_to_mask",
    "box_to_rectangle",
    "check_annotation",
    "check_task",
    "coco_annotations",
    "coco_categories",
    "coco_category_ids",
    "coco_dataset",
    "coco_image",
    "coco_results",
    "dataset_dir",
    "image_file_name",
    "mask_to_bitmap",
    "meta_for",
    "png_file_name",
    "prediction_from_json",
    "prediction_from_jsonl",
    "prediction_from_supervisely",
    "prediction_to_annotation",
    "prediction_to_json",
    "prediction_to_jsonl",
    "prediction_to_supervisely",
    "split_results",
    "supervisely_meta",
    "supervisely_to_detections",
]
