"""Video probing, frame selection, keyframe-aligned segments and decoding (engine.sources.video)."""

from __future__ import annotations

import dataclasses
import itertools
import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from videos import (
    boxes_match,
    copy_with_corruption,
    truncate,
    write_audio_only,
    write_video,
)

from engine.sources.video import (
    VIDEO_EXTENSIONS,
    DecodedFrame,
    FrameSelectionError,
    VideoError,
    VideoInfo,
    decode_frames_sequential,
    decode_segment,
    is_video_path,
    load_frame,
    plan_segments,
    probe_video,
    rotate_image,
    select_frames,
    validate_frame_options,
)
from engine.sources.video import decode as video_decode

FPS = 30
VFR_PTS = [0, 30, 50, 120, 130, 200, 260, 270, 400, 410, 415, 500, 533, 600, 700, 701, 760, 800]


def _have(codec: str) -> bool:
    return codec in av.codecs_available


def _skip_without(codec: str) -> None:
    if not _have(codec):
        pytest.skip(f"encoder {codec} is not available in this PyAV build")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Small test videos, written once: name -> (path, ground truth)."""
    root = tmp_path_factory.mktemp("videos")
    made: dict[str, tuple[Path, list]] = {}

    def make(name: str, num_frames: int, **kwargs) -> None:
        path = root / name
        made[name] = (path, write_video(path, num_frames, **kwargs))

    # H.264 with B-frames and a keyframe every 12 frames: 8 GOPs.
    make("h264.mp4", 90, gop=12)
    make("h264.mkv", 60, gop=10)
    make("vfr.mkv", len(VFR_PTS), gop=5, vfr_pts=VFR_PTS)
    make("vfr.mp4", len(VFR_PTS), gop=5, vfr_pts=VFR_PTS)
    if _have("libx265"):
        make("hevc.mp4", 60, gop=12, codec="libx265")  # x265: open GOPs (CRA keyframes)
    if _have("libvpx-vp9"):
        make("vp9.webm", 40, gop=10, codec="libvpx-vp9")
    make("mjpeg.avi", 40, codec="mjpeg")
    # MPEG-TS: FFmpeg's seek there lands a GOP late; AVI: B-frames get guessed, wrong pts;
    # raw H.264: packets have no timestamps at all.
    make("h264.ts", 60, gop=10)
    make("h264.avi", 60, gop=10)
    make("raw.h264", 30, gop=10)
    return made


# --------------------------------------------------------------------------- helpers
def _expected(timestamps, stride, start, end, num, duration):
    """Frame selection by the spec, as a plain loop, in exact (decimal) arithmetic."""
    timestamps = [Fraction(str(t)) for t in timestamps]
    duration = None if duration is None else Fraction(str(duration))
    out = []
    i = start
    while i < len(timestamps):
        if end is not None and i >= end:
            break
        if duration is not None and timestamps[i] >= timestamps[start] + duration:
            break
        if num is not None and len(out) >= num:
            break
        out.append(i)
        i += stride
    return out


def _naive_decode(path: Path, rotation: int = 0) -> list[np.ndarray]:
    """Every frame in decoder output order, straight from PyAV (an independent reference)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [
            rotate_image(frame.to_ndarray(format="rgb24"), rotation)
            for frame in container.decode(stream)
        ]


def _segmented(info: VideoInfo, selected, frames_per_segment) -> list[DecodedFrame]:
    segments = plan_segments(info, selected, frames_per_segment=frames_per_segment)
    return [frame for segment in segments for frame in decode_segment(segment, info)]


def _assert_same(a: list[DecodedFrame], b: list[DecodedFrame]) -> None:
    assert [f.frame_index for f in a] == [f.frame_index for f in b]
    assert [f.timestamp for f in a] == [f.timestamp for f in b]
    for x, y in zip(a, b):
        assert x.ok and y.ok, (x.error, y.error)
        assert x.image.shape == y.image.shape
        assert np.array_equal(x.image, y.image), x.frame_index


def _check_image(frame: DecodedFrame, truth, height: int, width: int) -> None:
    image = frame.image
    assert image is not None, frame.error
    assert image.shape == (height, width, 3)
    assert image.dtype == np.uint8
    assert image.flags.c_contiguous
    assert boxes_match(image, truth[frame.frame_index]), frame.frame_index


