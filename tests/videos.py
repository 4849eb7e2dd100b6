"""Generated videos with known objects, for the video tests.

Each frame shows solid rectangles of pure colour moving on fixed, deterministic paths over a
black background; `write_video` encodes them with PyAV and returns the ground truth per frame
(as displayed, i.e. after any rotation metadata is applied).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from engine.models.reference import COLORS as REFERENCE_COLORS

Box = tuple[str, int, int, int, int]

#: The pure colours the rectangles are drawn in: the reference detector's classes.
COLORS = REFERENCE_COLORS

#: (colour, speed in px/frame, phase in px) of the rectangles drawn by `moving_boxes`.
_TRACKS = (("red", 3, 0), ("green", 5, 17), ("blue", 7, 40))


def _bounce(position: int, span: int) -> int:
    """Fold an unbounded position into 0..span, going back and forth (a triangle wave)."""
    if span <= 0:
        return 0
    period = 2 * span
    p = position % period
    return p if p <= span else period - p


def moving_boxes(index: int, width: int, height: int, side: int = 20) -> list[Box]:
    """Rectangles of frame ``index``: one per horizontal band, each moving left and right.

    The bands do not overlap, so neither do the rectangles; each is ``side`` x ``side`` px and
    stays at least 2 px inside the frame. Speeds differ, so nearby frames look different.
    """
    band = height // len(_TRACKS)
    side = min(side, band - 4, width - 4)
    boxes: list[Box] = []
    for row, (name, speed, phase) in enumerate(_TRACKS):
        x1 = 2 + _bounce(phase + speed * index, width - side - 4)
        y1 = row * band + (band - side) // 2
        boxes.append((name, x1, y1, x1 + side, y1 + side))
    return boxes


def draw_scene(height: int, width: int, boxes: Sequence[Box]) -> np.ndarray:
    """Draw solid rectangles (class name, x1, y1, x2, y2; x2/y2 exclusive) on black."""
    image = np.zeros((height, width, 3), np.uint8)
    for name, x1, y1, x2, y2 in boxes:
        image[y1:y2, x1:x2] = COLORS[name]
    return image


def find_boxes(image: np.ndarray, min_area: int = 30) -> dict[str, tuple[int, int, int, int]]:
    """Extent (x1, y1, x2, y2; exclusive) of each pure colour present in an RGB image.

    A pixel has a colour when each channel lies on the same side of 128 as the colour's.
    """
    bright = image >= 128
    found: dict[str, tuple[int, int, int, int]] = {}
    for name, rgb in COLORS.items():
        mask = np.all(bright == (np.array(rgb) >= 128), axis=2)
        if mask.sum() < min_area:
            continue
        ys, xs = np.nonzero(mask)
        found[name] = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return found


def boxes_match(image: np.ndarray, truth: Sequence[Box], tolerance: int = 2) -> bool:
    """Tell whether the rectangles seen in ``image`` are ``truth``, within ``tolerance`` px."""
    found = find_boxes(image)
    if set(found) != {b[0] for b in truth}:
        return False
    for name, *coords in truth:
        if any(abs(a - b) > tolerance for a, b in zip(found[name], coords)):
            return False
    return True


def _codec_options(codec: str, gop: int) -> dict[str, str]:
    if codec == "libx264":
        return {
            "preset": "veryfast",
            "crf": "12",
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:log-level=error",
        }
    if codec == "libx265":
        return {
            "preset": "ultrafast",
            "crf": "12",
            "x265-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=3:log-level=error",
        }
    if codec == "libvpx-vp9":
        return {
            "deadline": "realtime",
            "cpu-used": "8",
            "crf": "10",
            "b": "0",
            "lag-in-frames": "0",
        }
    if codec == "mjpeg":
        return {"q:v": "2"}
    return {}


def write_video(
    path: str | Path,
    num_frames: int,
    size: tuple[int, int] = (160, 120),
    fps: int = 30,
    codec: str = "libx264",
    gop: int = 10,
    boxes_at: Callable[[int, int, int], list[Box]] | None = None,
    rotation: int | None = None,
    vfr_pts: Sequence[int] | None = None,
    time_base: Fraction = Fraction(1, 1000),
    pix_fmt: str | None = None,
) -> list[list[Box]]:
    """Encode a video of moving coloured rectangles and return its ground truth.

    Args:
        path: Output file; its suffix picks the container (.mp4, .mkv, .webm, .avi, ...).
        num_frames: Frames to write.
        size: (width, height) as displayed. H.264/H.265 in yuv420p need even sizes; use
            ``pix_fmt="yuv444p"``, VP9 or MJPEG (yuvj420p) for odd ones.
        fps: Nominal frame rate (frame i at i / fps s unless ``vfr_pts`` is given).
        codec: Encoder name: "libx264", "libx265", "libvpx-vp9", "mjpeg", ...
        gop: Keyframe interval in frames (every frame is a keyframe for MJPEG).
        boxes_at: ``boxes_at(index, width, height)`` gives frame ``index``'s rectangles in
            display coordinates; `moving_boxes` by default.
        rotation: Display rotation in degrees counter-clockwise (PyAV's
            ``set_display_rotation`` convention, as read back by ``VideoFrame.rotation``). The
            picture is stored turned the other way, so that it displays as ``size``.
        vfr_pts: Explicit, increasing pts of each frame in ``time_base`` units (variable
            frame rate).
        time_base: Time base of ``vfr_pts``.
        pix_fmt: Pixel format to encode in; yuv420p (yuvj420p for MJPEG) by default.

    Returns:
        The rectangles of each frame, as displayed: ``truth[i]`` is a list of
        (class name, x1, y1, x2, y2), x2/y2 exclusive.

    """
    width, height = size
    boxes_at = boxes_at or moving_boxes
    k = (rotation or 0) // 90 % 4
    stored_w, stored_h = (height, width) if k % 2 else (width, height)
    truth: list[list[Box]] = []
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options=_codec_options(codec, gop))
        stream.width, stream.height = stored_w, stored_h
        stream.pix_fmt = pix_fmt or ("yuvj420p" if codec == "mjpeg" else "yuv420p")
        stream.codec_context.gop_size = gop
        if codec == "libvpx-vp9":
            stream.codec_context.options = {**stream.codec_context.options, "keyint_min": str(gop)}
        if vfr_pts is not None:
            stream.codec_context.time_base = time_base
            stream.time_base = time_base
        if rotation:
            stream.set_display_rotation(rotation)
        for i in range(num_frames):
            boxes = boxes_at(i, width, height)
            truth.append(list(boxes))
            # Displayed = stored turned `rotation` degrees counter-clockwise.
            stored = np.ascontiguousarray(np.rot90(draw_scene(height, width, boxes), -k))
            frame = av.VideoFrame.from_ndarray(stored, format="rgb24")
            if vfr_pts is not None:
                frame.pts = int(vfr_pts[i])
                frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return truth


def write_audio_only(path: str | Path, seconds: float = 0.5, rate: int = 8000) -> None:
    """Write a file with a single audio stream (a 440 Hz tone) and no video stream."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout="mono")
        n = int(seconds * rate)
        t = np.arange(n) / rate
        samples = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def truncate(path: str | Path, keep_fraction: float, out: str | Path | None = None) -> Path:
    """Copy the first ``keep_fraction`` of a file's bytes to ``out`` (default: "<stem>.trunc").

    Returns:
        The truncated copy's path (same suffix as ``path``).

    """
    src = Path(path)
    dst = Path(out) if out is not None else src.with_name(f"{src.stem}.trunc{src.suffix}")
    size = src.stat().st_size
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.write(fin.read(int(size * keep_fraction)))
    return dst


def copy_with_corruption(path: str | Path, at_fraction: float, length: int = 64) -> Path:
    """Copy a file, overwriting ``length`` bytes at ``at_fraction`` of it with 0xFF."""
    src = Path(path)
    dst = src.with_name(f"{src.stem}.corrupt{src.suffix}")
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as fp:
        fp.seek(int(src.stat().st_size * at_fraction))
        fp.write(b"\xff" * length)
    return dst
