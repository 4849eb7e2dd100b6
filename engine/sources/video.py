"""Video files: probe, choose frames, split the work at keyframes, and decode with PyAV.

A video is handled in three steps, each cheap to ship to another process:

1. `probe_video` demuxes the file once, without decoding (only the first frame is decoded, to
   read the display rotation), and returns a `VideoInfo`: size as displayed, codec, frame
   rate, and the pts of every frame in presentation order with the keyframes among them.
2. `select_frames` turns the user's options (stride, start/end frame, frame count, duration)
   into source frame indices; `validate_frame_options` checks those options before any video
   is opened.
3. `plan_segments` groups the selected frames into `VideoSegment`s that each start at a
   keyframe, and `decode_segment` decodes one segment on its own, yielding one
   `DecodedFrame` per selected frame, in order.

Conventions:

- Frame index ``i`` is the i-th frame in presentation order: the i-th smallest packet pts
  (packets without pts fall back to their dts; packets with neither, and packets the
  demuxer marks as discarded, are not frames). One packet is one frame.
- A frame's timestamp is ``(frame_pts[i] - frame_pts[0]) * time_base`` seconds: the first
  frame is at 0.0 whatever the stream's start time, and variable frame rate is handled
  because timestamps come from pts, never from ``index / fps``.
- ``rotation`` is the display matrix's rotation in degrees counter-clockwise (PyAV's
  ``VideoFrame.rotation``; ffprobe's "rotation"), in 0, 90, 180, 270. Decoded pictures are
  turned by it, so images are ``height`` x ``width`` as displayed. Flips in the display
  matrix and non-square pixels are ignored.
- Decoding never holds more than one converted frame: everything here is a generator, and
  only selected frames are converted to arrays.

Example:
    >>> info = probe_video("clip.mp4")                                    # doctest: +SKIP
    >>> selected = select_frames(info, stride=5, duration=10.0)           # doctest: +SKIP
    >>> for segment in plan_segments(info, selected):                     # doctest: +SKIP
    ...     for frame in decode_segment(segment, info):
    ...         print(frame.frame_index, frame.timestamp, frame.image.shape)

"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import math
import numbers
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np

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

#: Default number of selected frames `plan_segments` aims for in one segment.
DEFAULT_FRAMES_PER_SEGMENT = 64

# Seconds under which two timestamps are taken as equal when applying ``duration``.
_TIME_EPSILON = 1e-9


class VideoError(ValueError):
    """A video could not be opened, probed or decoded.

    The message starts with the video's path and says what is wrong, e.g.
    ``"/data/a.mp4: no video stream"``; a missing file gives ``"file not found: <path>"``.
    """


class FrameSelectionError(ValueError):
    """Frame selection options are invalid, e.g. ``"stride must be an integer >= 1, got 0"``."""


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


@dataclasses.dataclass
class DecodedFrame:
    """One selected frame: its image, or why it could not be decoded.

    Attributes:
        frame_index: Source frame index in presentation order.
        timestamp: Seconds from the video's first frame.
        image: (H, W, 3) uint8 RGB, C-contiguous, rotation applied; None on error.
        error: Why the frame has no image (message starts with the video's path), or None.
    """

    frame_index: int
    timestamp: float
    image: np.ndarray | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the frame was decoded."""
        return self.error is None and self.image is not None


# --------------------------------------------------------------------------- file types
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


# --------------------------------------------------------------------------- probe
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
    container = _open(name)
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
                        frames, decode_error = [], _reason(e)
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
                raise VideoError(f"{name}: cannot read video packets: {_reason(e)}") from e
            logger.warning("%s: stopped reading after %d packets: %s", name, len(pts_list), e)
        if not pts_list and not untimed:
            raise VideoError(f"{name}: the video stream has no frames")
        if first is None:
            try:
                frames = stream.decode(None)
            except av.FFmpegError as e:
                frames, decode_error = [], _reason(e)
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
        rotation = _normalize_rotation(first.rotation)
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


# --------------------------------------------------------------------------- selection
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
        engine.sources.video.FrameSelectionError: stride must be an integer >= 1, got 0

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


# --------------------------------------------------------------------------- segments
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
    _check_selected(info, selected)
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


# --------------------------------------------------------------------------- decoding
def decode_segment(segment: VideoSegment, info: VideoInfo | None = None) -> Iterator[DecodedFrame]:
    """Decode one segment's selected frames.

    Seeks to the segment's keyframe, decodes in order, and identifies each decoded frame by
    its pts. Only the segment's frames are converted to arrays. When a later selected frame
    lies in a later GOP than the one being decoded, decoding seeks ahead to that GOP's
    keyframe instead of decoding the frames in between. Decoding stops after
    ``segment.last_frame``.

    Args:
        segment: A segment from `plan_segments`.
        info: The video's `VideoInfo`; probed from ``segment.path`` when None (pass it to
            avoid reading the file twice).

    Yields:
        Exactly one `DecodedFrame` per frame of ``segment.frames``, in that order: with an
        image, or with ``image=None`` and an error when the frame could not be decoded
        (corrupt or truncated file).

    Raises:
        VideoError: ``info`` is None and the video cannot be probed.

    Example:
        >>> for frame in decode_segment(segments[0], info):   # doctest: +SKIP
        ...     frame.frame_index, frame.image.shape
        (0, (720, 1280, 3))

    """
    if info is None:
        info = probe_video(segment.path)
    yield from _decode(info, segment.frames, segment.seek_frame, sparse=True)


def decode_frames_sequential(
    path: str | os.PathLike[str], selected: Sequence[int], info: VideoInfo | None = None
) -> Iterator[DecodedFrame]:
    """Decode selected frames in one pass from the start of the file, without seeking.

    Args:
        path: The video file.
        selected: Ascending, distinct frame indices.
        info: The video's `VideoInfo` (its frame index is used to decode ``path``); probed
            when None.

    Yields:
        One `DecodedFrame` per selected frame, in order (see `decode_segment`).

    Raises:
        VideoError: ``info`` is None and the video cannot be probed.
        ValueError: ``selected`` is not ascending, or has an index outside the video.

    """
    name = os.fspath(path)
    if info is None:
        info = probe_video(name)
    elif info.path != name:
        info = dataclasses.replace(info, path=name)
    frames = tuple(selected)
    _check_selected(info, frames)
    yield from _decode(info, frames, 0, sparse=False)


def load_frame(
    path: str | os.PathLike[str], frame_index: int, info: VideoInfo | None = None
) -> np.ndarray:
    """Decode one frame: seek to the keyframe before it and decode up to it.

    Args:
        path: The video file.
        frame_index: Frame index in presentation order.
        info: The video's `VideoInfo`; probed when None.

    Returns:
        An (H, W, 3) uint8 RGB array, rotation applied.

    Raises:
        VideoError: The video cannot be probed, the index is outside it, or the frame cannot
            be decoded.

    Example:
        >>> load_frame("clip.mp4", 42).shape                  # doctest: +SKIP
        (720, 1280, 3)

    """
    if info is None:
        info = probe_video(path)
    if isinstance(frame_index, bool) or not isinstance(frame_index, numbers.Integral):
        raise VideoError(f"{info.path}: frame index must be an integer, got {frame_index!r}")
    if not 0 <= frame_index < info.num_frames:
        raise VideoError(
            f"{info.path}: frame {frame_index} is outside the video: the video has "
            f"{info.num_frames} frames"
        )
    index = int(frame_index)
    (decoded,) = _decode(info, (index,), info.keyframe_before(index), sparse=False)
    if decoded.image is None:
        raise VideoError(decoded.error or f"{info.path}: frame {index}: not decoded")
    return decoded.image


def frame_to_rgb(frame: av.VideoFrame, rotation: int = 0) -> np.ndarray:
    """Convert a decoded frame to RGB and turn it by the display rotation.

    Args:
        frame: A decoded PyAV video frame.
        rotation: Degrees counter-clockwise (0, 90, 180 or 270), as in `VideoInfo`.

    Returns:
        A writable, C-contiguous (H, W, 3) uint8 RGB array as displayed.

    """
    return rotate_image(frame.to_ndarray(format="rgb24"), rotation)


def rotate_image(image: np.ndarray, rotation: int) -> np.ndarray:
    """Turn a decoded (stored) picture by its display rotation.

    Args:
        image: (H, W, ...) array as stored in the stream.
        rotation: Degrees counter-clockwise, a multiple of 90 (any sign).

    Returns:
        A C-contiguous array as displayed (H and W swapped for 90 and 270).

    Example:
        >>> rotate_image(np.array([[1, 2], [3, 4]]), 90).tolist()
        [[2, 4], [1, 3]]

    """
    k = _normalize_rotation(rotation) // 90
    return np.ascontiguousarray(np.rot90(image, k) if k else image)


# --------------------------------------------------------------------------- internals
def _open(name: str) -> av.container.InputContainer:
    """Open a file for reading, turning PyAV's errors into `VideoError`."""
    if not os.path.exists(name):
        raise VideoError(f"file not found: {name}")
    if os.path.isdir(name):
        raise VideoError(f"{name}: is a directory, not a video file")
    try:
        return av.open(name, mode="r", metadata_errors="ignore")
    except FileNotFoundError as e:
        raise VideoError(f"file not found: {name}") from e
    except av.FFmpegError as e:
        raise VideoError(f"{name}: not a readable video file: {_reason(e)}") from e
    except OSError as e:
        raise VideoError(f"{name}: cannot read file: {e.strerror or e}") from e


def _reason(error: BaseException) -> str:
    """A short, lowercase reason from a PyAV error (without errno and call details)."""
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return text[:1].lower() + text[1:]


def _declared_frames(container: Any, found: int, span: float, fps: float) -> int:
    """Frames the header's duration announces, when clearly more than were found."""
    declared_s = (container.duration or 0) / 1_000_000
    if fps <= 0 or declared_s <= span + 1.5 / fps:
        return found
    return max(found, int(round(declared_s * fps)))


def _normalize_rotation(degrees: float) -> int:
    """Round a rotation to a multiple of 90 in 0..270 (NaN gives 0)."""
    if degrees is None or not math.isfinite(degrees):
        return 0
    return int(round(degrees / 90.0)) % 4 * 90


def _frame_rate(stream: av.video.stream.VideoStream, pts: list[int], time_base: float) -> float:
    for rate in (stream.average_rate, stream.guessed_rate):
        if rate:
            return float(rate)
    span = (pts[-1] - pts[0]) * time_base
    return (len(pts) - 1) / span if len(pts) > 1 and span > 0 else 0.0


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise FrameSelectionError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise FrameSelectionError(f"{name} must be an integer >= {minimum}, got {value}")


def _check_selected(info: VideoInfo, frames: Sequence[int]) -> None:
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


class _IndexMapper:
    """Map decoded frames to frame indices.

    By pts (bisect on the sorted ``frame_pts``): a frame whose pts is missing or unknown is
    taken to be the one after the previous frame (or the keyframe sought to), so counts stay
    consistent, and repeated pts map to successive indices. With ``by_order`` (containers
    whose pts are guessed, such as AVI with B-frames, which get wrong pts), only the first frame
    after a seek is found by pts; the next ones are numbered in the decoder's output order.
    """

    def __init__(self, frame_pts: Sequence[int], by_order: bool) -> None:
        self.frame_pts = frame_pts
        self.by_order = by_order
        self.last = -1
        self.fresh = True

    def reset(self, expected: int) -> None:
        self.last = expected - 1
        self.fresh = True

    def __call__(self, frame: av.VideoFrame) -> int | None:
        n = len(self.frame_pts)
        index: int | None = None
        if not (self.by_order and not self.fresh):
            pts = frame.pts if frame.pts is not None else frame.dts
            if pts is not None:
                i = bisect.bisect_left(self.frame_pts, pts)
                if i < n and self.frame_pts[i] == pts:
                    index = i
                    last = self.last
                    if i <= last < n - 1 and self.frame_pts[last + 1] == pts:  # a repeated pts
                        index = last + 1
        self.fresh = False
        if index is None:
            if self.last + 1 >= n:
                return None
            index = self.last + 1
        self.last = index
        return index


class _Source:
    """An input container that can be sought, or reopened to start from the beginning."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.container: av.container.InputContainer | None = None
        self.stream: av.VideoStream | None = None
        self.fresh = False

    def start(self, pts: int | None) -> None:
        """Position at the keyframe at or before ``pts``, or at the start when None."""
        if self.container is None or (pts is None and not self.fresh):
            self.close()
            self.container = _open(self.name)
            if not self.container.streams.video:
                raise VideoError(f"{self.name}: no video stream")
            self.stream = self.container.streams.video[0]
        elif pts is not None:
            try:
                self.container.seek(pts, stream=self.stream, backward=True, any_frame=False)
            except av.FFmpegError as e:
                raise VideoError(f"cannot seek to pts {pts}: {_reason(e)}") from e
        self.fresh = False

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None


class _FrameReader:
    """Decoded frames from the container's current position, recording the first error."""

    def __init__(self, source: _Source) -> None:
        self.container = source.container
        self.stream = source.stream
        self.error: str | None = None

    def __iter__(self) -> Iterator[av.VideoFrame]:
        try:
            for packet in self.container.demux(self.stream):
                try:
                    frames = packet.decode()
                except av.FFmpegError as e:
                    self.error = self.error or f"cannot decode: {_reason(e)}"
                    continue
                yield from frames
        except av.FFmpegError as e:
            self.error = self.error or f"cannot read the file: {_reason(e)}"
            try:
                frames = self.stream.decode(None)
            except av.FFmpegError:
                return
            yield from frames


def _decode(
    info: VideoInfo, frames: Sequence[int], seek_frame: int, sparse: bool
) -> Iterator[DecodedFrame]:
    """Yield one `DecodedFrame` per index of ``frames`` (ascending).

    Starts at keyframe ``seek_frame`` (frame 0: the start of the file, without seeking).
    With ``sparse``, seeks ahead whenever the next wanted frame's keyframe lies past the
    last decoded frame. A seek that lands after the keyframe asked for (some demuxers, e.g.
    MPEG-TS, seek inexactly) is retried from the keyframe before, then from the start.
    """
    pos = 0
    source = _Source(info.path)
    try:
        source.start(None)
    except VideoError as e:
        for index in frames:
            yield _failed(info, index, str(e))
        return
    # AVI stores no pts: FFmpeg guesses them, wrongly for reordered (B-)frames.
    reordered_avi = source.container.format.name == "avi" and bool(
        source.stream.codec_context.has_b_frames
    )
    by_order = reordered_avi or _untimed(info)
    mapper = _IndexMapper(info.frame_pts, by_order)
    try:
        target = seek_frame
        attempt = 0
        while pos < len(frames):
            try:
                source.start(info.frame_pts[target] if target > 0 else None)
            except VideoError as e:
                for index in frames[pos:]:
                    yield _failed(info, index, str(e))
                return
            mapper.reset(target)
            reader = _FrameReader(source)
            resume: int | None = None
            first = True
            for frame in reader:
                index = mapper(frame)
                if index is None:
                    continue
                wanted = frames[pos]
                if first:
                    first = False
                    if target > 0 and index > max(wanted, target):
                        resume = _earlier_start(info, target, attempt)
                        attempt += 1
                        break
                    attempt = 0
                if index < wanted:
                    continue
                while pos < len(frames) and frames[pos] < index:
                    yield _failed(info, frames[pos], reader.error or "the decoder skipped it")
                    pos += 1
                if pos < len(frames) and frames[pos] == index:
                    yield DecodedFrame(index, info.timestamp(index), _convert(frame, info.rotation))
                    pos += 1
                if pos == len(frames):
                    return
                if sparse:
                    keyframe = info.keyframe_before(frames[pos])
                    if keyframe > index:
                        resume = keyframe
                        break
            else:
                if first and target > 0:  # the seek landed past the end of the file
                    resume = _earlier_start(info, target, attempt)
                    attempt += 1
                else:
                    reason = reader.error or "the video ended before it (truncated file?)"
                    for index in frames[pos:]:
                        yield _failed(info, index, reason)
                    return
            target = resume
    finally:
        source.close()


def _earlier_start(info: VideoInfo, keyframe: int, attempt: int) -> int:
    """Where to start after a seek to ``keyframe`` landed too late.

    First the keyframe before it, then the start of the file (0).
    """
    if attempt > 0:
        return 0
    k = bisect.bisect_left(info.keyframes, keyframe)
    return info.keyframes[k - 1] if k > 0 else 0


def _untimed(info: VideoInfo) -> bool:
    """Whether the frame pts were made up by `probe_video` (packets had no timestamps)."""
    return info.keyframes == (0,) and info.frame_pts == tuple(range(info.num_frames))


def _convert(frame: av.VideoFrame, rotation: int) -> np.ndarray:
    """The one place decoded frames become arrays (tests count calls here)."""
    return frame_to_rgb(frame, rotation)


def _failed(info: VideoInfo, index: int, reason: str) -> DecodedFrame:
    if not reason.startswith(info.path):
        reason = f"{info.path}: frame {index}: not decoded: {reason}"
    return DecodedFrame(index, info.timestamp(index), None, reason)
