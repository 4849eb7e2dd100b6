"""The `tessera` command line, run in-process on the session's Ray and as a real script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scenes import boxes_array, draw_scene, random_boxes, sort_xyxy

from engine.cli import main


def test_models_lists_the_zoo_from_the_installed_script():
    result = subprocess.run(
        [str(Path(sys.executable).parent / "tessera"), "models"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    names = [line.split()[0] for line in result.stdout.splitlines()]
    for expected in [
        "faces/mtcnn",
        "torchvision/fasterrcnn_resnet50_fpn_v2",
        "torchvision/maskrcnn_resnet50_fpn_v2",
        "reference/color-boxes",
    ]:
        assert expected in names


def test_predict_writes_json_lines_visualizations_and_summary(ray_session, tmp_path, capsys):
    rng = np.random.default_rng(3)
    known = {}
    for name in ["p.png", "q.png"]:
        boxes = random_boxes(rng, 90, 130, 4)
        Image.fromarray(draw_scene(90, 130, boxes)).save(tmp_path / name)
        known[name] = boxes
    (tmp_path / "readme.txt").write_text("skip me")
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            str(tmp_path),
            "--model",
            "reference/color-boxes",
            "--out",
            str(out),
            "--visualize",
            "--no-progress",
            "--batch-size",
            "1",
        ]
    )
    assert code == 0
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [line["name"] for line in lines] == list(known)
    for line, boxes in zip(lines, known.values()):
        np.testing.assert_allclose(sort_xyxy(np.array(line["boxes"])), boxes_array(boxes))
        assert sorted(line["classes"]) == sorted(b[0] for b in boxes)
    drawn = sorted(p.name for p in (out / "visualizations").iterdir())
    assert drawn == ["p.png", "q.png"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["items"] == 2 and summary["skipped"] == 1 and summary["failed"] == 0
    assert (
        "2 image(s): 2 predicted, 0 failed, 1 non-image file(s) skipped" in capsys.readouterr().out
    )


def test_failed_items_exit_1_and_bad_options_exit_2(ray_session, tmp_path, capsys):
    Image.fromarray(draw_scene(40, 40, [("red", 5, 5, 20, 20)])).save(tmp_path / "ok.png")
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            str(tmp_path / "ok.png"),
            str(tmp_path / "gone.png"),
            "--model",
            "reference/color-boxes",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 1
    assert "gone.png" in capsys.readouterr().err
    code = main(
        [
            "predict",
            str(tmp_path),
            "--model",
            "reference/color-boxes",
            "--out",
            str(out),
            "--conf",
            "2",
        ]
    )
    assert code == 2
    assert "conf must be between" in capsys.readouterr().err
    code = main(["predict", str(tmp_path), "--model", "no/such-model", "--out", str(out) + "2"])
    assert code == 2
    assert "no/such-model" in capsys.readouterr().err


def test_sliding_window_options_from_the_command_line(ray_session, tmp_path):
    boxes = [("red", 120, 40, 150, 70), ("blue", 10, 10, 30, 30)]  # red crosses tile borders
    Image.fromarray(draw_scene(200, 260, boxes)).save(tmp_path / "big.png")
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            str(tmp_path / "big.png"),
            "--model",
            "reference/color-boxes",
            "--out",
            str(out),
            "--no-progress",
            "--sliding-window",
            "--window-size",
            "128",
            "--overlap",
            "48",
            "--merge",
            "greedy_nmm",
            "--merge-metric",
            "ios",
        ]
    )
    assert code == 0
    line = json.loads((out / "predictions.jsonl").read_text())
    np.testing.assert_allclose(sort_xyxy(np.array(line["boxes"])), boxes_array(boxes))
    code = main(
        [
            "predict",
            str(tmp_path / "big.png"),
            "--model",
            "reference/color-boxes",
            "--out",
            str(out),
            "--sliding-window",
            "--overlap",
            "1.5",
        ]
    )
    assert code == 2


def test_save_txt_and_save_crop_write_yolo_labels_and_object_crops(ray_session, tmp_path):
    """Ultralytics' save_txt and save_crop (issue 17), on boxes with a known answer."""
    boxes = [("red", 10, 20, 50, 40), ("blue", 60, 5, 90, 65)]  # x1, y1, x2, y2 in 100x80
    Image.fromarray(draw_scene(80, 100, boxes)).save(tmp_path / "scene.png")
    out = tmp_path / "out"
    args = ["predict", str(tmp_path / "scene.png"), "--model", "reference/color-boxes"]
    assert main([*args, "--out", str(out), "--save-txt", "--save-crop", "--no-progress"]) == 0
    classes = (out / "labels" / "classes.txt").read_text().split()
    rows = sorted(line.split() for line in (out / "labels" / "scene.txt").read_text().splitlines())
    expected = []
    for name, x1, y1, x2, y2 in boxes:
        centre = [(x1 + x2) / 200, (y1 + y2) / 160, (x2 - x1) / 100, (y2 - y1) / 80]
        expected.append([str(classes.index(name)), *[f"{v:.6f}" for v in centre]])
    assert sorted(row[:5] for row in rows) == sorted(expected)
    assert all(0 < float(row[5]) <= 1 for row in rows)
    red = np.asarray(Image.open(out / "crops" / "red" / "scene.jpg"))
    blue = np.asarray(Image.open(out / "crops" / "blue" / "scene.jpg"))
    assert red.shape[:2] == (20, 40) and blue.shape[:2] == (60, 30)
    assert red[..., 0].mean() > 200 and blue[..., 2].mean() > 200  # the objects' own pixels
