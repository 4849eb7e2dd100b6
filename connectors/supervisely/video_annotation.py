"""A tracked video as Supervisely video annotation JSON, and back: pure functions, no Ray.

Conventions (the image ones of `connectors.supervisely.annotation` carry over):

- One object per track id, in increasing id order; its ``classTitle`` is the track's
  majority class over the frames (ties: the class seen first).
- For every tracked frame, one rectangle figure per tracked detection, in integer pixels
  with inclusive right/bottom (`connectors.supervisely.annotation.box_to_rectangle`).
- The per-frame score is kept as the object's ``confidence`` tag (the tag meta
  `connectors.supervisely.annotation.CONFIDENCE_TAG`) with a ``frameRange``; runs of
  adjacent frames with the same rounded score share one tag.
- Keys are deterministic UUID5 hex strings derived from the video name, track id and
  frame, so the same video always gives the same JSON.
- The file is ``<video name>.json`` (``clip.mp4.json``), as Supervisely video projects
  name their annotations.

`SuperviselyVideoFormat` is the `engine.plugins.VideoAnnotationFormat` the Supervisely
platform registers, so ``annotation.to_supervisely()`` and
``VideoAnnotation.from_supervisely(...)`` reach these functions.

Example:
    >>> data = video_to_supervisely(video)                                 # doctest: +SKIP
    >>> video_from_supervisely(data, ["car"], name="clip.mp4").track_ids()  # doctest: +SKIP
    [0, 1]
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from connectors.supervisely.annotation import CONFIDENCE_TAG, box_to_rectangle
from engine.detections import Detections
from engine.prediction import Prediction
from engine.tracking import VideoAnnotation

__all__ = [
    "SuperviselyVideoFormat",
    "video_annotation_file_name",
    "video_from_supervisely",
    "video_to_supervisely",
]

_KEY_NAMESPACE = uuid.UUID("6f1c7c5e-2b1a-4c55-9b7e-0d5a3e7f2a10")
_CONFIDENCE = CONFIDENCE_TAG["name"]


def video_to_supervisely(annotation: VideoAnnotation) -> dict[str, Any]:
    """Return a tracked video as a Supervisely video annotation dict.

    Every tracked frame is listed, also with no figures; frames with an error are left
    out. ``framesCount`` is `VideoAnnotation.frames_count`.

    Args:
        annotation: The tracked video.

    Returns:
        The JSON-serialisable annotation (``size``, ``objects``, ``frames``, ...).

    Raises:
        ValueError: A frame is not tracked.

    Example:
        >>> [o["classTitle"] for o in video_to_supervisely(video)["objects"]]  # doctest: +SKIP
        ['car', 'person']
    """
    frames = annotation.tracked_frames()
    classes: dict[int, Counter] = {}
    scores: dict[int, list[tuple[int, float]]] = {}
    out_frames = []
    for index, prediction in frames:
        figures = []
        dets = prediction.detections
        for box, score, class_idx, track_id in zip(
            dets.xyxy, dets.scores, dets.class_idxs, dets.track_ids, strict=True
        ):
            tid = int(track_id)
            classes.setdefault(tid, Counter())[int(class_idx)] += 1
            scores.setdefault(tid, []).append((index, round(float(score), 4)))
            left, top, right, bottom = box_to_rectangle(box, annotation.height, annotation.width)
            figures.append(
                {
                    "key": _key(annotation.name, "figure", tid, index),
                    "objectKey": _key(annotation.name, "object", tid),
                    "geometryType": "rectangle",
                    "geometry": {
                        "points": {"exterior": [[left, top], [right, bottom]], "interior": []}
                    },
                }
            )
        out_frames.append({"index": index, "figures": figures})
    objects = [
        {
            "key": _key(annotation.name, "object", tid),
            "classTitle": annotation.class_names[classes[tid].most_common(1)[0][0]],
            "tags": _confidence_tags(scores[tid]),
        }
        for tid in sorted(classes)
    ]
    return {
        "size": {"height": int(annotation.height), "width": int(annotation.width)},
        "description": "",
        "key": _key(annotation.name, "video"),
        "tags": [],
        "objects": objects,
        "frames": out_frames,
        "framesCount": annotation.frames_count(),
    }


def video_from_supervisely(
    data: dict[str, Any],
    class_names: list[str],
    name: str = "",
    path: str | None = None,
    fps: float = 0.0,
) -> VideoAnnotation:
    """Read a Supervisely video annotation back (rectangle figures only).

    Objects become track ids 0, 1, 2... in the order of ``objects`` (the original ids
    are not stored in the JSON, so `video_to_supervisely` then this gives the same tracks
    and boxes but renumbered ids). A figure's box is x2 = right + 1, y2 = bottom + 1, its
    class its object's class, its score the object's ``confidence`` tag covering that
    frame (1.0 without one). Each listed frame gives one prediction.

    Args:
        data: The annotation dict.
        class_names: The class list the object classes index into.
        name: The video's file name.
        path: Local path of the video, if any.
        fps: Frames per second of the video (0 if unknown).

    Returns:
        The tracked video.

    Raises:
        ValueError: If an object's class is not in ``class_names``.

    Example:
        >>> video = video_from_supervisely(data, ["car"], name="clip.mp4")  # doctest: +SKIP
        >>> video.frames[0].track_ids                                     # doctest: +SKIP
        array([0])
    """
    height = int(data["size"]["height"])
    width = int(data["size"]["width"])
    class_index = {n: i for i, n in reversed(list(enumerate(class_names)))}
    objects: dict[str, tuple[int, int, list[dict]]] = {}
    for tid, obj in enumerate(data.get("objects", [])):
        title = obj["classTitle"]
        if title not in class_index:
            raise ValueError(f"class {title!r} of the annotation is not in class_names")
        tags = [t for t in obj.get("tags", []) if t.get("name") == _CONFIDENCE]
        objects[obj["key"]] = (tid, class_index[title], tags)
    frames = []
    for frame in sorted(data.get("frames", []), key=lambda f: int(f["index"])):
        index = int(frame["index"])
        boxes, scores, labels, ids = [], [], [], []
        for figure in frame.get("figures", []):
            if figure.get("geometryType") != "rectangle":
                continue
            tid, class_idx, tags = objects[figure["objectKey"]]
            (ax, ay), (bx, by) = figure["geometry"]["points"]["exterior"][:2]
            left, right = sorted((int(round(ax)), int(round(bx))))
            top, bottom = sorted((int(round(ay)), int(round(by))))
            boxes.append([left, top, right + 1, bottom + 1])
            scores.append(_tag_value_at(tags, index))
            labels.append(class_idx)
            ids.append(tid)
        detections = Detections(
            xyxy=np.asarray(boxes, np.float32).reshape(-1, 4),
            scores=np.asarray(scores, np.float32),
            class_idxs=np.asarray(labels, np.int64),
            track_ids=np.asarray(ids, np.int64),
        )
        frames.append(
            Prediction(
                detections=detections,
                class_names=list(class_names),
                source="file" if path else "array",
                name=name,
                path=path,
                frame_index=index,
                timestamp=index / fps if fps else None,
                height=height,
                width=width,
                index=len(frames),
            )
        )
    return VideoAnnotation(
        name=name,
        path=path,
        width=width,
        height=height,
        class_names=list(class_names),
        frames=frames,
        fps=float(fps),
        num_frames=int(data.get("framesCount") or 0),
    )


def video_annotation_file_name(annotation: VideoAnnotation) -> str:
    """The annotation's file name in a Supervisely video project: ``<video name>.json``.

    Example:
        >>> video_annotation_file_name(VideoAnnotation("/data/clip.mp4", 64, 48, []))
        'clip.mp4.json'
    """
    return f"{Path(annotation.name).name or 'video'}.json"


class SuperviselyVideoFormat:
    """The Supervisely video annotation JSON as an `engine.plugins.VideoAnnotationFormat`.

    Example:
        >>> SuperviselyVideoFormat().file_name(VideoAnnotation("clip.mp4", 64, 48, []))
        'clip.mp4.json'
    """

    def encode(self, annotation: VideoAnnotation) -> dict[str, Any]:
        """Return ``annotation`` as Supervisely JSON (see `video_to_supervisely`)."""
        return video_to_supervisely(annotation)

    def decode(
        self, data: dict[str, Any], class_names: list[str], **fields: Any
    ) -> VideoAnnotation:
        """Read Supervisely JSON back (see `video_from_supervisely` for ``fields``)."""
        return video_from_supervisely(data, class_names, **fields)

    def file_name(self, annotation: VideoAnnotation) -> str:
        """``<video name>.json`` (see `video_annotation_file_name`)."""
        return video_annotation_file_name(annotation)


def _key(*parts: object) -> str:
    """A deterministic UUID5 hex key of ``parts`` (the video name first)."""
    return uuid.uuid5(_KEY_NAMESPACE, "/".join(str(p) for p in parts)).hex


def _confidence_tags(scores: list[tuple[int, float]]) -> list[dict[str, Any]]:
    """Frame-ranged confidence tags, merging adjacent frames of equal score."""
    tags: list[dict[str, Any]] = []
    for index, score in scores:
        last = tags[-1] if tags else None
        if last is not None and last["value"] == score and last["frameRange"][1] + 1 == index:
            last["frameRange"][1] = index
        else:
            tags.append({"name": _CONFIDENCE, "value": score, "frameRange": [index, index]})
    return tags


def _tag_value_at(tags: list[dict], index: int) -> float:
    """The value of the tag whose frame range holds ``index``; 1.0 when none does."""
    for tag in tags:
        start, end = tag.get("frameRange") or (-math.inf, math.inf)
        if start <= index <= end and tag.get("value") is not None:
            return float(tag["value"])
    return 1.0
