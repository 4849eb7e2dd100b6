"""The tracking loop: one video's predictions, in frame order, through one tracker.

Example:
    >>> for p in track_predictions(video_predictions, "bytetrack"):  # doctest: +SKIP
    ...     print(p.frame_index, p.track_ids)
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from engine.prediction import Prediction
from engine.tracking.adapter import from_boxmot, make_tracker, to_boxmot

__all__ = ["track_predictions"]


def track_predictions(
    predictions: Iterable[Prediction],
    tracker: str | object,
    frame_loader: Callable[[Prediction], np.ndarray] | None = None,
) -> Iterator[Prediction]:
    """Feed one video's predictions, in frame order, to one tracker; yield them tracked.

    Each prediction is given to ``tracker.update`` and comes back as `from_boxmot` makes it
    (detector boxes, ``track_ids`` set, detections without a confirmed track dropped).
    Feeding every n-th frame (a stride) is fine; build the tracker with
    ``frame_rate = fps / stride`` so its time-based buffers stay right.

    Frames: trackers that read pixels (``tracker.requirements.frame``: BoT-SORT's camera
    motion compensation, ReID...) get ``frame_loader(prediction)`` when given, else
    ``prediction.image``, as RGB HWC uint8 (converted to boxmot's BGR here); if neither
    exists they get a black frame and a warning (ReID trackers raise instead). Trackers
    that only use the frame size (ByteTrack, OC-SORT, SFSORT) get a shared black frame of
    the prediction's size and ``frame_loader`` is not called.

    A prediction with an ``error`` is yielded unchanged (``track_ids`` None) and does not
    advance the tracker: it is treated like a skipped frame, not like a frame where every
    object vanished. Detections boxmot would reject (non-finite values, zero-size boxes,
    negative classes) are dropped from the tracked prediction. Use a fresh tracker (or
    ``tracker.reset()``) for each video.

    Args:
        predictions: The frames' predictions, in strictly increasing ``frame_index``
            (predictions without a ``frame_index`` are taken as the next frame).
        tracker: A tracker instance, or a name for `make_tracker`.
        frame_loader: Returns the RGB image of a prediction, for trackers that read
            pixels.

    Yields:
        The tracked predictions, in input order.

    Raises:
        ValueError: When a ``frame_index`` is not greater than the previous one (raised
            as that prediction is reached), or when a ReID tracker has no pixels.

    Example:
        >>> for p in track_predictions(video_predictions, "bytetrack"):  # doctest: +SKIP
        ...     print(p.frame_index, p.track_ids)

    """
    tracker = make_tracker(tracker)
    reads_pixels, warn_black, needs_pixels = _pixel_requirements(tracker)
    zero_frames: dict[tuple[int, int], np.ndarray] = {}
    warned = False
    last_index: int | None = None
    for prediction in predictions:
        if prediction.frame_index is not None:
            index = int(prediction.frame_index)
            if last_index is not None and index <= last_index:
                raise ValueError(
                    f"frames must be given in increasing frame_index order: got frame {index} "
                    f"after frame {last_index} ({prediction.name!r})"
                )
            last_index = index
        elif last_index is not None:
            last_index += 1
        if prediction.error is not None:
            yield prediction
            continue

        frame = None
        if reads_pixels:
            frame = _load_frame(prediction, frame_loader)
        if frame is None and prediction.height > 0 and prediction.width > 0:
            shape = (int(prediction.height), int(prediction.width))
            if shape not in zero_frames:
                zero_frames[shape] = np.zeros((*shape, 3), np.uint8)
            frame = zero_frames[shape]
            if warn_black:
                if needs_pixels:
                    raise ValueError(
                        f"{type(tracker).__name__} matches by appearance (ReID) and needs the "
                        f"frames' pixels: pass frame_loader= ({prediction.name!r} has no image)"
                    )
                if not warned:
                    warnings.warn(
                        f"{type(tracker).__name__} reads pixels (camera motion compensation) "
                        "but no frame_loader was given: it sees black frames",
                        stacklevel=2,
                    )
                    warned = True

        dets = to_boxmot(prediction)
        valid = np.flatnonzero(
            np.isfinite(dets).all(axis=1)
            & (dets[:, 2] > dets[:, 0])
            & (dets[:, 3] > dets[:, 1])
            & (dets[:, 5] >= 0)
        )
        source = prediction
        if len(valid) < len(dets):
            dets = dets[valid]
            source = dataclasses.replace(prediction, detections=prediction.detections[valid])
        update_kwargs = {}
        if getattr(tracker, "variable_dt", False):
            if prediction.timestamp is None:
                raise ValueError(
                    f"the tracker uses variable_dt but {prediction.name!r} has no timestamp"
                )
            update_kwargs["timestamp_s"] = float(prediction.timestamp)
        tracks = tracker.update(dets, frame, **update_kwargs)
        yield from_boxmot(tracks, source)


def _pixel_requirements(tracker: Any) -> tuple[bool, bool, bool]:
    """(load pixels, warn when only black frames, fail without pixels) for a tracker."""
    requirements = getattr(tracker, "requirements", None)
    if requirements is None:  # not a boxmot 25 tracker: give it the pixels if we have them
        return True, False, False
    reads = bool(requirements.frame) and not bool(
        getattr(requirements, "frame_dimensions_only", False)
    )
    return reads, reads, reads and bool(getattr(requirements, "embeddings", False))


def _load_frame(
    prediction: Prediction, frame_loader: Callable[[Prediction], np.ndarray] | None
) -> np.ndarray | None:
    """The prediction's image as a contiguous uint8 HWC BGR array, or None."""
    image = frame_loader(prediction) if frame_loader is not None else prediction.image
    if image is None:
        return None
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"frame of {prediction.name!r} must be HWC RGB, got {image.shape}")
    return np.ascontiguousarray(image[..., 2::-1], dtype=np.uint8)
