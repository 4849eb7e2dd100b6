"""Decode selected frames with PyAV: one segment, a whole selection in one pass, or one frame.

Decoding identifies each decoded frame by its pts (see `engine.sources.video` for the frame
index conventions), converts only the selected frames to arrays, and never holds more than
one converted frame: everything here is a generator. A frame that cannot be decoded (corrupt
or truncated file) still yields a `DecodedFrame`, with ``image=None`` and the reason.

Example:
    >>> info = probe_video("clip.mp4")                          # doctest: +SKIP
    >>> segment = plan_segments(info, [0, 1, 60])[0]            # doctest: +SKIP
    >>> [f.frame_index for f in decode_segment(segment, info)]  # doctest: +SKIP
    [0, 1, 60]

"""

from __future__ import annotations

import bisect
import dataclasses
import numbers
import os
from collections.abc import Iterator, Sequence

import av
import numpy as np

from engine.sources.video.container import VideoError, error_reason, open_container
from engine.sources.video.frames import frame_to_rgb
from engine.sources.video.probe import VideoInfo, probe_video
from engine.sources.video.segments import VideoSegment
from engine.sources.video.selection import check_selected


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
    check_selected(info, frames)
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
            self.container = open_container(self.name)
            if not self.container.streams.video:
                raise VideoError(f"{self.name}: no video stream")
            self.stream = self.container.streams.video[0]
        elif pts is not None:
            try:
                self.container.seek(pts, stream=self.stream, backward=True, any_frame=False)
            except av.FFmpegError as e:
                raise VideoError(f"cannot seek to pts {pts}: {error_reason(e)}") from e
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
                    self.error = self.error or f"cannot decode: {error_reason(e)}"
                    continue
                yield from frames
        except av.FFmpegError as e:
            self.error = self.error or f"cannot read the file: {error_reason(e)}"
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
                    # The one place decoded frames become arrays (tests count these calls).
                    image = frame_to_rgb(frame, info.rotation)
                    yield DecodedFrame(index, info.timestamp(index), image)
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


def _failed(info: VideoInfo, index: int, reason: str) -> DecodedFrame:
    if not reason.startswith(info.path):
        reason = f"{info.path}: frame {index}: not decoded: {reason}"
    return DecodedFrame(index, info.timestamp(index), None, reason)