# --------------------------------------------------------------------------- paths
def test_video_extensions():
    assert {".mp4", ".mov", ".avi", ".mkv", ".webm", ".ts", ".mts", ".wmv"} <= VIDEO_EXTENSIONS
    assert all(ext == ext.lower() and ext.startswith(".") for ext in VIDEO_EXTENSIONS)
    assert is_video_path("a/b/clip.MP4")
    assert is_video_path(Path("x.mkv"))
    assert not is_video_path("photo.jpg")
    assert not is_video_path("mp4")


# --------------------------------------------------------------------------- selection
TIMESTAMPS = [0.0, 0.01, 0.05, 0.1, 0.1, 0.2, 0.21, 0.3, 0.5, 0.51, 0.6, 0.7, 0.71, 0.9, 1.0]


@pytest.mark.parametrize("stride", [1, 2, 3, 7])
def test_select_frames_every_combination(stride):
    n = len(TIMESTAMPS)
    combos = itertools.product(
        [0, 1, 4, n - 1],  # start_frame
        [None, 1, 5, 9, n, n + 10],  # end_frame
        [None, 1, 2, 5, 100],  # num_frames
        [None, 0.05, 0.1, 0.3, 0.55, 100.0],  # duration
    )
    checked = 0
    for start, end, num, duration in combos:
        kwargs = dict(
            stride=stride, start_frame=start, end_frame=end, num_frames=num, duration=duration
        )
        if end is not None and end <= start:
            with pytest.raises(FrameSelectionError, match="end_frame"):
                select_frames(TIMESTAMPS, **kwargs)
            continue
        expected = _expected(TIMESTAMPS, stride, start, end, num, duration)
        assert select_frames(TIMESTAMPS, **kwargs) == expected, kwargs
        checked += 1
    assert checked > 400


def test_select_frames_on_probed_vfr_video(videos):
    info = probe_video(videos["vfr.mkv"][0])
    timestamps = [Fraction(pts, 1000) for pts in VFR_PTS]
    for stride, start, end, num, duration in itertools.product(
        [1, 2, 5], [0, 3, 9], [None, 12, 100], [None, 2, 4], [None, 0.1, 0.25, 0.5]
    ):
        if end is not None and end <= start:
            continue
        got = select_frames(
            info, stride=stride, start_frame=start, end_frame=end, num_frames=num, duration=duration
        )
        assert got == _expected(timestamps, stride, start, end, num, duration)


def test_select_frames_defaults_and_clamping():
    n = len(TIMESTAMPS)
    assert select_frames(TIMESTAMPS) == list(range(n))
    assert select_frames(TIMESTAMPS, end_frame=10 * n) == list(range(n))
    assert select_frames(TIMESTAMPS, num_frames=10 * n) == list(range(n))
    assert select_frames(TIMESTAMPS, duration=1e6) == list(range(n))
    assert select_frames(TIMESTAMPS, stride=100) == [0]
    assert select_frames(TIMESTAMPS, start_frame=n - 1) == [n - 1]
    # duration is measured from start_frame's timestamp, and its end is exclusive
    assert select_frames(TIMESTAMPS, start_frame=5, duration=0.1) == [5, 6]  # 0.2 + 0.1 > 0.3
    assert select_frames(TIMESTAMPS, start_frame=5, duration=0.1000001) == [5, 6, 7]
    assert select_frames(TIMESTAMPS, start_frame=3, duration=0.4) == [3, 4, 5, 6, 7]
    assert select_frames(TIMESTAMPS, duration=0.1) == [0, 1, 2]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"stride": 0}, ["stride", "0"]),
        ({"stride": -2}, ["stride", "-2"]),
        ({"stride": 1.5}, ["stride", "1.5"]),
        ({"stride": True}, ["stride", "True"]),
        ({"start_frame": -1}, ["start_frame", "-1"]),
        ({"start_frame": 2.0}, ["start_frame", "2.0"]),
        ({"end_frame": -3}, ["end_frame", "-3"]),
        ({"end_frame": 4.5}, ["end_frame", "4.5"]),
        ({"start_frame": 5, "end_frame": 5}, ["end_frame", "5"]),
        ({"start_frame": 6, "end_frame": 2}, ["start_frame=6", "end_frame=2"]),
        ({"num_frames": 0}, ["num_frames", "0"]),
        ({"num_frames": -1}, ["num_frames", "-1"]),
        ({"num_frames": 2.5}, ["num_frames", "2.5"]),
        ({"duration": 0}, ["duration", "0"]),
        ({"duration": -1.0}, ["duration", "-1.0"]),
        ({"duration": float("nan")}, ["duration", "nan"]),
        ({"duration": "3"}, ["duration", "'3'"]),
    ],
)
def test_invalid_frame_options(kwargs, words):
    with pytest.raises(FrameSelectionError) as raised:
        validate_frame_options(**kwargs)
    for word in words:
        assert word in str(raised.value)
    with pytest.raises(FrameSelectionError) as raised:
        select_frames(TIMESTAMPS, **kwargs)
    assert words[0] in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_valid_frame_options_pass():
    validate_frame_options()
    validate_frame_options(stride=3, start_frame=2, end_frame=3, num_frames=1, duration=0.5)
    validate_frame_options(stride=np.int64(2), start_frame=np.int32(0), duration=2)


