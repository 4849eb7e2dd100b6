"""Video files: probe, choose frames, split the work at keyframes, and decode with PyAV.

A video is handled in three steps, each cheap to ship to another process:

1. `probe_video` (`probe`) demuxes the file once, without decoding (only the first frame is
   decoded, to read the display rotation), and returns a `VideoInfo`: size as displayed,
   codec, frame rate, and the pts of every frame in presentation order with the keyframes
   among them.
2. `select_frames` (`selection`) turns the user's options (stride, start/end frame, frame
   count, duration) into source frame indices; `validate_frame_options` checks those options
   before any video is opened.
3. `plan_segments` (`segments`) groups the selected frames into `VideoSegment`s that each
   start at a keyframe, and `decode_segment` (`decode`) decodes one segment on its own,
   yielding one `DecodedFrame` per selected frame, in order.

The modules: `container` (opening files with PyAV, `VideoError`), `probe`, `selection`,
`segments`, `decode`, and `frames` (RGB conversion and display rotation). Every public name
is importable from this package.

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

Importing this package imports PyAV and numpy, never torch or Ray, so Ray tasks load it
cheaply.

Example:
    >>> info = probe_video("clip.mp4")                                    # doctest: +SKIP
    >>> selected = select_frames(info, stride=5, duration=10.0)           # doctest: +SKIP
    >>> for segment in plan_segments(info, selected):                     # doctest: +SKIP
    ...     for frame in decode_segment(segment, info):
    ...         print(frame.frame_index, frame.timestamp, frame.image.shape)

"""

from __future__ import annotations

from engine.sources.video.container import VideoError
from engine.sources.video.decode import (
    DecodedFrame,
    decode_frames_sequential,
    decode_segment,
    load_frame,
)
from engine.sources.video.frames import frame_to_rgb, rotate_image
from engine.sources.video.probe import VIDEO_EXTENSIONS, VideoInfo, is_video_path, probe_video
from engine.sources.video.segments import DEFAULT_FRAMES_PER_SEGMENT, VideoSegment, plan_segments
from engine.sources.video.selection import (
    FrameSelectionError,
    select_frames,
    validate_frame_options,
)

__all__ = [
    "DEFAULT_FRAMES_PER_SEGMENT",
    "VIDEO_EXTENSIONS",
    "DecodedFrame",
    "FrameSelectionError",
    "VideoError",
    "VideoInfo",
    "VideoSegment",
    "decode_frames_sequential",
    "decode_segment",
    "frame_to_rgb",
    "is_video_path",
    "load_frame",
    "plan_segments",
    "probe_video",
    "rotate_image",
    "select_frames",
    "validate_frame_options",
]
