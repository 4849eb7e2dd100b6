"""Know a video before decoding it: which files are videos, and what `probe_video` reads.

`probe_video` demuxes the file once (decoding only the first frame, for the display rotation)
into a `VideoInfo`: size as displayed, codec, frame rate, and the pts of every frame in
presentation order with the keyframes among them. The frame index, timestamp and rotation
conventions are those of `engine.sources.video`.

Example:
    >>> info = probe_video("clip.mp4")                          # doctest: +SKIP
    >>> info.num_frames, info.timestamp(30), info.keyframe_before(40)  # doctest: +SKIP
    (300, 1.0, 30)

"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import av

from engine.sources.video.container import VideoError, error_reason, open_container
from engine.sources.video.frames import normalize_rotation

logger = logging.getLogger(__name__)

#: File suffixes (lowercase) treated as videos.
VIDEO_EXTENSIONS = frozenset(
    {
        ".mp4",
        ".mov",
        ".avi",
        ".mkv",
        ".webm",
        ".m4v",
        ".mpg",
        ".mpeg",
        ".wmv",
        ".flv",
        ".ts",
        ".mts",
    }
)


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What `probe_video` learned about a video's first video stream.

    Attributes:
        path: The file, as given to `probe_video`.
        width: Width in pixels as displayed (after rotation).
        height: Height in pixels as displayed (after rotation).
        rotation: Display rotation, degrees counter-clockwise: 0, 90, 180 or 270.
        codec: Decoder name, e.g. "h264", "hevc", "vp9", "mjpeg".
        fps: Average frame rate (frames per second); 0.0 when unknown.
        num_frames: Number of frames (counted from packets, without decoding).
        duration_s: Seconds from the first frame's start to the last frame's end.
        frame_pts: pts of each frame in presentation order (ascending), in ``time_base``.
        keyframes: Indices of the keyframes (frames a decoder can start from), ascending.
        time_base: Seconds per pts unit.
        declared_frames: Frames the container's header announces (its duration times the
            frame rate) when that is more than ``num_frames``: the file lost its end
            (truncated). Otherwise equal to ``num_frames``.
    """

    path: str
    width: int
    height: int
    rotation: int
    codec: str
    fps: float
    num_frames: int
    duration_s: float
    frame_pts: tuple[int, ...]
    keyframes: tuple[int, ...]
    time_base: float
    declared_frames: int = 0

    @property
    def missing_frames(self) -> int:
        """Frames the header announces that the file does not hold (a truncated file)."""
        return max(0, self.declared_frames - self.num_frames)

    def timestamp(self, index: int) -> float:
        """Seconds from the first frame to frame ``index`` (``frame_pts`` based).

        Args:
            index: A frame index, 0 <= index < num_frames.

        Returns:
            ``(frame_pts[index] - frame_pts[0]) * time_base``.

        """
        return (self.frame_pts[index] - self.frame_pts[0]) * self.time_base

    def keyframe_before(self, index: int) -> int:
        """The last keyframe at or before frame ``index`` (0 when there is none).

        Args:
            index: A frame index.

        Returns:
            A frame index a decoder can start from to reach frame ``index``.

        """
        pos = bisect.bisect_right(self.keyframes, index)
        return self.keyframes[pos - 1] if pos else 0


def is_video_path(path: str | os.PathLike[str]) -> bool:
    """Tell whether a path names a video file, by its suffix (see `VIDEO_EXTENSIONS`).

    Args:
        path: A file path.

    Returns:
        True for e.g. "clip.MP4", False for "photo.jpg".

    Example:
        >>> is_video_path("clips/a.MP4"), is_video_path("a.jpg")
        (True, False)

    """
    return Path(os.fspath(path)).suffix.lower() in VIDEO_EXTENSIONS