def test_start_frame_past_the_end(videos):
    path, _ = videos["h264.mkv"]
    info = probe_video(path)
    with pytest.raises(FrameSelectionError, match="has 60 frames") as raised:
        select_frames(info, start_frame=60)
    assert str(path) in str(raised.value)
    with pytest.raises(FrameSelectionError, match="has 15 frames"):
        select_frames(TIMESTAMPS, start_frame=100)


# --------------------------------------------------------------------------- segments
@pytest.mark.parametrize("frames_per_segment", [1, 5, 16, 64, 1000])
@pytest.mark.parametrize(("stride", "start"), [(1, 0), (3, 5), (7, 2), (40, 1)])
def test_plan_segments_cover_selection_at_keyframes(videos, frames_per_segment, stride, start):
    info = probe_video(videos["h264.mp4"][0])
    assert info.keyframes == tuple(range(0, 90, 12))
    selected = select_frames(info, stride=stride, start_frame=start)
    segments = plan_segments(info, selected, frames_per_segment=frames_per_segment)
    assert [i for s in segments for i in s.frames] == selected
    gops_seen: set[int] = set()
    for k, segment in enumerate(segments):
        assert segment.path == info.path
        assert segment.seek_frame in info.keyframes
        assert segment.seek_pts == info.frame_pts[segment.seek_frame]
        assert segment.seek_frame == info.keyframe_before(segment.frames[0])
        assert list(segment.frames) == sorted(set(segment.frames))
        assert segment.last_frame == segment.frames[-1]
        gops = {info.keyframe_before(i) for i in segment.frames}
        assert not gops & gops_seen  # cut only between GOPs
        gops_seen |= gops
        if k < len(segments) - 1:
            assert len(segment.frames) >= frames_per_segment
            # the segment closed as soon as it was full, at a GOP boundary
            last_gop = info.keyframe_before(segment.last_frame)
            assert len([i for i in segment.frames if i < last_gop]) < frames_per_segment
    assert plan_segments(info, []) == []


def test_plan_segments_rejects_bad_selection(videos):
    info = probe_video(videos["h264.mkv"][0])
    with pytest.raises(ValueError, match="ascending"):
        plan_segments(info, [3, 2])
    with pytest.raises(ValueError, match="ascending"):
        plan_segments(info, [3, 3])
    with pytest.raises(ValueError, match="outside"):
        plan_segments(info, [0, 60])
    with pytest.raises(ValueError, match="frames_per_segment"):
        plan_segments(info, [0], frames_per_segment=0)


