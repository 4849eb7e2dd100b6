"""Empty and single-item inputs through every entry point: an empty result, never an
internal error (issue 15's defect: ``predict([])`` failed on the schema of an empty block)."""

from __future__ import annotations

import json

import numpy as np
from scenes import draw_scene, random_boxes
from videos import write_video

from engine.cli import main

IMAGE = draw_scene(64, 80, random_boxes(np.random.default_rng(5), 64, 80, 2))


def test_predict_of_an_empty_list_is_an_empty_result_with_and_without_outputs(
    reference_model, tmp_path
):
    assert len(reference_model.predict([], progress=False)) == 0
    assert list(reference_model.predict([], stream=True, progress=False)) == []
    results = reference_model.predict([], out=tmp_path / "coco", format="coco", progress=False)
    assert len(results) == 0
    coco = json.loads((tmp_path / "coco" / "coco_dataset.json").read_text())
    assert coco["images"] == [] and coco["annotations"] == []
    assert json.loads((tmp_path / "coco" / "coco_bbox_results.json").read_text()) == []
    assert results.outputs["export:coco"]["predictions"] == 0


def test_predict_detached_and_track_of_an_empty_list_end_at_once(reference_model):
    session = reference_model.predict_detached([], progress=False)
    assert list(session) == []
    assert session.status()["state"] == "done"
    assert reference_model.track([], progress=False) == []


def test_single_items_give_one_prediction_at_every_entry_point(reference_model, tmp_path):
    one = reference_model.predict(IMAGE, progress=False)
    assert len(one) == 1 and one[0].error is None and len(one[0].boxes) == 2
    assert len(reference_model.predict([IMAGE], progress=False)) == 1
    assert [p.boxes.tolist() for p in reference_model.predict_detached([IMAGE])] == [
        one[0].boxes.tolist()
    ]
    write_video(tmp_path / "one.mp4", 3)
    tracks = reference_model.track(str(tmp_path / "one.mp4"), progress=False)
    assert len(tracks) == 1 and tracks[0].num_frames == 3


def test_the_cli_names_an_empty_folder_and_refuses_no_input(ray_session, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    args = ["predict", "--model", "reference/color-boxes", "--no-progress", "--out", str(out)]
    assert main([*args, "--format", "jsonl", str(tmp_path / "empty")]) == 1  # an item failed
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [row["error"] for row in rows] == [
        f"{tmp_path / 'empty'}: directory contains no images or videos"
    ]
    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    assert "nothing to predict" in capsys.readouterr().err
