"""Which frames of a video to process: check the user's options, then pick source indices.

`validate_frame_options` checks stride, start/end frame, frame count and duration before any
video is opened; `select_frames` turns them into source frame indices from probed metadata
(timestamps come from pts, so variable frame rate is respected); `check_selected` checks a
selection against a video.

Example:
    >>> select_frames([i / 10 for i in range(100)], stride=10, duration=3.0)
    [0, 10, 20]

"""

from __future__ import annotations

import bisect
import math
import numbers
from collections.abc import Sequence

from engine.sources.video.probe import VideoInfo

# Seconds under which two timestamps are taken as equal when applying ``duration``.
_TIME_EPSILON = 1e-9


class FrameSelectionError(ValueError):
    """Frame selection options are invalid, e.g. ``"stride must be an integer >= 1, got 0"``."""


def validate_frame_options(
    stride: int = 1,
    start_frame: int = 0,
    end_frame: int | None = None,
    num_frames: int | None = None,
    duration: float | None = None,
) -> None:
    """Check frame selection options without opening a video.

    Args:
        stride: Take every ``stride``-th frame; an integer >= 1.
        start_frame: First frame index; an integer >= 0.
        end_frame: Stop before this frame index (exclusive); None or an integer >
            ``start_frame``.
        num_frames: Process at most this many frames (counted after the stride); None or an
            integer >= 1.
        duration: Process frames less than this many seconds after ``start_frame``; None or
            a finite number > 0.

    Raises:
        FrameSelectionError: An option is invalid; the message names it and its value.

    Example:
        >>> validate_frame_options(stride=0)
        Traceback (most recent call last):
        ...
        engine.sources.video.selection.FrameSelectionError: stride must be an integer >= 1, got 0

    """
    _check_int("stride", stride, 1)
    _check_int("start_frame", start_frame, 0)
    if end_frame is not None:
        _check_int("end_frame", end_frame, 0)
        if end_frame <= start_frame:
            raise FrameSelectionError(
                f"end_frame must be greater than start_frame (end_frame is exclusive), got "
                f"start_frame={start_frame}, end_frame={end_frame}"
            )
    if num_frames is not None:
        _check_int("num_frames", num_frames, 1)
    if duration is not None:
        if (
            isinstance(duration, bool)
            or not isinstance(duration, numbers.Real)
            or not math.isfinite(duration)
            or duration <= 0
        ):
            raise FrameSelectionError(f"duration must be a number of seconds > 0, got {duration!r}")


def select_frames(
    video: VideoInfo | Sequence[float],
    stride: int = 1,
    start_frame: int = 0,
    end_frame: int | None = None,
    num_frames: int | None = None,
    duration: float | None = None,
) -> list[int]:
    """Source frame indices to process, in order.

    Frames ``start_frame, start_frame + stride, ...`` are taken while every given limit
    holds; the first limit reached ends the selection: ``end_frame`` (exclusive),
    ``num_frames`` (frames taken, after the stride), ``duration`` (a frame is taken while
    its timestamp < timestamp(start_frame) + duration, so variable frame rate is
    respected; timestamps within a nanosecond of the limit count as reaching it, against float
    rounding). Limits past the end of the video are clamped to it.

    Args:
        video: A `VideoInfo`, or the timestamp in seconds of every frame (ascending).
        stride: Take every ``stride``-th frame.
        start_frame: First frame index.
        end_frame: Stop before this frame index; None for the end of the video.
        num_frames: Take at most this many frames; None for no limit.
        duration: Seconds from ``start_frame``'s timestamp; None for no limit.

    Returns:
        Ascending frame indices (never empty).

    Raises:
        FrameSelectionError: An option is invalid (see `validate_frame_options`), or
            ``start_frame`` is past the last frame ("... the video has N frames").

    Example:
        >>> select_frames([i / 10 for i in range(100)], stride=10, duration=3.0)
        [0, 10, 20]

    """
    validate_frame_options(stride, start_frame, end_frame, num_frames, duration)
    if isinstance(video, VideoInfo):
        count = video.num_frames
        timestamp = video.timestamp
        name = f"{video.path}: "
    else:
        count = len(video)
        timestamp = video.__getitem__
        name = ""
    if start_frame >= count:
        raise FrameSelectionError(
            f"{name}start_frame={start_frame} is past the end of the video: the video has "
            f"{count} frames" + (f" (0..{count - 1})" if count else "")
        )
    stop = count if end_frame is None else min(end_frame, count)
    if duration is not None:
        # Timestamps within a nanosecond of the limit count as reaching it, so that float
        # rounding (0.2 + 0.1 > 0.3) does not add a frame at the boundary.
        limit = timestamp(start_frame) + duration - _TIME_EPSILON
        stop = min(stop, bisect.bisect_left(range(count), limit, lo=start_frame, key=timestamp))
    indices = range(start_frame, stop, stride)
    if num_frames is not None:
        indices = indices[:num_frames]
    return list(indices)


def check_selected(info: VideoInfo, frames: Sequence[int]) -> None:
    """Check that frame indices are ascending, distinct and inside the video.

    Args:
        info: The video's `VideoInfo`.
        frames: Frame indices, e.g. from `select_frames`.

    Raises:
        ValueError: An index is outside ``0..info.num_frames - 1``, or is not greater than
            the one before it; the message starts with the video's path.

    Example:
        >>> check_selected(info, [3, 2])                       # doctest: +SKIP
        Traceback (most recent call last):
        ...
        ValueError: clip.mp4: selected frames must be ascending and distinct, got 2 after 3

    """
    previous = -1
    for index in frames:
        if not 0 <= index < info.num_frames:
            raise ValueError(
                f"{info.path}: frame index {index} is outside the video (0..{info.num_frames - 1})"
            )
        if index <= previous:
            raise ValueError(
                f"{info.path}: selected frames must be ascending and distinct, got {index} "
                f"after {previous}"
            )
        previous = index


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise FrameSelectionError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise FrameSelectionError(f"{name} must be an integer >= {minimum}, got {value}")