# --------------------------------------------------------------------------- decoding
@pytest.mark.parametrize(
    ("name", "stride", "start", "frames_per_segment"),
    [
        ("h264.mp4", 1, 0, 16),
        ("h264.mp4", 1, 0, 1),
        ("h264.mp4", 3, 5, 7),
        ("h264.mp4", 2, 17, 1),
        ("h264.mp4", 30, 4, 2),  # sparse: seeks past GOPs without selected frames
        ("h264.mkv", 4, 3, 3),
        ("hevc.mp4", 1, 0, 5),
        ("hevc.mp4", 5, 1, 2),
        ("vp9.webm", 3, 2, 4),
        ("vfr.mp4", 1, 1, 3),
        ("mjpeg.avi", 2, 1, 5),
        ("h264.ts", 1, 0, 5),
        ("h264.ts", 7, 3, 1),
        ("h264.avi", 1, 0, 4),
        ("h264.avi", 3, 11, 1),
        ("raw.h264", 2, 1, 3),
    ],
)
def test_segment_decoding_equals_sequential(videos, name, stride, start, frames_per_segment):
    if name not in videos:
        pytest.skip(f"no encoder for {name}")
    path, truth = videos[name]
    info = probe_video(path)
    selected = select_frames(info, stride=stride, start_frame=start)
    segmented = _segmented(info, selected, frames_per_segment)
    sequential = list(decode_frames_sequential(path, selected))
    _assert_same(segmented, sequential)
    assert [f.frame_index for f in segmented] == selected
    for frame in sequential:
        assert frame.timestamp == info.timestamp(frame.frame_index)
        _check_image(frame, truth, info.height, info.width)
    # and the sequential reference matches PyAV's own decode order
    naive = _naive_decode(path)
    assert len(naive) == info.num_frames
    for frame in sequential:
        assert np.array_equal(frame.image, naive[frame.frame_index])


def test_decode_segment_probes_when_no_info(videos):
    path, truth = videos["h264.mkv"]
    info = probe_video(path)
    segment = plan_segments(info, [25, 26, 33])[0]
    frames = list(decode_segment(segment))
    assert [f.frame_index for f in frames] == [25, 26, 33]
    for frame in frames:
        _check_image(frame, truth, 120, 160)


def test_only_selected_frames_are_converted(videos, monkeypatch):
    path, _ = videos["h264.mp4"]
    info = probe_video(path)
    calls: list[int] = []
    convert = video_decode.frame_to_rgb

    def counting(frame, rotation):
        calls.append(frame.pts)
        return convert(frame, rotation)

    monkeypatch.setattr(video_decode, "frame_to_rgb", counting)
    selected = select_frames(info, stride=5, start_frame=3)
    decoded = _segmented(info, selected, 4)
    assert len(calls) == len(selected) == len(decoded)
    assert sorted(calls) == [info.frame_pts[i] for i in selected]
    calls.clear()
    assert len(list(decode_frames_sequential(path, selected, info))) == len(selected)
    assert len(calls) == len(selected)


def test_decoding_stops_early_without_error(videos):
    path, _ = videos["h264.mp4"]
    info = probe_video(path)
    generator = decode_segment(plan_segments(info, list(range(90)))[0], info)
    first = next(generator)
    assert first.frame_index == 0 and first.ok
    generator.close()


def test_load_frame(videos):
    path, truth = videos["h264.mp4"]
    info = probe_video(path)
    naive = _naive_decode(path)
    for index in (0, 1, 11, 12, 13, 47, 89):
        image = load_frame(path, index, info)
        assert np.array_equal(image, naive[index]), index
        assert boxes_match(image, truth[index])
    assert np.array_equal(load_frame(path, 30), naive[30])
    with pytest.raises(VideoError, match="has 90 frames"):
        load_frame(path, 90, info)
    with pytest.raises(VideoError, match="frame"):
        load_frame(path, -1, info)


# --------------------------------------------------------------------------- probe
@pytest.mark.parametrize(
    ("codec", "suffix", "decoder"),
    [
        ("libx264", ".mp4", "h264"),
        ("libx265", ".mp4", "hevc"),
        ("libvpx-vp9", ".webm", "vp9"),
        ("mjpeg", ".avi", "mjpeg"),
    ],
)
def test_probe_codecs(tmp_path, codec, suffix, decoder):
    _skip_without(codec)
    path = tmp_path / f"clip{suffix}"
    truth = write_video(path, 40, size=(160, 120), codec=codec, gop=10)
    info = probe_video(path)
    assert info.path == str(path)
    assert info.codec == decoder
    assert (info.width, info.height, info.rotation) == (160, 120, 0)
    assert info.fps == pytest.approx(FPS)
    assert info.num_frames == 40
    assert info.duration_s == pytest.approx(40 / FPS, abs=2e-3)
    assert list(info.frame_pts) == sorted(info.frame_pts)
    assert len(set(info.frame_pts)) == 40
    expected_keys = tuple(range(40)) if codec == "mjpeg" else (0, 10, 20, 30)
    assert info.keyframes == expected_keys
    for i in range(40):  # constant rate: frame i at i / fps (webm stores milliseconds)
        assert info.timestamp(i) == pytest.approx(i / FPS, abs=1e-3)
    assert info.timestamp(0) == 0.0
    frames = list(decode_frames_sequential(path, range(40), info))
    for frame in frames:
        _check_image(frame, truth, 120, 160)


