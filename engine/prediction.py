"""`Prediction`: one image's (or video frame's) detections with class names and origin."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.detections import Detections
from engine.schemas import PREDICTION_FIELDS


@dataclass
class Prediction:
    """The result for one input image or video frame.

    Attributes:
        detections: The objects found, in original-image pixels.
        class_names: The model's class list (``class_idxs`` index into it).
        source: What the item came from: "file", "url", "array", "pil", "video", or the
            name of the platform it came from.
        name: The item's display name (file name, URL's last part, ``array_3``...).
        path: Local file path, when the item is a file.
        url: The URL, when the item was fetched over HTTP(S).
        dataset: Dataset name, when the item came from a platform's dataset or project.
        frame_index: Source frame index for video frames, else None.
        timestamp: Frame time in seconds for video frames, else None.
        height: Original image height in pixels (0 when the image could not be read).
        width: Original image width in pixels.
        error: Why this item could not be predicted, or None.
        latency_ms: The model's time for this image, in milliseconds: its share of the
            model call that predicted it (a batch's time split evenly over its images; a
            tiled image's, the sum over its tiles), or None when it was not predicted.
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
    latency_ms: float | None = None
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
        """This prediction in the default annotation format (`to_annotation`)."""
        return self.to_annotation()

    def to_annotation(self, format: str | None = None) -> dict:  # noqa: A002
        """This prediction as a platform's annotation JSON dict.

        Args:
            format: An installed annotation format (`engine.plugins.annotation_formats`);
                None gives the default one, that of the platform that declares itself
                the default.
        """
        from engine import plugins

        return plugins.annotation_format(format).encode(self)

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
        from engine import plugins
        from engine.sources.decode import decode_image_bytes, load_image

        platform = plugins.platform_for_url(self.url) if self.path is None and self.url else None
        if platform is not None:  # a platform's media, fetched by that platform
            return decode_image_bytes(platform.fetcher()(self.url), self.name)

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
            save_dir: Write the drawing into this folder, under the item's name; when a
                file of that name is there already (another folder's ``a.png``), under
                the first free ``a_2.png``, ``a_3.png``, ...
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

    # ------------------------------------------------------------------ supervision
    def to_supervision(self) -> Any:
        """The objects as ``supervision.Detections`` (``pip install tessera[supervision]``).

        Class names go in ``data["class_name"]``, so supervision's annotators label them;
        see `engine.supervision_bridge`.
        """
        from engine.supervision_bridge import to_supervision

        return to_supervision(self)

    @classmethod
    def from_supervision(cls, detections: Any, class_names: list[str], **origin: Any) -> Prediction:
        """A Prediction of ``supervision.Detections`` (`engine.supervision_bridge`)."""
        from engine.supervision_bridge import from_supervision

        return from_supervision(detections, class_names, **origin)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict: origin, size, error and every object.

        Coordinates are rounded to 2 decimals and scores to 4; see
        `engine.prediction_json.prediction_to_json` for the lossless form.
        """
        from engine.prediction_json import prediction_to_json

        return prediction_to_json(self, rounded=True, self_contained=False)

    def to_row(self) -> dict[str, Any]:
        """Return this prediction as a row of `PREDICTION_SCHEMA` (`from_arrow` reads it).

        Example:
            >>> p = Prediction(Detections([[1, 2, 3, 4]], [0.9], [0]), ["cat"], name="a.png")
            >>> row = p.to_row()
            >>> row["name"], row["xyxy"], Prediction.from_arrow(row, ["cat"]).classes
            ('a.png', [1.0, 2.0, 3.0, 4.0], ['cat'])
        """
        return {
            **{name: getattr(self, name) for name in PREDICTION_FIELDS},
            **self.detections.to_arrow(),
        }

    @classmethod
    def from_arrow(
        cls, row: dict[str, Any], class_names: list[str], task: str = "detection"
    ) -> Prediction:
        """Build a Prediction from a row of `PREDICTION_SCHEMA`."""
        fields = {name: row.get(name) for name in PREDICTION_FIELDS}
        fields.update(
            index=int(row["index"]),
            height=int(row.get("height") or 0),
            width=int(row.get("width") or 0),
        )
        return cls(
            detections=Detections.from_arrow(row, fields["height"], fields["width"]),
            class_names=class_names,
            task=task,
            **fields,
        )
