"""`track` refuses a bad tracker or detector before any frame is predicted (issue 17:
``tracker="nosuch"`` was an ActorDiedError after detection ran over the whole video, and
``detector="reference/color-boxes"`` an AttributeError)."""

from __future__ import annotations

import pytest
from videos import write_video

import engine
from engine.tracking import check_tracker


def squares(index: int, width: int, height: int) -> list:
    return [("red", 10 + 2 * index, 20, 50 + 2 * index, 60)]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    write_video(path, 12, (160, 120), 30, gop=6, boxes_at=squares)
    return path


def test_check_tracker_refuses_what_needs_no_tracker_built(tmp_path):
    check_tracker("Byte-Track")
    with pytest.raises(ValueError, match=r"unknown tracker 'nosuch'; valid names: bytetrack"):
        check_tracker("nosuch")
    with pytest.raises(FileNotFoundError, match="osnet.pt.*not found"):
        check_tracker("botsort", tmp_path / "osnet.pt")
    with pytest.raises(ValueError, match="tracker_options must be a dict"):
        check_tracker("bytetrack", tracker_options=["max_age", 3])
    with pytest.raises(TypeError, match=r"update\(dets, frame\)"):
        check_tracker(object())


def test_a_bad_tracker_fails_before_any_frame_is_predicted(reference_model, clip, tmp_path):
    with pytest.raises(ValueError, match="unknown tracker 'nosuch'"):
        engine.track(clip, detector=reference_model, tracker="nosuch", progress=False)
    with pytest.raises(FileNotFoundError, match="not found"):
        reference_model.track(clip, tracker="botsort", reid_weights=tmp_path / "none.pt")
    with pytest.raises(TypeError, match="detector must be a model from engine.deploy"):
        engine.track(clip, detector=42)


def test_a_detector_given_by_its_zoo_name_is_deployed_for_the_call(ray_session, clip):
    annotation = engine.track(clip, detector="reference/color-boxes", progress=False)
    assert annotation.error is None and annotation.num_frames == 12
    assert [p.frame_index for p in annotation.frames] == list(range(12))
    assert len(annotation.track_ids()) == 1  # the one square, one id throughout
