"""Split a selection into keyframe-aligned segments, each decodable on its own.

Example:
    >>> segments = plan_segments(info, select_frames(info))     # doctest: +SKIP
    >>> [(s.seek_frame, len(s.frames)) for s in segments]       # doctest: +SKIP
    [(0, 64), (64, 64), (128, 22)]

"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from engine.sources.video.probe import VideoInfo
from engine.sources.video.selection import check_selected

#: Default number of selected frames `plan_segments` aims for in one segment.
DEFAULT_FRAMES_PER_SEGMENT = 64


@dataclasses.dataclass(frozen=True)
class VideoSegment:
    """A run of selected frames that can be decoded on its own, starting at a keyframe.

    Attributes:
        path: The video file.
        seek_frame: Index of the keyframe decoding starts from.
        seek_pts: That keyframe's pts (what ``container.seek`` is given).
        frames: Selected frame indices in this segment, ascending, all >= ``seek_frame``.
        last_frame: The last frame that must be decoded (``frames[-1]``).
    """

    path: str
    seek_frame: int
    seek_pts: int
    frames: tuple[int, ...]
    last_frame: int


def plan_segments(
    info: VideoInfo,
    selected: Sequence[int],
    frames_per_segment: int = DEFAULT_FRAMES_PER_SEGMENT,
) -> list[VideoSegment]:
    """Split selected frames into segments that each start at a keyframe.

    Consecutive GOPs (a keyframe and the frames up to the next one) are grouped until a
    segment holds at least ``frames_per_segment`` selected frames; a segment is only ever
    cut between GOPs, so no segment needs a frame before its keyframe, and one GOP with many
    selected frames stays whole. The segments cover the selection exactly once, in order.

    Args:
        info: The video's `VideoInfo`.
        selected: Ascending, distinct frame indices, e.g. from `select_frames`.
        frames_per_segment: Selected frames to aim for per segment (>= 1).

    Returns:
        The segments, in frame order; empty for an empty selection.

    Raises:
        ValueError: ``selected`` is not ascending, or has an index outside the video, or
            ``frames_per_segment`` < 1.

    Example:
        >>> segments = plan_segments(info, select_frames(info))     # doctest: +SKIP
        >>> [(s.seek_frame, len(s.frames)) for s in segments]       # doctest: +SKIP
        [(0, 64), (64, 64), (128, 22)]

    """
    if isinstance(frames_per_segment, bool) or not isinstance(frames_per_segment, int):
        raise ValueError(f"frames_per_segment must be an integer, got {frames_per_segment!r}")
    if frames_per_segment < 1:
        raise ValueError(f"frames_per_segment must be >= 1, got {frames_per_segment}")
    check_selected(info, selected)
    segments: list[VideoSegment] = []
    current: list[int] = []
    seek = 0
    gop = -1
    for index in selected:
        keyframe = info.keyframe_before(index)
        if keyframe != gop:
            gop = keyframe
            if len(current) >= frames_per_segment:
                segments.append(_segment(info, seek, current))
                current = []
            if not current:
                seek = keyframe
        current.append(int(index))
    if current:
        segments.append(_segment(info, seek, current))
    return segments


def _segment(info: VideoInfo, seek: int, frames: list[int]) -> VideoSegment:
    return VideoSegment(
        path=info.path,
        seek_frame=seek,
        seek_pts=info.frame_pts[seek],
        frames=tuple(frames),
        last_frame=frames[-1],
    )
