"""Supervisely video annotation JSON of tracked videos: encoder, decoder, the format plug-in."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from connectors.supervisely.annotation import box_to_rectangle
from connectors.supervisely.video_annotation import (
    SuperviselyVideoFormat,
    video_annotation_file_name,
    video_from_supervisely,
    video_to_supervisely,
)
from engine import plugins
from engine.detections import Detections
from engine.prediction import Prediction
from engine.tracking import VideoAnnotation

CLASSES = ["red", "green", "blue", "yellow", "cyan"]
HEIGHT, WIDTH, FPS = 240, 320, 30.0


def frame(index: int, boxes, scores, classes, ids) -> Prediction:
    return Prediction(
        detections=Detections(
            xyxy=np.asarray(boxes, np.float32).reshape(-1, 4),
            scores=scores,
            class_idxs=classes,
            track_ids=ids,
        ),
        class_names=CLASSES,
        source="file",
        name="clip.mp4",
        path="/videos/clip.mp4",
        frame_index=index,
        timestamp=index / FPS,
        height=HEIGHT,
        width=WIDTH,
        index=index,
    )


def two_frame_video() -> VideoAnnotation:
    f0 = frame(0, [[10, 20, 50, 80], [100.5, 30, 120, 45.25]], [0.9, 0.75], [0, 2], [3, 1])
    f1 = frame(1, [[12, 21, 52, 81]], [0.875], [1], [3])
    return VideoAnnotation.from_predictions([f0, f1], fps=FPS, num_frames=5)


def moving_video() -> VideoAnnotation:
    """Three tracks (ids 9, 4, 7) over frames 0, 2, ..., 10; track 7 leaves after frame 4."""
    frames = []
    for i in range(0, 12, 2):
        boxes = [[2 * i, 10, 2 * i + 30, 40], [300 - i, 100, 318 - i, 130]]
        scores, classes, ids = [0.9, 0.5 + i / 100], [1, 3], [9, 4]
        if i <= 4:
            boxes.append([5, 200 - i, 45, 230 - i])
            scores.append(0.8)
            classes.append(0)
            ids.append(7)
        frames.append(frame(i, boxes, scores, classes, ids))
    return VideoAnnotation.from_predictions(frames, fps=FPS, num_frames=12)


# ---------------------------------------------------------------------- encoder
def test_two_frames():
    video = two_frame_video()
    ann = video_to_supervisely(video)
    assert ann["size"] == {"height": HEIGHT, "width": WIDTH}
    assert ann["framesCount"] == 5 and ann["tags"] == [] and ann["description"] == ""
    assert [o["classTitle"] for o in ann["objects"]] == ["blue", "red"]  # ids 1, 3
    track3 = ann["objects"][1]
    # classes red, green -> tie: the class seen first wins
    assert track3["tags"] == [
        {"name": "confidence", "value": 0.9, "frameRange": [0, 0]},
        {"name": "confidence", "value": 0.875, "frameRange": [1, 1]},
    ]
    assert [f["index"] for f in ann["frames"]] == [0, 1]
    fig = ann["frames"][0]["figures"][0]
    assert fig["objectKey"] == track3["key"] and fig["geometryType"] == "rectangle"
    assert fig["geometry"] == {"points": {"exterior": [[10, 20], [49, 79]], "interior": []}}
    assert ann["frames"][0]["figures"][1]["geometry"]["points"]["exterior"] == [
        [100, 30],
        [119, 45],
    ]
    assert json.loads(json.dumps(ann)) == ann
    assert video_to_supervisely(two_frame_video()) == ann  # deterministic keys
    assert SuperviselyVideoFormat().encode(video) == ann
    renamed = two_frame_video()
    renamed.name = "other.mp4"
    assert video_to_supervisely(renamed)["key"] != ann["key"]  # keys follow the video


def test_majority_class_and_merged_tags():
    frames = [frame(i, [[0, 0, 5, 5]], [0.9], [c], [0]) for i, c in enumerate([2, 4, 4, 2, 4])]
    ann = video_to_supervisely(VideoAnnotation.from_predictions(frames))
    assert [o["classTitle"] for o in ann["objects"]] == [CLASSES[4]]
    assert ann["framesCount"] == 5  # one past the last frame without num_frames
    assert ann["objects"][0]["tags"] == [{"name": "confidence", "value": 0.9, "frameRange": [0, 4]}]


def test_frames_without_figures_are_listed_and_errors_left_out():
    empty = frame(1, [], [], [], [])
    failed = dataclasses.replace(frame(2, [], [], [], []), error="decode failed")
    video = VideoAnnotation.from_predictions(
        [frame(0, [[1, 1, 9, 9]], [0.5], [0], [0]), empty, failed]
    )
    ann = video_to_supervisely(video)
    assert [(f["index"], len(f["figures"])) for f in ann["frames"]] == [(0, 1), (1, 0)]


def test_moving_video_figures():
    video = moving_video()
    ann = video_to_supervisely(video)
    assert ann["framesCount"] == 12
    assert [o["classTitle"] for o in ann["objects"]] == ["yellow", "red", "green"]  # 4, 7, 9
    assert [f["index"] for f in ann["frames"]] == [0, 2, 4, 6, 8, 10]
    titles = {o["key"]: o["classTitle"] for o in ann["objects"]}
    for out, p in zip(ann["frames"], video.frames, strict=True):
        assert len(out["figures"]) == len(p)
        for fig, box, name in zip(out["figures"], p.boxes, p.classes, strict=True):
            assert titles[fig["objectKey"]] == name
            left, top, right, bottom = box_to_rectangle(box, HEIGHT, WIDTH)
            assert fig["geometry"]["points"]["exterior"] == [[left, top], [right, bottom]]
    # track 4's score changes every frame: one tag per frame
    assert [t["frameRange"] for t in ann["objects"][0]["tags"]] == [[i, i] for i in range(0, 12, 2)]
    # track 9 keeps 0.9 but its frames are not adjacent (stride 2): no merging across gaps
    assert len(ann["objects"][2]["tags"]) == 6


# ---------------------------------------------------------------------- decoder
def test_round_trip_renumbers_ids():
    video = moving_video()
    back = video_from_supervisely(
        video_to_supervisely(video), CLASSES, name="clip.mp4", path="/videos/clip.mp4", fps=FPS
    )
    assert (back.name, back.path, back.width, back.height) == (
        "clip.mp4",
        "/videos/clip.mp4",
        WIDTH,
        HEIGHT,
    )
    assert (back.fps, back.num_frames) == (FPS, 12)
    assert [p.frame_index for p in back.frames] == [0, 2, 4, 6, 8, 10]
    assert [p.timestamp for p in back.frames] == [i / FPS for i in range(0, 12, 2)]
    renumbered = {4: 0, 7: 1, 9: 2}  # objects are in increasing id order
    for a, b in zip(video.frames, back.frames, strict=True):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.class_idxs, b.class_idxs)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
        assert [renumbered[int(t)] for t in a.track_ids] == b.track_ids.tolist()
    assert back.to_mot().count("\n") == video.to_mot().count("\n")
    decoded = SuperviselyVideoFormat().decode(video_to_supervisely(video), CLASSES, fps=FPS)
    assert decoded.to_mot() == back.to_mot() and decoded.fps == FPS


def test_decoder_edge_cases():
    data = {
        "size": {"height": 50, "width": 60},
        "objects": [
            {"key": "a", "classTitle": "green", "tags": []},
            {"key": "b", "classTitle": "red"},
        ],
        "frames": [
            {
                "index": 3,
                "figures": [
                    {  # corners given right/bottom first: sorted back
                        "objectKey": "a",
                        "geometryType": "rectangle",
                        "geometry": {"points": {"exterior": [[20, 30], [10, 5]]}},
                    },
                    {"objectKey": "b", "geometryType": "polygon", "geometry": {}},
                ],
            },
            {"index": 1, "figures": []},
        ],
    }
    video = video_from_supervisely(data, CLASSES)
    assert [p.frame_index for p in video.frames] == [1, 3]  # sorted by index
    assert video.num_frames == 0 and video.frames[0].timestamp is None
    last = video.frames[1]
    assert last.boxes.tolist() == [[10, 5, 21, 31]]  # polygon skipped
    assert last.scores.tolist() == [1.0]  # no confidence tag
    assert (last.classes, last.track_ids.tolist()) == (["green"], [0])
    with pytest.raises(ValueError, match="'purple'"):
        video_from_supervisely({**data, "objects": [{"key": "a", "classTitle": "purple"}]}, CLASSES)


def test_file_name():
    assert video_annotation_file_name(two_frame_video()) == "clip.mp4.json"
    assert video_annotation_file_name(VideoAnnotation("/data/a.avi", 1, 1, [])) == "a.avi.json"
    assert SuperviselyVideoFormat().file_name(VideoAnnotation("", 1, 1, [])) == "video.json"


# ---------------------------------------------------------------------- the plug-in
def test_registered_as_the_default_video_format():
    fmt = plugins.video_annotation_format("supervisely")
    assert isinstance(fmt, SuperviselyVideoFormat)
    assert isinstance(fmt, plugins.VideoAnnotationFormat)
    assert isinstance(plugins.video_annotation_format(), SuperviselyVideoFormat)


def test_video_annotation_reaches_the_format_by_name(tmp_path):
    video = moving_video()
    ann = video_to_supervisely(video)
    assert video.to_supervisely() == video.to_format("supervisely") == video.to_format() == ann
    expected = video_from_supervisely(ann, CLASSES, name="clip.mp4", fps=FPS)
    for back in (
        VideoAnnotation.from_supervisely(ann, CLASSES, name="clip.mp4", fps=FPS),
        VideoAnnotation.from_format("supervisely", ann, CLASSES, name="clip.mp4", fps=FPS),
    ):
        assert (back.name, back.fps, back.num_frames) == ("clip.mp4", FPS, 12)
        assert back.to_mot() == expected.to_mot()  # same boxes, scores, renumbered ids

    paths = video.save(tmp_path / "out")
    assert paths["annotation"].name == "clip.mp4.json" and paths["mot"].name == "clip.txt"
    assert json.loads(paths["annotation"].read_text()) == ann
    assert paths["mot"].read_text() == video.to_mot()
