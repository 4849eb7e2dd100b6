"""Nothing a user wrote is overwritten without a word (issue 17).

Before: ``visualize(save_dir=...)`` of two ``a.png`` from different folders kept only the
second drawing; a second run into the same ``out=`` replaced the first run's
``predictions.jsonl``; COCO's ``file_name`` dropped the folder, so two ``a.png`` were one
name; Keypoint R-CNN's classes came out as ``no person`` = 1, ``person`` = 2.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scenes import draw_scene

import engine
from connectors.exports import open_exporter
from connectors.formats.coco import coco_category_ids
from engine.cli import main
from engine.detections import Detections
from engine.prediction import Prediction

RED_AT_LEFT = [("red", 2, 2, 20, 20)]
GREEN_AT_RIGHT = [("green", 40, 10, 60, 30)]


@pytest.fixture
def two_a_pngs(tmp_path):
    """``data/x/a.png`` (a red box) and ``data/y/a.png`` (a green box)."""
    data = tmp_path / "data"
    for folder, boxes in (("x", RED_AT_LEFT), ("y", GREEN_AT_RIGHT)):
        (data / folder).mkdir(parents=True)
        Image.fromarray(draw_scene(40, 64, boxes)).save(data / folder / "a.png")
    return data


def test_equal_names_from_two_folders_are_kept_apart(reference_model, two_a_pngs, tmp_path):
    out = tmp_path / "coco"
    predictions = reference_model.predict(
        two_a_pngs, recursive=True, out=out, format="coco", progress=False
    )
    assert [p.classes for p in predictions] == [["red"], ["green"]]

    dataset = json.loads((out / "coco_dataset.json").read_text())
    assert [image["file_name"] for image in dataset["images"]] == ["x/a.png", "y/a.png"]

    drawn = tmp_path / "drawn"
    for prediction in predictions:
        prediction.visualize(save_dir=drawn)
    assert sorted(p.name for p in drawn.iterdir()) == ["a.png", "a_2.png"]
    first, second = (np.asarray(Image.open(drawn / n)) for n in ("a.png", "a_2.png"))
    assert not np.array_equal(first, second)  # two drawings, not one written twice


def test_a_second_run_into_the_same_out_is_refused_and_exist_ok_writes(
    reference_model, two_a_pngs, tmp_path
):
    out = tmp_path / "out"
    reference_model.predict(two_a_pngs / "x", out=out, progress=False)
    first_run = (out / "predictions.jsonl").read_text()

    with pytest.raises(ValueError, match=r"out=.*out' already holds files \(predictions.jsonl"):
        reference_model.predict(two_a_pngs / "y", out=out, progress=False)
    with pytest.raises(ValueError, match="already holds files"):
        reference_model.predict_detached(two_a_pngs / "y", out=out)
    assert (out / "predictions.jsonl").read_text() == first_run

    reference_model.predict(two_a_pngs / "y", out=out, exist_ok=True, progress=False)
    assert json.loads((out / "predictions.jsonl").read_text())["classes"] == ["green"]


def test_out_naming_a_file_is_refused(reference_model, two_a_pngs):
    with pytest.raises(ValueError, match="is a file, not a folder"):
        reference_model.predict(two_a_pngs / "x", out=two_a_pngs / "x" / "a.png")


def test_the_cli_refuses_a_used_out_at_once_and_numbers_equal_names(
    ray_session, two_a_pngs, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "out"
    args = ["predict", str(two_a_pngs), "--recursive", "--model", "reference/color-boxes"]
    args += ["--out", str(out), "--visualize", "--no-progress"]
    assert main(args) == 0
    assert sorted(p.name for p in (out / "visualizations").iterdir()) == ["a.png", "a_2.png"]
    summary = (out / "summary.json").read_text()

    def deploy(*args, **kwargs):
        raise AssertionError("the CLI started a model before checking --out")

    with monkeypatch.context() as patch:
        patch.setattr(engine, "deploy", deploy)
        assert main(args) == 2
    assert "already holds files" in capsys.readouterr().err
    assert (out / "summary.json").read_text() == summary

    assert main([*args, "--exist-ok"]) == 0
    # the first run's drawings stay; this run's are numbered after them
    assert sorted(p.name for p in (out / "visualizations").iterdir()) == [
        "a.png",
        "a_2.png",
        "a_3.png",
        "a_4.png",
    ]


def test_keypoint_rcnn_people_keep_cocos_person_id(tmp_path):
    classes = ["no person", "person"]  # Keypoint R-CNN's class list, as torchvision has it
    assert coco_category_ids(classes) == {1: 1}
    person = Prediction(
        Detections(
            xyxy=np.array([[1.0, 2.0, 11.0, 22.0]]),
            scores=np.array([0.9]),
            class_idxs=np.array([1]),
        ),
        classes,
        name="walker.png",
        width=32,
        height=32,
        task="keypoints",
    )
    with open_exporter("coco", tmp_path, classes, task="keypoints") as exporter:
        exporter.write(person)
    dataset = json.loads((tmp_path / "coco_dataset.json").read_text())
    assert dataset["categories"] == [{"id": 1, "name": "person"}]
    assert [a["category_id"] for a in dataset["annotations"]] == [1]
