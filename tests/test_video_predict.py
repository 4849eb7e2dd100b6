"""Video prediction and tracking end to end: real H.264 files, real Ray, the public API."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from videos import truncate, write_audio_only, write_video

import engine
from engine.cli import main
from engine.sources.video import decode_frames_sequential, probe_video

W, H, FPS = 480, 240, 30


def linear_paths(index: int, width: int, height: int) -> list:
    """Three 40 px squares moving right at 2, 3 and 4 px a frame, on separate rows."""
    return [
        (name, 10 + speed * index, y, 10 + speed * index + 40, y + 40)
        for name, speed, y in (("red", 2, 20), ("green", 3, 100), ("blue", 4, 180))
    ]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    truth = {
        "a": write_video(folder / "a.mp4", 90, (W, H), FPS, gop=12, boxes_at=linear_paths),
        "b": write_video(folder / "b.mp4", 48, (W, H), FPS, gop=8, boxes_at=linear_paths),
    }
    return folder, truth


def expected_frames(num, stride=1, start=0, end=None, count=None, duration=None):
    """The frame indices a selection takes, computed independently of the engine."""
    taken = []
    for index in range(start, num if end is None else min(end, num), stride):
        if count is not None and len(taken) == count:
            break
        if duration is not None and (index - start) / FPS >= duration - 1e-9:
            break
        taken.append(index)
    return taken


def assert_boxes_match_truth(prediction, truth):
    boxes = sorted(tuple(b) for b in prediction.boxes.tolist())
    known = sorted(tuple(float(v) for v in box[1:]) for box in truth[prediction.frame_index])
    np.testing.assert_allclose(boxes, known, atol=1.0)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"stride": 3},
        {"start_frame": 10, "end_frame": 50, "stride": 4},
        {"start_frame": 7, "num_frames": 9},
        {"start_frame": 5, "duration": 0.5, "stride": 2},
        {"end_frame": 60, "num_frames": 12, "duration": 1.0, "stride": 2},  # first limit wins
        {"start_frame": 80, "end_frame": 500},  # clamped to the video's 90 frames
    ],
)
def test_frames_are_selected_and_predicted_exactly(reference_model, clips, options):
    folder, truth = clips
    predictions = reference_model.predict(folder / "a.mp4", progress=False, **options)
    names = {"stride": "stride", "start_frame": "start", "end_frame": "end"}
    names.update(num_frames="count", duration="duration")
    wanted = expected_frames(90, **{names[k]: v for k, v in options.items()})
    assert [p.frame_index for p in predictions] == wanted
    assert [p.index for p in predictions] == list(range(len(wanted)))
    for prediction in predictions:
        assert prediction.error is None
        assert (prediction.name, prediction.source) == ("a.mp4", "video")
        assert prediction.timestamp == pytest.approx(prediction.frame_index / FPS, abs=1e-6)
        assert (prediction.height, prediction.width) == (H, W)
        assert_boxes_match_truth(prediction, truth["a"])


def test_every_segment_is_predicted_once_in_order_and_load_image_gives_the_frame(
    reference_model, clips
):
    folder, truth = clips
    info = probe_video(folder / "a.mp4")
    assert len(info.keyframes) >= 7  # several segments, decoded by separate tasks
    predictions = reference_model.predict(folder / "a.mp4", batch_size=5, progress=False)
    assert [p.frame_index for p in predictions] == list(range(90))
    frame = next(iter(decode_frames_sequential(folder / "a.mp4", [61])))
    np.testing.assert_array_equal(predictions[61].load_image(), frame.image)


def test_videos_images_and_folders_mix_in_input_order(reference_model, clips, tmp_path):
    folder, truth = clips
    from PIL import Image

    image = np.zeros((50, 60, 3), np.uint8)
    image[10:30, 5:45] = (255, 0, 0)
    Image.fromarray(image).save(tmp_path / "still.png")
    predictions = reference_model.predict(
        [folder / "b.mp4", tmp_path / "still.png", str(folder)],
        stride=8,
        progress=False,
    )
    origins = [(p.name, p.frame_index) for p in predictions]
    b_frames = [("b.mp4", i) for i in range(0, 48, 8)]
    a_frames = [("a.mp4", i) for i in range(0, 90, 8)]
    assert origins == b_frames + [("still.png", None)] + a_frames + b_frames
    assert [p.index for p in predictions] == list(range(len(predictions)))
    assert predictions[len(b_frames)].boxes.tolist() == [[5.0, 10.0, 45.0, 30.0]]


def test_detached_session_streams_video_frames(reference_model, clips):
    folder, truth = clips
    session = reference_model.predict_detached(folder / "b.mp4", stride=2, max_buffered_blocks=2)
    try:
        predictions = list(session)
        assert [p.frame_index for p in predictions] == list(range(0, 48, 2))
        assert session.progress() == {"done": 24, "total": 24}
        for prediction in predictions:
            assert_boxes_match_truth(prediction, truth["b"])
    finally:
        session.close()


def test_bad_videos_are_clear_errors_and_lose_nothing(reference_model, clips, tmp_path):
    folder, _ = clips
    write_audio_only(tmp_path / "sound.mkv")
    (tmp_path / "notes.mp4").write_text("not a video")
    clip = write_video(tmp_path / "long.mkv", 60, (W, H), FPS, gop=6, boxes_at=linear_paths)
    cut = truncate(tmp_path / "long.mkv", 0.5)
    predictions = reference_model.predict(
        [
            tmp_path / "sound.mkv",
            tmp_path / "notes.mp4",
            tmp_path / "missing.mp4",
            cut,
            folder / "b.mp4",
        ],
        progress=False,
    )
    by_name: dict[str, list] = {}
    for prediction in predictions:
        by_name.setdefault(prediction.name, []).append(prediction)
    assert "no video stream" in by_name["sound.mkv"][0].error
    assert by_name["notes.mp4"][0].error.startswith(str(tmp_path / "notes.mp4"))
    assert by_name["missing.mp4"][0].error.startswith("file not found")
    truncated = by_name[cut.name]
    decoded = [p for p in truncated if p.error is None]
    failed = [p for p in truncated if p.error is not None]
    assert decoded and failed  # frames that decode are predicted, the rest are errors
    assert [p.frame_index for p in truncated] == sorted(p.frame_index for p in truncated)
    for prediction in decoded:
        assert_boxes_match_truth(prediction, clip)
    assert [p.frame_index for p in by_name["b.mp4"]] == list(range(48))
    start_past_end = reference_model.predict(folder / "b.mp4", start_frame=100, progress=False)
    assert len(start_past_end) == 1 and "48 frames" in start_past_end[0].error
    assert start_past_end[0].error.startswith("b.mp4") or "b.mp4" in start_past_end[0].error


@pytest.mark.parametrize(
    "options,message",
    [
        ({"stride": 0}, "stride"),
        ({"start_frame": -1}, "start_frame"),
        ({"start_frame": 10, "end_frame": 10}, "end_frame must be greater"),
        ({"num_frames": 0}, "num_frames"),
        ({"duration": -2.0}, "duration"),
    ],
)
def test_invalid_frame_options_are_refused_before_any_work(reference_model, options, message):
    with pytest.raises(ValueError, match=message):
        reference_model.predict("never-opened.mp4", **options)


# ---------------------------------------------------------------------------- tracking
def one_id_per_object(annotation, truth) -> None:
    """Each ground-truth object keeps exactly one track id, and ids are not shared."""
    ids: dict[str, set[int]] = {}
    for prediction in annotation.frames:
        assert prediction.error is None
        for box, track_id in zip(prediction.boxes.tolist(), prediction.track_ids.tolist()):
            name = next(
                n for n, *xyxy in truth[prediction.frame_index] if np.allclose(box, xyxy, atol=1.0)
            )
            ids.setdefault(name, set()).add(int(track_id))
    assert set(ids) == {"red", "green", "blue"}
    assert all(len(found) == 1 for found in ids.values()), ids
    assert len({next(iter(found)) for found in ids.values()}) == 3


@pytest.mark.parametrize(
    "tracker,options",
    [
        ("bytetrack", {}),
        ("bytetrack", {"stride": 3, "start_frame": 5}),
        ("ocsort", {"stride": 2}),
        ("instance", {"stride": 2}),  # a boxmot tracker the user built
    ],
)
def test_tracking_keeps_one_id_per_object(reference_model, clips, tracker, options):
    folder, truth = clips
    if tracker == "instance":
        from engine.tracking import make_tracker

        tracker = make_tracker("bytetrack", frame_rate=15)
    annotation = engine.track(
        folder / "a.mp4", detector=reference_model, tracker=tracker, progress=False, **options
    )
    assert isinstance(annotation, engine.VideoAnnotation)
    assert (annotation.name, annotation.num_frames, annotation.fps) == ("a.mp4", 90, FPS)
    stride, start = options.get("stride", 1), options.get("start_frame", 0)
    assert [p.frame_index for p in annotation.frames] == list(range(start, 90, stride))
    one_id_per_object(annotation, truth["a"])
    exported = annotation.to_supervisely()
    assert exported["framesCount"] == 90 and len(exported["objects"]) == 3


def test_several_videos_are_tracked_each_with_its_own_tracker(reference_model, clips, tmp_path):
    folder, truth = clips
    annotations = engine.track(
        [folder / "a.mp4", tmp_path / "gone.mp4", folder / "b.mp4"],
        detector=reference_model,
        progress=False,
    )
    assert [a.name for a in annotations] == ["a.mp4", "gone.mp4", "b.mp4"]
    assert annotations[1].error.startswith("file not found") and not annotations[1].frames
    one_id_per_object(annotations[0], truth["a"])
    one_id_per_object(annotations[2], truth["b"])
    # save() writes the tracked video beside the annotation, as `tessera track` does
    written = annotations[0].save(tmp_path / "saved")
    assert sorted(written) == ["annotation", "mot", "video"]
    assert written["video"] == tmp_path / "saved" / "a_tracks.mp4"
    with av.open(str(written["video"])) as container:
        assert sum(1 for _ in container.decode(video=0)) == len(annotations[0].frames)
    assert "video" not in annotations[2].save(tmp_path / "plain", video=False)
    assert not (tmp_path / "plain" / "b_tracks.mp4").exists()
    assert "video" not in annotations[1].save(tmp_path / "failed")  # no video to draw
    with pytest.raises(ValueError, match="gone.mp4: no tracked frames .* pass video=False"):
        annotations[1].save(tmp_path / "failed", video=True)
    with pytest.raises(ValueError, match="not videos"):
        from PIL import Image

        Image.new("RGB", (8, 8)).save(tmp_path / "still.png")
        engine.track([tmp_path / "still.png"], detector=reference_model)


def test_cli_predicts_and_tracks_videos(ray_session, clips, tmp_path, capsys):
    folder, truth = clips
    out = tmp_path / "predicted"
    code = main(
        [
            "predict", str(folder / "b.mp4"), "--model", "reference/color-boxes",
            "--out", str(out), "--stride", "4", "--start-frame", "2", "--visualize",
            "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["frame_index"] for r in rows] == list(range(2, 48, 4))
    assert sorted(p.name for p in (out / "visualizations").iterdir())[0] == "b_000002.png"

    tracked = tmp_path / "tracked"
    code = main(
        [
            "track", str(folder / "a.mp4"), "--model", "reference/color-boxes",
            "--tracker", "bytetrack", "--out", str(tracked), "--stride", "2", "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    annotation = json.loads((tracked / "a.mp4.json").read_text())
    assert annotation["framesCount"] == 90 and len(annotation["objects"]) == 3
    mot = (tracked / "a.txt").read_text().splitlines()
    assert len(mot) == 45 * 3 and mot[0].split(",")[0] == "1"  # MOT frames are 1-based
    with av.open(str(tracked / "a_tracks.mp4")) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 45 and (frames[0].width, frames[0].height) == (W, H)
    assert Path(tracked / "a_tracks.mp4").stat().st_size > 0