@pytest.mark.parametrize("name", ["vfr.mkv", "vfr.mp4"])
def test_variable_frame_rate_timestamps(videos, name):
    path, truth = videos[name]
    info = probe_video(path)
    assert info.num_frames == len(VFR_PTS)
    for i, pts in enumerate(VFR_PTS):
        assert info.timestamp(i) == pytest.approx(pts / 1000, abs=1e-9)
    selected = select_frames(info, stride=2)
    decoded = _segmented(info, selected, 2)
    assert [f.timestamp for f in decoded] == pytest.approx([VFR_PTS[i] / 1000 for i in selected])
    for frame in decoded:
        _check_image(frame, truth, 120, 160)
    # duration follows the timestamps, not index / fps
    assert select_frames(info, start_frame=3, duration=0.2) == [3, 4, 5, 6, 7]


@pytest.mark.parametrize(
    ("codec", "suffix", "pix_fmt"),
    [("libx264", ".mp4", "yuv444p"), ("mjpeg", ".avi", None), ("libvpx-vp9", ".webm", None)],
)
def test_odd_size(tmp_path, codec, suffix, pix_fmt):
    # libx264 refuses odd sizes in yuv420p; 4:4:4, MJPEG (yuvj420p) and VP9 accept them.
    _skip_without(codec)
    path = tmp_path / f"odd{suffix}"
    truth = write_video(path, 12, size=(161, 121), codec=codec, gop=4, pix_fmt=pix_fmt)
    info = probe_video(path)
    assert (info.width, info.height) == (161, 121)
    decoded = _segmented(info, select_frames(info), 4)
    assert len(decoded) == 12
    for frame in decoded:
        _check_image(frame, truth, 121, 161)


@pytest.mark.parametrize(("rotation", "suffix"), [(90, ".mp4"), (180, ".mp4"), (270, ".mkv")])
def test_rotation(tmp_path, rotation, suffix):
    path = tmp_path / f"rot{rotation}{suffix}"
    truth = write_video(path, 24, size=(160, 96), gop=8, rotation=rotation)
    with av.open(str(path)) as container:  # stored turned; PyAV reports the display matrix
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == ((96, 160) if rotation % 180 else (160, 96))
    info = probe_video(path)
    assert info.rotation == rotation
    assert (info.width, info.height) == (160, 96)
    decoded = _segmented(info, select_frames(info, stride=3), 2)
    for frame in decoded:
        _check_image(frame, truth, 96, 160)
    assert load_frame(path, 23, info).shape == (96, 160, 3)


def test_rotate_image_is_counter_clockwise():
    image = np.arange(6).reshape(2, 3)
    assert rotate_image(image, 0).tolist() == image.tolist()
    assert rotate_image(image, 90).tolist() == [[2, 5], [1, 4], [0, 3]]
    assert rotate_image(image, -90).tolist() == rotate_image(image, 270).tolist()
    assert rotate_image(image, 180).tolist() == [[5, 4, 3], [2, 1, 0]]
    assert rotate_image(image, 90).flags.c_contiguous


# --------------------------------------------------------------------------- errors
def test_missing_file(tmp_path):
    path = tmp_path / "nope.mp4"
    with pytest.raises(VideoError, match=r"^file not found: .*nope\.mp4$"):
        probe_video(path)


@pytest.mark.parametrize("content", [b"", b"this is not a video at all\n" * 20])
def test_not_a_video_file(tmp_path, content):
    path = tmp_path / "fake.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoError) as raised:
        probe_video(path)
    assert str(raised.value).startswith(f"{path}: ")


def test_directory_is_not_a_video(tmp_path):
    with pytest.raises(VideoError, match="directory"):
        probe_video(tmp_path)


