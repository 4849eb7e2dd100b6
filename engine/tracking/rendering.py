"""Rendering of tracked videos: frames drawn with track ids, encoded back to a video.

Example:
    >>> drawn = draw_tracks(frame, tracked_prediction)                       # doctest: +SKIP
    >>> write_tracked_video(annotation, "out/clip_tracks.mp4")               # doctest: +SKIP
    PosixPath('out/clip_tracks.mp4')
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.prediction import Prediction

if TYPE_CHECKING:
    from engine.tracking.annotation import VideoAnnotation

__all__ = ["draw_tracks", "write_tracked_video"]


def draw_tracks(
    image: np.ndarray, prediction: Prediction, class_names: list[str] | None = None
) -> np.ndarray:
    """Draw a tracked prediction on ``image``: boxes labelled ``"id:<n> <class>"``.

    Each track gets its own color (`engine.visualize.class_color` of its id, so a track
    keeps its color across frames); masks and keypoints are drawn too. Boxes, masks and
    keypoints come from `engine.visualize.draw_prediction`; the labels are drawn here.
    An untracked prediction is labelled by class only; one with an ``error`` gives an
    unchanged copy of the image.

    Args:
        image: The frame, HWC RGB uint8.
        prediction: Its tracked prediction.
        class_names: Class list (default: ``prediction.class_names``).

    Returns:
        The drawn frame, HWC RGB uint8.
    """
    from PIL import Image, ImageDraw

    from engine.visualize import class_color, draw_label, draw_prediction, label_font

    if prediction.error is not None:
        return np.array(image, copy=True)
    names = list(prediction.class_names if class_names is None else class_names)
    dets = prediction.detections
    ids = dets.track_ids
    color_keys = dets.class_idxs if ids is None else ids
    # draw_prediction colors objects by class index: pass the track ids in its place.
    colored = dataclasses.replace(
        dets, class_idxs=np.asarray(color_keys, np.int64), track_ids=None, data={}
    )
    drawn = draw_prediction(
        dataclasses.replace(prediction, detections=colored, image=np.asarray(image)),
        fill_rectangles=False,
    )
    if not len(dets):
        return drawn
    out = Image.fromarray(drawn)
    draw = ImageDraw.Draw(out)
    height, width = drawn.shape[:2]
    font = label_font(max(10, round(min(height, width) / 40)))
    for i, box in enumerate(dets.xyxy):
        class_idx = int(dets.class_idxs[i])
        label = names[class_idx] if 0 <= class_idx < len(names) else str(class_idx)
        if ids is not None:
            label = f"id:{int(ids[i])} {label}"
        left = min(max(0, math.floor(float(box[0]))), width - 1)
        top = min(max(0, math.floor(float(box[1]))), height - 1)
        draw_label(draw, font, label, left, top, class_color(int(color_keys[i])))
    return np.asarray(out).copy()


def write_tracked_video(
    annotation: VideoAnnotation, path: str | Path, codec: str = "libx264"
) -> Path:
    """Encode the annotation's frames, drawn with `draw_tracks`, as a video file.

    The frames are decoded again from ``annotation.path``, in one pass, and written at the
    rate they were predicted (the video's fps over the frame step between predictions).

    Args:
        annotation: A tracked video (its ``path`` must be the local video).
        path: The video file to write (``.mp4``).
        codec: An encoder PyAV has (libx264 by default).

    Returns:
        The written path.

    Raises:
        ValueError: The annotation has no frames or no local video.
    """
    import av

    from engine.sources.video import decode_frames_sequential

    frames = [p for p in annotation.frames if p.frame_index is not None]
    if not frames or annotation.path is None:
        raise ValueError(f"{annotation.name}: no tracked frames of a local video to draw")
    indices = [int(p.frame_index) for p in frames]
    step = min((b - a for a, b in zip(indices, indices[1:])), default=1) or 1
    rate = Fraction(annotation.fps / step).limit_denominator(1001) if annotation.fps else 30
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    by_index = {int(p.frame_index): p for p in frames}
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = (
            annotation.width + annotation.width % 2,
            (annotation.height + annotation.height % 2),
        )
        stream.pix_fmt = "yuv420p"
        for decoded in decode_frames_sequential(annotation.path, indices):
            if decoded.image is None:
                continue
            drawn = draw_tracks(decoded.image, by_index[decoded.frame_index])
            drawn = np.pad(
                drawn,
                ((0, stream.height - drawn.shape[0]), (0, stream.width - drawn.shape[1]), (0, 0)),
            )
            for packet in stream.encode(av.VideoFrame.from_ndarray(drawn, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
