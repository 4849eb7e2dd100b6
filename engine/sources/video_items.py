"""Split the video items of a resolved input into keyframe-aligned segment items.

The driver probes each video once (packets are demuxed, no frame is decoded), selects the
frames the settings ask for and cuts them into segments that start at a keyframe; each
segment becomes one `Item` that a Ray task decodes on its own. Every item is then
numbered by the first prediction row it produces, so rows keep one running index across
images and frames.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.sources.items import Item
from engine.sources.video import (
    DEFAULT_FRAMES_PER_SEGMENT,
    FrameSelectionError,
    VideoError,
    VideoInfo,
    VideoSegment,
    plan_segments,
    probe_video,
    select_frames,
)

if TYPE_CHECKING:
    from engine.settings import VideoSettings


@dataclass
class ExpandedItems:
    """Items with videos split into segments.

    Attributes:
        items: Images and video segments, each numbered by its first prediction row.
        videos: Path -> probed `VideoInfo` of every video that opened.
        renumbered: Old item index -> new index, for the items that were kept whole.
    """

    items: list[Item]
    videos: dict[str, VideoInfo] = field(default_factory=dict)
    renumbered: dict[int, int] = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        """Predictions the items produce."""
        return sum(item.num_rows for item in self.items)


def expand_videos(
    items: list[Item],
    options: VideoSettings,
    frames_per_segment: int = DEFAULT_FRAMES_PER_SEGMENT,
) -> ExpandedItems:
    """Probe every video item and replace it by its segments.

    A video that cannot be opened, or whose frame selection is invalid for it (a
    ``start_frame`` past its end), stays one item carrying the error.

    Args:
        items: Resolved items, in input order.
        options: The frame selection (the video settings of the call).
        frames_per_segment: About how many selected frames one segment holds.

    Returns:
        The expanded items, the probed videos and the renumbering of the other items.

    Example:
        >>> expanded = expand_videos(resolve_input("clip.mp4").items, VideoSettings(stride=2))
        ...                                                    # doctest: +SKIP
        >>> [item.frames[:3] for item in expanded.items][:1]   # doctest: +SKIP
        [(0, 2, 4)]
    """
    out = ExpandedItems([])
    out.items.extend(
        iter_expand_videos(items, options, out.videos, out.renumbered, frames_per_segment)
    )
    return out


def iter_expand_videos(
    items: Iterable[Item],
    options: VideoSettings,
    videos: dict[str, VideoInfo] | None = None,
    renumbered: dict[int, int] | None = None,
    frames_per_segment: int = DEFAULT_FRAMES_PER_SEGMENT,
) -> Iterator[Item]:
    """`expand_videos` lazily: yield the expanded items as ``items`` come.

    Args:
        items: Resolved items, in input order (an iterator is read once).
        options: The frame selection.
        videos: Path -> `VideoInfo`: a video found here is not probed again; each probed
            video is added.
        renumbered: Collects old index -> new index of the items kept whole.
        frames_per_segment: About how many selected frames one segment holds.
    """
    videos = {} if videos is None else videos
    row = 0
    for item in items:
        if item.source != "video" or item.error is not None or item.frames is not None:
            if renumbered is not None:
                renumbered[item.index] = row
            # items are frozen: one already in its place is shared, not copied
            yield item if item.index == row else replace(item, index=row)
            row += item.num_rows
            continue
        try:
            info = videos.get(item.path) or probe_video(item.path)
            selected = select_frames(
                _timestamps(info),
                stride=options.stride,
                start_frame=options.start_frame,
                end_frame=options.end_frame,
                num_frames=options.num_frames,
                duration=options.duration,
            )
        except (VideoError, FrameSelectionError) as exc:
            message = str(exc)
            if not message.startswith((item.name, str(item.path))):
                message = f"{item.name}: {message}"
            if renumbered is not None:
                renumbered[item.index] = row
            yield replace(item, index=row, error=message)
            row += 1
            continue
        videos[item.path] = info
        missing = [index for index in selected if index >= info.num_frames]
        selected = selected[: len(selected) - len(missing)]
        for segment in plan_segments(info, selected, frames_per_segment):
            yield replace(
                item,
                index=row,
                frames=segment.frames,
                seek_frame=segment.seek_frame,
                seek_pts=segment.seek_pts,
                last_frame=segment.last_frame,
            )
            row += len(segment.frames)
        if missing:  # announced by the header, cut off the file: an error each, not dropped
            error = (
                f"{item.name}: the file is truncated: it holds {info.num_frames} of the "
                f"{info.declared_frames} frames its header announces"
            )
            yield replace(item, index=row, frames=tuple(missing), error=error)
            row += len(missing)


def _timestamps(info: VideoInfo) -> list[float]:
    """Every frame's time, those a truncated file lost extrapolated at the frame rate."""
    times = [info.timestamp(index) for index in range(info.num_frames)]
    step = 1.0 / info.fps if info.fps > 0 else 0.0
    last = times[-1] if times else 0.0
    times.extend(last + step * (k + 1) for k in range(info.missing_frames))
    return times


def segment_of(item: Item) -> VideoSegment:
    """The `VideoSegment` a segment item stands for."""
    if item.frames is None or item.seek_frame is None or item.seek_pts is None:
        raise ValueError(f"{item.name}: item {item.index} is not a video segment")
    last = item.last_frame if item.last_frame is not None else item.frames[-1]
    return VideoSegment(str(item.path), item.seek_frame, item.seek_pts, item.frames, last)


def renumber_in_memory(
    in_memory: dict[int, np.ndarray], renumbered: dict[int, int]
) -> dict[int, Any]:
    """Move the in-memory images of a resolved input to their items' new indices."""
    return {renumbered[index]: image for index, image in in_memory.items()}