def probe_video(path: str | os.PathLike[str]) -> VideoInfo:
    """Read a video's size, rotation, codec, frame timestamps and keyframes.

    Every packet of the first video stream is read (demuxed) but not decoded, except the
    first frame, which is decoded for its display rotation and size. A file that ends
    early (truncated) gives the frames that could be read.

    Args:
        path: The video file.

    Returns:
        The video's `VideoInfo`.

    Raises:
        VideoError: "file not found: <path>"; or a message starting with the path when the
            file is not a readable media file, has no video stream, or has no frames.

    Example:
        >>> info = probe_video("clip.mp4")                    # doctest: +SKIP
        >>> info.num_frames, info.width, info.height, info.fps  # doctest: +SKIP
        (300, 1280, 720, 30.0)

    """
    name = os.fspath(path)
    container = open_container(name)
    with container:
        if not container.streams.video:
            raise VideoError(f"{name}: no video stream")
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise VideoError(f"{name}: no decoder for the video codec")
        pts_list: list[int] = []
        key_pts: list[int] = []
        last_pts: int | None = None
        last_duration = 0
        untimed = 0
        first: av.VideoFrame | None = None
        decode_error: str | None = None
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # the flush packet at the end
                    continue
                if first is None:
                    try:
                        frames = stream.decode(packet)
                    except av.FFmpegError as e:
                        frames, decode_error = [], error_reason(e)
                    if frames:
                        first = frames[0]
                if packet.is_discard:  # e.g. before an MP4 edit list's start: never shown
                    continue
                ts = packet.pts if packet.pts is not None else packet.dts
                if ts is None:
                    untimed += 1
                    continue
                pts_list.append(ts)
                if packet.is_keyframe:
                    key_pts.append(ts)
                if last_pts is None or ts >= last_pts:
                    last_pts, last_duration = ts, packet.duration or 0
        except av.FFmpegError as e:
            if not pts_list and not untimed:
                raise VideoError(f"{name}: cannot read video packets: {error_reason(e)}") from e
            logger.warning("%s: stopped reading after %d packets: %s", name, len(pts_list), e)
        if not pts_list and not untimed:
            raise VideoError(f"{name}: the video stream has no frames")
        if first is None:
            try:
                frames = stream.decode(None)
            except av.FFmpegError as e:
                frames, decode_error = [], error_reason(e)
            first = frames[0] if frames else None
        if first is None:
            reason = f": {decode_error}" if decode_error else ""
            raise VideoError(f"{name}: no frame could be decoded{reason}")

        time_base = float(stream.time_base) if stream.time_base else 0.0
        if pts_list:
            if untimed:
                logger.warning("%s: ignored %d packets without timestamps", name, untimed)
            pts_list.sort()
            keyframes = sorted({bisect.bisect_left(pts_list, k) for k in sorted(key_pts)})
            fps = _frame_rate(stream, pts_list, time_base)
        else:
            # No timestamps at all (e.g. a raw H.264 stream): frames are numbered in decoding
            # order at the nominal rate, and decoding always starts from the beginning.
            logger.warning("%s: packets have no timestamps; assuming a constant rate", name)
            fps = _frame_rate(stream, [0], 0.0)
            time_base = 1.0 / fps if fps > 0 else 0.0
            pts_list = list(range(untimed))
            keyframes = [0]
            last_duration = 1
        rotation = normalize_rotation(first.rotation)
        stored_w, stored_h = first.width, first.height
        width, height = (stored_h, stored_w) if rotation in (90, 270) else (stored_w, stored_h)
        span = (pts_list[-1] - pts_list[0]) * time_base
        if last_duration > 0:
            span += last_duration * time_base
        elif fps > 0:
            span += 1.0 / fps
        return VideoInfo(
            path=name,
            width=width,
            height=height,
            rotation=rotation,
            codec=stream.codec_context.name,
            fps=fps,
            num_frames=len(pts_list),
            duration_s=span,
            frame_pts=tuple(pts_list),
            keyframes=tuple(keyframes),
            time_base=time_base,
            declared_frames=_declared_frames(container, len(pts_list), span, fps),
        )


def _declared_frames(container: Any, found: int, span: float, fps: float) -> int:
    """Frames the header's duration announces, when clearly more than were found."""
    declared_s = (container.duration or 0) / 1_000_000
    if fps <= 0 or declared_s <= span + 1.5 / fps:
        return found
    return max(found, int(round(declared_s * fps)))


def _frame_rate(stream: av.video.stream.VideoStream, pts: list[int], time_base: float) -> float:
    for rate in (stream.average_rate, stream.guessed_rate):
        if rate:
            return float(rate)
    span = (pts[-1] - pts[0]) * time_base
    return (len(pts) - 1) / span if len(pts) > 1 and span > 0 else 0.0
