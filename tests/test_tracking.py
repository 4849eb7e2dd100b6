"""Tracking over boxmot: conversions, tracker factory, identity stability, exports.

The video formats of platforms are tested beside them (tests/test_supervisely_video.py).
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest

from engine import plugins
from engine.detections import Detections
from engine.models.reference import COLORS, ColorBoxDetector
from engine.prediction import Prediction
from engine.tracking import (
    TRACKERS,
    VideoAnnotation,
    draw_tracks,
    from_boxmot,
    make_tracker,
    to_boxmot,
    track_predictions,
)
from engine.visualize import class_color

CLASSES = list(COLORS)
HEIGHT, WIDTH, NUM_FRAMES, FPS = 240, 320, 80, 30.0

# (colour, x0, y0, w, h, vx, vy): each object on its own rows, so none ever overlap;
# blue and yellow leave the frame part way through the video.
OBJECTS = [
    ("red", 0, 10, 30, 24, 3, 0),
    ("green", 290, 50, 28, 28, -2, 0),
    ("blue", 5, 92, 40, 22, 8, 0),
    ("yellow", 280, 130, 26, 30, -5, 0),
    ("magenta", 10, 180, 30, 30, 4, 0.5),
]


def gt_boxes(frame: int) -> dict[str, tuple[int, int, int, int]]:
    """Visible (clipped) box of every object at ``frame``, by colour."""
    out = {}
    for name, x0, y0, w, h, vx, vy in OBJECTS:
        x1, y1 = round(x0 + vx * frame), round(y0 + vy * frame)
        box = (max(0, x1), max(0, y1), min(WIDTH, x1 + w), min(HEIGHT, y1 + h))
        if (box[2] - box[0]) * (box[3] - box[1]) >= 4:
            out[name] = box
    return out


def render(frame: int) -> np.ndarray:
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    for name, (x1, y1, x2, y2) in gt_boxes(frame).items():
        image[y1:y2, x1:x2] = COLORS[name]
    return image


def make_prediction(detections: Detections, frame: int, image=None) -> Prediction:
    return Prediction(
        detections=detections,
        class_names=CLASSES,
        source="file",
        name="clip.mp4",
        path="/videos/clip.mp4",
        frame_index=frame,
        timestamp=frame / FPS,
        height=HEIGHT,
        width=WIDTH,
        index=frame,
        image=image,
    )


@pytest.fixture(scope="module")
def video_predictions() -> list[Prediction]:
    """Every frame of the generated video, detected by the real reference model."""
    detector = ColorBoxDetector()
    detector.load("cpu")
    frames = [render(f) for f in range(NUM_FRAMES)]
    detections = detector.infer(frames, 0.5)
    return [make_prediction(d, f) for f, d in enumerate(detections)]


def ids_by_object(tracked: list[Prediction]) -> tuple[dict[str, set[int]], dict[str, int]]:
    """Track ids each ground-truth object got, and in how many frames it was tracked."""
    ids: dict[str, set[int]] = {name: set() for name, *_ in OBJECTS}
    hits: dict[str, int] = dict.fromkeys(ids, 0)
    for p in tracked:
        truth = gt_boxes(p.frame_index)
        assert p.track_ids is not None and len(p.track_ids) == len(p)
        for box, name, tid in zip(p.boxes, p.classes, p.track_ids, strict=True):
            # the detector's exact box is kept, not the Kalman-smoothed one
            assert tuple(int(v) for v in box) == truth[name]
            ids[name].add(int(tid))
            hits[name] += 1
    return ids, hits


# ---------------------------------------------------------------------- conversions
def test_to_boxmot_shapes():
    dets = Detections(xyxy=[[1, 2, 11, 12], [5, 5, 9, 9]], scores=[0.9, 1.2], class_idxs=[3, 0])
    arr = to_boxmot(dets)
    assert arr.dtype == np.float32 and arr.shape == (2, 6)
    np.testing.assert_allclose(arr[0], [1, 2, 11, 12, 0.9, 3], rtol=1e-6)
    assert arr[1, 4] == 1.0  # clipped into boxmot's [0, 1]
    np.testing.assert_array_equal(to_boxmot(make_prediction(dets, 0)), arr)
    empty = to_boxmot(Detections.empty())
    assert empty.shape == (0, 6) and empty.dtype == np.float32
    assert to_boxmot(make_prediction(Detections.empty(), 0)).shape == (0, 6)


def test_from_boxmot_maps_det_ind_and_keeps_masks():
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    image[10:40, 10:50] = COLORS["red"]
    image[100:130, 200:240] = COLORS["green"]
    image[180:200, 60:90] = COLORS["blue"]
    detector = ColorBoxDetector(with_masks=True)
    detector.load("cpu")
    dets = detector.infer([image], 0.5)[0]
    assert len(dets) == 3 and dets.masks_rle is not None
    prediction = make_prediction(dets, 4)
    # rows: x1, y1, x2, y2, id, conf, cls, det_ind; Kalman boxes are off by a pixel
    tracks = np.array(
        [
            [*(dets.xyxy[2] + 1.5), 7, 0.9, dets.class_idxs[2], 2],
            [*(dets.xyxy[0] - 1.0), 5, 0.9, dets.class_idxs[0], 0],
            [0, 0, 10, 10, 9, 0.5, 0, -1],  # coasting track, no detection in this frame
        ]
    )
    tracked = from_boxmot(tracks, prediction)
    assert tracked.track_ids.tolist() == [5, 7]  # detector order kept
    np.testing.assert_array_equal(tracked.boxes, dets.xyxy[[0, 2]])
    np.testing.assert_array_equal(tracked.scores, dets.scores[[0, 2]])
    assert tracked.masks_rle == [dets.masks_rle[0], dets.masks_rle[2]]
    np.testing.assert_array_equal(tracked.masks, prediction.masks[[0, 2]])
    assert (tracked.frame_index, tracked.name, tracked.height) == (4, "clip.mp4", HEIGHT)
    assert prediction.track_ids is None  # the input is left alone

    empty = from_boxmot(np.zeros((0, 8)), prediction)
    assert len(empty) == 0 and empty.track_ids.shape == (0,) and empty.masks_rle == []
    with pytest.raises(ValueError, match="8"):
        from_boxmot(np.zeros((2, 7)), prediction)
    with pytest.raises(ValueError, match="detection 3"):
        from_boxmot(np.array([[0, 0, 5, 5, 1, 0.9, 0, 3]]), prediction)


def test_masks_follow_tracks():
    detector = ColorBoxDetector(with_masks=True)
    detector.load("cpu")
    frames = [render(f) for f in range(6)]
    predictions = [make_prediction(d, f) for f, d in enumerate(detector.infer(frames, 0.5))]
    tracked = list(track_predictions(predictions, make_tracker("bytetrack")))
    last = tracked[-1]
    assert len(last) == len(OBJECTS)
    for mask, name in zip(last.masks, last.classes, strict=True):
        x1, y1, x2, y2 = gt_boxes(5)[name]
        expected = np.zeros((HEIGHT, WIDTH), bool)
        expected[y1:y2, x1:x2] = True
        np.testing.assert_array_equal(mask, expected)


# ---------------------------------------------------------------------- tracker factory
def test_make_tracker_names_and_options():
    import boxmot

    assert isinstance(make_tracker("bytetrack"), boxmot.ByteTrack)
    assert isinstance(make_tracker("OC-SORT"), boxmot.OcSort)
    botsort = make_tracker("botsort")
    assert isinstance(botsort, boxmot.BotSort)
    assert botsort.use_embeddings is False and not botsort.requirements.embeddings
    assert make_tracker("botsort", with_reid=False).use_embeddings is False

    assert make_tracker("bytetrack", frame_rate=15).buffer_size == int(15 / 30 * 25)
    assert make_tracker("bytetrack", track_buffer=60).buffer_size == 60
    assert make_tracker("ocsort", frame_rate=15).max_age == 15
    assert make_tracker("ocsort", frame_rate=15, max_age=7).max_age == 7

    instance = boxmot.ByteTrack()
    assert make_tracker(instance) is instance


def test_make_tracker_errors(tmp_path):
    with pytest.raises(ValueError, match="bytetrack, ocsort, botsort"):
        make_tracker("sort++")
    with pytest.raises(ValueError, match="reid_weights"):
        make_tracker("strongsort")  # cannot run without ReID, and must not download
    with pytest.raises(ValueError, match="reid_weights"):
        make_tracker("botsort", use_embeddings=True)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        make_tracker("botsort", reid_weights=tmp_path / "osnet_x0_25_msmt17.pt")
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")
    with pytest.raises(ValueError, match="does not use ReID"):
        make_tracker("bytetrack", reid_weights=weights)
    with pytest.raises(ValueError, match="frame_rate"):
        make_tracker("bytetrack", frame_rate=0)
    with pytest.raises(TypeError):
        make_tracker(object())
    with pytest.raises(TypeError, match="no_such_option"):
        make_tracker("bytetrack", no_such_option=1)


@pytest.mark.parametrize("name", sorted(set(TRACKERS) - {"strongsort"}))
def test_every_tracker_without_reid_runs(name, video_predictions):
    tracker = make_tracker(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pixel-reading trackers warn about black frames
        tracked = list(track_predictions(video_predictions[:8], tracker))
    assert len(tracked) == 8
    assert all(p.track_ids is not None for p in tracked)
    assert len(tracked[-1]) >= 3  # BoostTrack drops wide boxes (aspect_ratio_thresh)


# ---------------------------------------------------------------------- identity
@pytest.mark.parametrize("name", ["bytetrack", "ocsort"])
@pytest.mark.parametrize(("stride", "offset"), [(1, 0), (2, 0), (1, 9), (2, 5)])
def test_tracks_keep_one_identity(video_predictions, name, stride, offset):
    frames = video_predictions[offset::stride]
    tracker = make_tracker(name, frame_rate=FPS / stride)
    tracked = list(track_predictions(frames, tracker))
    assert [p.frame_index for p in tracked] == [p.frame_index for p in frames]
    ids, hits = ids_by_object(tracked)
    for obj, obj_ids in ids.items():
        assert len(obj_ids) == 1, f"{obj} got track ids {sorted(obj_ids)}"
        visible = sum(obj in gt_boxes(p.frame_index) for p in frames)
        assert hits[obj] >= 0.8 * visible, f"{obj} tracked in {hits[obj]} of {visible} frames"
    all_ids = [i for s in ids.values() for i in s]
    assert len(set(all_ids)) == len(all_ids)  # no two objects share an id


def test_frames_out_of_order_raise(video_predictions):
    frames = [video_predictions[0], video_predictions[2], video_predictions[1]]
    stream = track_predictions(frames, "bytetrack")
    next(stream), next(stream)
    with pytest.raises(ValueError, match="increasing frame_index"):
        next(stream)
    with pytest.raises(ValueError, match="increasing frame_index"):
        list(track_predictions([video_predictions[3], video_predictions[3]], "bytetrack"))


def test_failed_frame_passes_through_without_advancing(video_predictions):
    failed = dataclasses.replace(
        video_predictions[1], detections=Detections.empty(), error="decode failed"
    )
    tracker = make_tracker("bytetrack")
    out = list(track_predictions([video_predictions[0], failed, video_predictions[2]], tracker))
    assert out[1] is failed and out[1].track_ids is None
    assert tracker.frame_count == 2
    assert sorted(out[0].track_ids) == sorted(out[2].track_ids)


def test_pixel_trackers_get_rgb_frames_as_bgr(video_predictions):
    seen = []

    class Recorder:
        requirements = make_tracker("botsort").requirements

        def update(self, dets, frame):
            seen.append(frame)
            return np.zeros((0, 8))

    def loader(p):
        return render(p.frame_index)

    list(track_predictions(video_predictions[:2], Recorder(), frame_loader=loader))
    np.testing.assert_array_equal(seen[1], render(1)[..., ::-1])
    with pytest.warns(UserWarning, match="black frames"):
        list(track_predictions(video_predictions[:2], Recorder()))
    np.testing.assert_array_equal(seen[-1], 0)

    calls = []
    list(track_predictions(video_predictions[:2], "bytetrack", lambda p: calls.append(p)))
    assert calls == []  # ByteTrack only needs the frame size: no decoding


# ---------------------------------------------------------------------- exports
def two_frame_video() -> VideoAnnotation:
    f0 = make_prediction(
        Detections(
            xyxy=[[10, 20, 50, 80], [100.5, 30, 120, 45.25]],
            scores=[0.9, 0.75],
            class_idxs=[0, 2],
            track_ids=[3, 1],
        ),
        0,
    )
    f1 = make_prediction(
        Detections(xyxy=[[12, 21, 52, 81]], scores=[0.875], class_idxs=[1], track_ids=[3]),
        1,
    )
    return VideoAnnotation.from_predictions([f0, f1], fps=FPS, num_frames=5)


def test_to_mot_lines():
    assert two_frame_video().to_mot() == (
        "1,1,100.50,30.00,19.50,15.25,0.7500,-1,-1,-1\n"
        "1,3,10.00,20.00,40.00,60.00,0.9000,-1,-1,-1\n"
        "2,3,12.00,21.00,40.00,60.00,0.8750,-1,-1,-1\n"
    )


def test_tracked_frames_and_frames_count():
    video = two_frame_video()
    assert [i for i, _ in video.tracked_frames()] == [0, 1]
    assert video.frames_count() == 5  # num_frames given
    video.num_frames = 0
    assert video.frames_count() == 2  # one past the last tracked frame
    failed = dataclasses.replace(
        video.frames[1], error="decode failed", detections=Detections.empty()
    )
    video.frames = [video.frames[0], failed]
    assert [i for i, _ in video.tracked_frames()] == [0]  # errors are left out
    assert video.frames_count() == 1


class _CountFormat:
    """A video format that keeps the track ids and the frame count (a stand-in plug-in)."""

    def encode(self, annotation):
        return {"ids": annotation.track_ids(), "frames": annotation.frames_count()}

    def decode(self, data, class_names, **fields):
        return VideoAnnotation(fields["name"], 0, 0, list(class_names), num_frames=data["frames"])

    def file_name(self, annotation):
        return f"{annotation.name}.count.json"


@pytest.fixture
def count_format(monkeypatch):
    """`_CountFormat` installed as the only video format, "count", and the default."""
    fmt = _CountFormat()

    def lookup(name=None):
        if name in (None, "count"):
            return fmt
        raise plugins.PluginError(f"unknown video annotation format {name!r}")

    monkeypatch.setattr(plugins, "video_annotation_format", lookup)
    return fmt


def test_video_formats_by_name(count_format):
    video = two_frame_video()
    assert video.to_format("count") == {"ids": [1, 3], "frames": 5}
    assert video.to_format() == video.to_count() == {"ids": [1, 3], "frames": 5}
    back = VideoAnnotation.from_format("count", {"frames": 7}, CLASSES, name="x.mp4")
    assert (back.name, back.num_frames, back.class_names) == ("x.mp4", 7, CLASSES)
    assert VideoAnnotation.from_count({"frames": 7}, CLASSES, name="x.mp4") == back
    assert video.from_count({"frames": 7}, CLASSES, name="x.mp4") == back
    assert not hasattr(video, "to_other") and not hasattr(VideoAnnotation, "from_other")
    with pytest.raises(AttributeError, match="unknown video annotation format 'other'"):
        video.to_other()
    with pytest.raises(plugins.PluginError):
        video.to_format("other")


def test_save_writes_the_format_and_mot(count_format, tmp_path):
    video = two_frame_video()  # no local video file: the drawn video is skipped
    paths = video.save(tmp_path / "out", video=False)
    assert paths["annotation"].name == "clip.mp4.count.json" and paths["mot"].name == "clip.txt"
    assert json.loads(paths["annotation"].read_text()) == {"ids": [1, 3], "frames": 5}
    assert paths["mot"].read_text() == video.to_mot()
    assert video.save(tmp_path / "again", format="count", video=False)["annotation"].is_file()
    with pytest.raises(plugins.PluginError):
        video.save(tmp_path / "other", format="other", video=False)


def test_tracked_video_saves_in_the_default_format(video_predictions, tmp_path):
    tracked = list(track_predictions(video_predictions[1::2], make_tracker("bytetrack")))
    video = VideoAnnotation.from_predictions(tracked, fps=FPS, num_frames=NUM_FRAMES)
    assert len(video.track_ids()) == len(OBJECTS)
    default = plugins.video_annotation_format()
    paths = video.save(tmp_path, video=False)
    assert paths["annotation"].name == default.file_name(video)
    assert json.loads(paths["annotation"].read_text()) == video.to_format()
    lines = paths["mot"].read_text().splitlines()
    assert len(lines) == sum(len(p) for p in tracked)
    assert {int(line.split(",")[0]) for line in lines} == {
        p.frame_index + 1 for p in tracked if len(p)
    }


def test_untracked_frames_are_rejected_by_exports(video_predictions):
    video = VideoAnnotation.from_predictions(video_predictions[:2])
    with pytest.raises(ValueError, match="not tracked"):
        video.to_mot()


# ---------------------------------------------------------------------- drawing
def test_draw_tracks(video_predictions):
    tracked = list(track_predictions(video_predictions[:3], "bytetrack"))[-1]
    image = render(2)
    drawn = draw_tracks(image, tracked, CLASSES)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert not np.array_equal(drawn, image)
    np.testing.assert_array_equal(image, render(2))  # input untouched
    # green (second row, well inside the frame) gets its label box in its track's color
    i = tracked.classes.index("green")
    x1, y1 = (int(v) for v in tracked.boxes[i][:2])
    label_pixels = drawn[max(0, y1 - 12) : y1, x1 : x1 + 30].reshape(-1, 3)
    color = class_color(int(tracked.track_ids[i]))
    assert (label_pixels == color).all(axis=1).any()

    failed = dataclasses.replace(tracked, error="boom")
    np.testing.assert_array_equal(draw_tracks(image, failed), image)
    untracked = draw_tracks(image, video_predictions[2])
    assert untracked.shape == image.shape


def test_variable_dt_uses_timestamps(video_predictions):
    tracker = make_tracker("bytetrack", variable_dt=True)
    ids, _ = ids_by_object(list(track_predictions(video_predictions[::3], tracker)))
    assert all(len(v) == 1 for v in ids.values())
    no_time = dataclasses.replace(video_predictions[0], timestamp=None)
    with pytest.raises(ValueError, match="timestamp"):
        list(track_predictions([no_time], make_tracker("bytetrack", variable_dt=True)))
