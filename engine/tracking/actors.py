"""Track objects through videos: one boxmot tracker per video, in a Ray actor of its own.

Predictions stream in input order from the detection pipeline (whose segments decode and
predict in parallel); each video's frames go, in frame order, to that video's tracker
actor as they arrive, so several videos are tracked at once and none waits for the
others' detections.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import ray

from engine.prediction import Prediction
from engine.runtime import near_caller
from engine.sources.video import VideoInfo, decode_frames_sequential
from engine.tracking.adapter import make_tracker
from engine.tracking.annotation import VideoAnnotation
from engine.tracking.loop import track_predictions

#: Frames sent to a tracker actor per call.
FEED_FRAMES = 32


class VideoTracker:
    """One video's tracker (a Ray actor): frames in, in order; tracked predictions out.

    Args:
        tracker: A boxmot tracker instance (this actor gets its own copy) or a name for
            `engine.tracking.make_tracker`.
        frame_rate: Rate of the frames fed (the video's fps / stride).
        reid_weights: Local ReID weights file, for ReID trackers.
        tracker_options: More constructor arguments for a tracker given by name.
        path: The video file, decoded again only for trackers that read pixels.
        frames: The frame indices that will be fed, in order.
    """

    def __init__(
        self,
        tracker: Any,
        frame_rate: float,
        reid_weights: str | None,
        tracker_options: dict[str, Any],
        path: str,
        frames: list[int],
    ) -> None:
        if isinstance(tracker, str):
            options = dict(tracker_options)
            if frame_rate > 0:
                options.setdefault("frame_rate", max(1, round(frame_rate)))
            tracker = make_tracker(tracker, reid_weights=reid_weights, **options)
        self.tracker = tracker
        self.tracked: list[Prediction] = []
        self._frames = _FrameCursor(path, frames)

    def feed(self, predictions: list[Prediction]) -> int:
        """Track the next frames; returns how many frames are tracked so far."""
        self.tracked.extend(track_predictions(predictions, self.tracker, self._frames.load))
        return len(self.tracked)

    def result(self) -> list[Prediction]:
        """Every tracked prediction, in frame order."""
        return self.tracked


class _FrameCursor:
    """Loads the frames of one video in order, decoding the file once from the start."""

    def __init__(self, path: str, frames: list[int]) -> None:
        self.path, self.frames = path, frames
        self._decoded: Iterator[Any] | None = None

    def load(self, prediction: Prediction) -> np.ndarray:
        if self._decoded is None:
            self._decoded = decode_frames_sequential(self.path, self.frames)
        for frame in self._decoded:
            if frame.frame_index == prediction.frame_index:
                if frame.image is None:
                    raise ValueError(frame.error)
                return frame.image
            if frame.frame_index > prediction.frame_index:
                break
        raise ValueError(f"{self.path}: frame {prediction.frame_index} was not decoded")


def track_videos(
    predictions: Iterable[Prediction],
    videos: dict[str, VideoInfo],
    frames: dict[str, list[int]],
    tracker: Any = "bytetrack",
    stride: int = 1,
    reid_weights: str | Path | None = None,
    tracker_options: dict[str, Any] | None = None,
) -> list[VideoAnnotation]:
    """Track every video's predictions through its own tracker actor.

    Args:
        predictions: Frame predictions in input order (all of one video's frames in frame
            order); a prediction without a frame index is a video that failed to open.
        videos: Path -> probed `VideoInfo`.
        frames: Path -> the frame indices predicted, in order.
        tracker: A boxmot tracker instance (copied for each video) or a tracker name.
        stride: The frame stride, so that time-based tracker settings stay right.
        reid_weights: Local ReID weights file, for ReID trackers.
        tracker_options: More constructor arguments for a tracker given by name.

    Returns:
        One `VideoAnnotation` per video, in input order; a video that could not be read
        has ``error`` set and no frames.
    """
    actor_class = ray.remote(num_cpus=0)(VideoTracker).options(**near_caller())
    actors: dict[str, Any] = {}
    order: list[str] = []
    failed: dict[str, Prediction] = {}
    pending: dict[str, list[Prediction]] = {}
    calls: list[Any] = []
    for prediction in predictions:
        key = str(prediction.path)
        if prediction.frame_index is None:  # the whole video failed
            order.append(key)
            failed[key] = prediction
            continue
        if key not in actors:
            info = videos[key]
            rate = info.fps / stride if info.fps else 0.0
            actors[key] = actor_class.remote(
                tracker,
                rate,
                _optional_str(reid_weights),
                tracker_options or {},
                key,
                frames.get(key, []),
            )
            order.append(key)
            pending[key] = []
        pending[key].append(prediction)
        if len(pending[key]) >= FEED_FRAMES:
            calls.append(actors[key].feed.remote(pending[key]))
            pending[key] = []
    for key, batch in pending.items():
        if batch:
            calls.append(actors[key].feed.remote(batch))
    ray.get(calls)  # surfaces a tracker's failure here
    results = dict(zip(actors, ray.get([actor.result.remote() for actor in actors.values()])))
    for actor in actors.values():
        ray.kill(actor)
    annotations = []
    for key in order:
        if key in failed:
            bad = failed[key]
            annotations.append(
                VideoAnnotation(
                    bad.name, 0, 0, list(bad.class_names), path=bad.path, error=bad.error
                )
            )
            continue
        info = videos[key]
        annotations.append(
            VideoAnnotation.from_predictions(
                results[key],
                fps=info.fps,
                num_frames=info.num_frames,
                name=results[key][0].name if results[key] else Path(key).name,
                path=key,
            )
        )
    return annotations


def _optional_str(value: str | Path | None) -> str | None:
    return None if value is None else str(value)
