"""`Prediction`: one image's (or video frame's) detections with class names and origin."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from engine import masks as mask_utils
from engine.detections import DETECTIONS_ARROW_FIELDS, Detections

#: Arrow schema of a prediction row, as the pipeline produces it.
PREDICTION_SCHEMA = pa.schema(
    [
        pa.field("index", pa.int64()),
        pa.field("source", pa.string()),
        pa.field("name", pa.string()),
        pa.field("path", pa.string()),
        pa.field("url", pa.string()),
        pa.field("dataset", pa.string()),
        pa.field("frame_index", pa.int64()),
        pa.field("timestamp", pa.float64()),
        pa.field("height", pa.int64()),
        pa.field("width", pa.int64()),
        pa.field("error", pa.string()),
        *DETECTIONS_ARROW_FIELDS,
    ]
)

_ORIGIN_FIELDS = ("source", "name", "path", "url", "dataset", "frame_index", "timestamp")


@dataclass
class Prediction:
    """The result for one input image or video frame.

    Attributes:
        detections: The objects found, in original-image pixels.
        class_names: The model's class list (``class_idxs`` index into it).
        source: What the item came from: "file", "url", "array", "pil", "supervisely".
        name: The item's display name (file name, URL's last part, ``array_3``...).
        path: Local file path, when the item is a file.
        url: The URL, when the item was fetched over HTTP(S).
        dataset: Dataset name, when the item came from a Supervisely project.
        frame_index: Source frame index for video frames, else None.
        timestamp: Frame time in seconds for video frames, else None.
        height: Original image height in pixels (0 when the image could not be read).
        width: Original image width in pixels.
        error: Why this item could not be predicted, or None.
        index: Position of the item in the input.
        task: The model's task ("detection", "classification", ...).
        image: The decoded image when the input was in memory (array or PIL).

    Example:
        >>> p = model.predict("street.jpg")[0]          # doctest: +SKIP
        >>> p.boxes.shape, p.classes[:3]                 # doctest: +SKIP
        ((12, 4), ['car', 'car', 'person'])
    """

    detections: Detections
    class_names: list[str]
    source: str = "array"
    name: str = ""
    path: str | None = None
    url: str | None = None
    dataset: str | None = None
    frame_index: int | None = None
    timestamp: float | None = None
    height: int = 0
    width: int = 0
    error: str | None = None
    index: int = 0
    task: str = "detection"
    image: np.ndarray | None = field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------------ views
    @property
    def boxes(self) -> np.ndarray:
        """(N, 4) float32 xyxy boxes in original-image pixels."""
        return self.detections.xyxy

    @property
    def scores(self) -> np.ndarray:
        """(N,) float32 scores."""
        return self.detections.scores

    @property
    def class_idxs(self) -> np.ndarray:
        """(N,) int64 class indices into `class_names`."""
        return self.detections.class_idxs

    @property
    def classes(self) -> list[str]:
        """Class name of each object."""
        return [self.class_names[i] for i in self.detections.class_idxs]

    @property
    def masks(self) -> np.ndarray | None:
        """(N, H, W) bool masks aligned with `boxes`, or None for models without masks."""
        return self.detections.masks(self.height, self.width)

    @property
    def masks_rle(self) -> list[dict] | None:
        """The masks as COCO RLE dicts, or None."""
        return self.detections.masks_rle

    @property
    def keypoints(self) -> np.ndarray | None:
        """(N, K, 3) keypoints x, y, score, or None."""
        return self.detections.keypoints

    @property
    def track_ids(self) -> np.ndarray | None:
        """(N,) track ids, or None when not tracked."""
        return self.detections.track_ids

    @property
    def ok(self) -> bool:
        """True when the item was predicted (no `error`)."""
        return self.error is None

    def __len__(self) -> int:
        return len(self.detections)

    @property
    def annotation(self) -> dict:
        """This prediction as a Supervisely annotation JSON dict (see FORMATS.md)."""
        from engine.annotation import prediction_to_supervisely

        return prediction_to_supervisely(self, task=self.task)

    # ------------------------------------------------------------------ images
    def load_image(self) -> np.ndarray:
        """Return the original image as an HWC RGB uint8 array (EXIF orientation applied).

        For a video frame, the frame is decoded again from the video (seeking to the
        keyframe before it), with the video's rotation applied.
        """
        if self.image is not None:
            return self.image
        if self.frame_index is not None and self.path is not None:
            from engine.sources.video import load_frame

            return load_frame(self.path, self.frame_index)
        if self.url is not None and self.url.startswith("sly://"):
            from connectors.supervisely import SuperviselyFetcher  # a platform image
            from engine.sources.decode import decode_image_bytes

            return decode_image_bytes(SuperviselyFetcher()(self.url), self.name)
        from engine.sources.decode import load_image

        if self.path is not None:
            return load_image(self.path)
        if self.url is not None:
            return load_image(self.url)
        raise ValueError(f"{self.name!r}: the in-memory image is no longer held")

    def visualize(
        self,
        save_path: str | Path | None = None,
        save_dir: str | Path | None = None,
        color: tuple[int, int, int] | None = None,
        thickness: int | None = None,
        opacity: float = 0.5,
        draw_tags: bool = False,
        fill_rectangles: bool = True,
    ) -> np.ndarray:
        """Draw the boxes, masks and keypoints on the image.

        Args:
            save_path: Write the drawing to this file.
            save_dir: Write the drawing into this folder, under the item's name.
            color: One RGB color for every object; None gives each class its own.
            thickness: Line width in pixels; None scales with the image size.
            opacity: Opacity of filled masks and rectangles, in [0, 1].
            draw_tags: Write class name and score beside each object.
            fill_rectangles: Fill boxes with a translucent color.

        Returns:
            The drawn image, HWC RGB uint8.
        """
        from engine.visualize import draw_prediction

        return draw_prediction(
            self,
            save_path=save_path,
            save_dir=save_dir,
            color=color,
            thickness=thickness,
            opacity=opacity,
            draw_tags=draw_tags,
            fill_rectangles=fill_rectangles,
        )

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict: origin, size, error and every object."""
        out: dict[str, Any] = {f: getattr(self, f) for f in _ORIGIN_FIELDS}
        out.update(
            index=self.index,
            height=self.height,
            width=self.width,
            error=self.error,
            boxes=np.round(self.boxes.astype(np.float64), 2).tolist(),
            scores=np.round(self.scores.astype(np.float64), 4).tolist(),
            classes=self.classes,
            class_idxs=self.class_idxs.tolist(),
        )
        if self.masks_rle is not None:
            out["masks"] = [mask_utils.rle_to_json(m) for m in self.masks_rle]
        if self.keypoints is not None:
            out["keypoints"] = np.round(self.keypoints.astype(np.float64), 2).tolist()
        if self.track_ids is not None:
            out["track_ids"] = self.track_ids.tolist()
        return out

    @classmethod
    def from_arrow(
        cls, row: dict[str, Any], class_names: list[str], task: str = "detection"
    ) -> Prediction:
        """Build a Prediction from a row of `PREDICTION_SCHEMA`."""
        height, width = int(row.get("height") or 0), int(row.get("width") or 0)
        return cls(
            detections=Detections.from_arrow(row, height, width),
            class_names=class_names,
            height=height,
            width=width,
            error=row.get("error"),
            index=int(row["index"]),
            task=task,
            **{f: row.get(f) for f in _ORIGIN_FIELDS},
        )