def test_no_video_stream(tmp_path):
    path = tmp_path / "sound.mkv"
    write_audio_only(path)
    with av.open(str(path)) as container:
        assert len(container.streams.audio) == 1
    with pytest.raises(VideoError, match=r": no video stream$") as raised:
        probe_video(path)
    assert str(raised.value).startswith(str(path))


def test_truncated_mp4_is_unreadable(videos, tmp_path):
    # PyAV writes the MP4 index (moov) at the end: a cut MP4 cannot be opened at all.
    cut = truncate(videos["h264.mp4"][0], 0.6, tmp_path / "cut.mp4")
    with pytest.raises(VideoError) as raised:
        probe_video(cut)
    assert str(raised.value).startswith(str(cut))


def _accounted(decoded: list[DecodedFrame], selected) -> tuple[list[int], list[int]]:
    assert [f.frame_index for f in decoded] == list(selected)  # each once, in order
    good = [f.frame_index for f in decoded if f.ok]
    bad = [f.frame_index for f in decoded if not f.ok]
    for frame in decoded:
        assert (frame.image is None) == (frame.error is not None)
    return good, bad


def test_truncated_file_accounts_for_every_frame(videos, tmp_path):
    path, truth = videos["h264.mkv"]
    info = probe_video(path)
    cut = truncate(path, 0.5, tmp_path / "cut.mkv")
    # The file was cut after it was probed: decode with the full file's index.
    cut_info = dataclasses.replace(info, path=str(cut))
    selected = select_frames(cut_info, stride=2, start_frame=1)
    for decoded in (
        _segmented(cut_info, selected, 4),
        list(decode_frames_sequential(cut, selected, cut_info)),
    ):
        good, bad = _accounted(decoded, selected)
        assert good and bad
        assert max(good) < min(bad)
        for frame in decoded:
            if frame.ok:
                _check_image(frame, truth, 120, 160)
            else:
                assert frame.error.startswith(f"{cut}: frame {frame.frame_index}: ")
                assert frame.timestamp == info.timestamp(frame.frame_index)
    # Probing the cut file itself finds fewer frames; each one yields an image or an error.
    short = probe_video(cut)
    assert 0 < short.num_frames < info.num_frames
    assert short.frame_pts == info.frame_pts[: short.num_frames]
    everything = select_frames(short)
    good, _ = _accounted(_segmented(short, everything, 3), everything)
    assert len(good) >= short.num_frames - 2


def test_corrupt_file_accounts_for_every_frame(videos):
    path, truth = videos["mjpeg.avi"]
    info = probe_video(path)
    broken = copy_with_corruption(path, 0.3, length=200)
    broken_info = dataclasses.replace(info, path=str(broken))
    selected = list(range(info.num_frames))
    for decoded in (
        _segmented(broken_info, selected, 8),
        list(decode_frames_sequential(broken, selected, broken_info)),
    ):
        good, bad = _accounted(decoded, selected)
        assert bad, "the corrupt JPEG should fail to decode"
        for frame in decoded:
            if not frame.ok:
                assert frame.error.startswith(f"{broken}: frame {frame.frame_index}: ")
                assert "cannot decode" in frame.error
        # the frames after the broken one keep their own index (no shift)
        wrong = [i for i in good if not boxes_match(decoded[i].image, truth[i])]
        assert len(wrong) <= 1
        assert decoded[-1].ok and boxes_match(decoded[-1].image, truth[-1])


def test_file_removed_after_probe(videos, tmp_path):
    path, _ = videos["h264.mkv"]
    info = dataclasses.replace(probe_video(path), path=str(tmp_path / "gone.mkv"))
    segment = plan_segments(info, [3, 4])[0]
    decoded = list(decode_segment(segment, info))
    assert [f.frame_index for f in decoded] == [3, 4]
    assert all(f.image is None and "file not found" in f.error for f in decoded)
    with pytest.raises(VideoError, match="file not found"):
        load_frame(info.path, 0, info)


def test_module_does_not_import_torch():
    code = "import sys, engine.sources.video; print('torch' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["False", "False"]


def test_timestamps_are_finite(videos):
    info = probe_video(videos["h264.mp4"][0])
    assert all(math.isfinite(info.timestamp(i)) for i in range(info.num_frames))
    assert Fraction(info.time_base).limit_denominator(100000) == Fraction(1, 15360)
