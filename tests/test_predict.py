"""End to end: `engine.deploy(...).predict(...)` on a real local Ray, known answers."""

from __future__ import annotations

import http.server
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scenes import boxes_array, draw_scene, random_boxes, sort_xyxy

import engine

H, W = 120, 160


def scene(seed: int, count: int = 5):
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, H, W, count)
    return draw_scene(H, W, boxes), boxes


def assert_boxes(prediction, boxes, atol: float = 0.0):
    assert prediction.error is None, prediction.error
    np.testing.assert_allclose(sort_xyxy(prediction.boxes), boxes_array(boxes), atol=atol)
    assert sorted(prediction.classes) == sorted(b[0] for b in boxes)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Four PNG scenes in a folder (one in a subfolder) with their known boxes."""
    root = tmp_path_factory.mktemp("images")
    (root / "sub").mkdir()
    known = {}
    for i, rel in enumerate(["a.png", "b.png", "c.png", "sub/d.png"]):
        image, boxes = scene(i)
        Image.fromarray(image).save(root / rel)
        known[rel] = boxes
    return root, known


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        if self.path.startswith("/slow"):
            time.sleep(3)
        return super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def http_root(image_dir):
    """Serve the image folder on 127.0.0.1; /slow... answers after 3 s."""
    root, _ = image_dir

    def handler(*args, **kwargs):
        return _Handler(*args, directory=str(root), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_every_input_form_gives_exact_boxes_in_input_order(reference_model, image_dir, http_root):
    root, known = image_dir
    array, array_boxes = scene(10)
    pil, pil_boxes = scene(11)
    inputs = [
        str(root / "a.png"),
        root / "b.png",
        f"{http_root}/c.png",
        Image.fromarray(pil),
        array,
        root,
    ]
    predictions = reference_model.predict(inputs, progress=False)
    expected = [known["a.png"], known["b.png"], known["c.png"], pil_boxes, array_boxes]
    expected += [known["a.png"], known["b.png"], known["c.png"]]  # the folder, not recursive
    assert len(predictions) == len(expected)
    for prediction, boxes in zip(predictions, expected):
        assert_boxes(prediction, boxes)
    assert [p.source for p in predictions] == ["file", "file", "url", "pil", "array"] + ["file"] * 3
    assert [p.name for p in predictions[:3]] == ["a.png", "b.png", "c.png"]
    assert predictions[0].path == str(root / "a.png")
    assert predictions[2].url == f"{http_root}/c.png"
    assert [p.index for p in predictions] == list(range(len(expected)))
    np.testing.assert_array_equal(predictions[4].load_image(), array)
    np.testing.assert_array_equal(predictions[0].load_image(), draw_scene(H, W, known["a.png"]))


def test_recursive_directory_descends(reference_model, image_dir):
    root, known = image_dir
    predictions = reference_model.predict(root, recursive=True, progress=False)
    assert [Path(p.path).relative_to(root).as_posix() for p in predictions] == list(known)
    for prediction, boxes in zip(predictions, known.values()):
        assert_boxes(prediction, boxes)


def test_each_image_carries_its_share_of_the_model_time_tiled_or_not(reference_model):
    images = [scene(seed)[0] for seed in (40, 41, 42)]
    for options in ({}, {"sliding_window": True, "window_size": 64, "overlap": 0.2}):
        predictions = reference_model.predict(images, batch_size=2, progress=False, **options)
        assert all(p.latency_ms is not None and p.latency_ms > 0 for p in predictions)
        assert predictions[0].to_dict()["latency_ms"] == round(predictions[0].latency_ms, 3)


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_batch_size_does_not_change_results(reference_model, batch_size):
    scenes = [scene(20 + i) for i in range(7)]
    predictions = reference_model.predict(
        [s[0] for s in scenes], batch_size=batch_size, progress=False
    )
    for prediction, (_, boxes) in zip(predictions, scenes):
        assert_boxes(prediction, boxes)


@pytest.mark.parametrize("img_size", [240, (60, 80), (200, 100)])
def test_img_size_returns_boxes_in_original_pixels(reference_model, img_size):
    rng = np.random.default_rng(5)
    boxes = random_boxes(rng, H, W, 4, min_side=16, max_side=40, gap=6)
    predictions = reference_model.predict(
        draw_scene(H, W, boxes), img_size=img_size, progress=False
    )
    # one model pixel spans up to W/80 = 2 original pixels: allow that much rounding
    assert_boxes(predictions[0], boxes, atol=2.0)
    assert (predictions[0].height, predictions[0].width) == (H, W)


def test_conf_and_classes_filter(reference_model):
    boxes = [("red", 10, 10, 30, 30), ("blue", 50, 10, 70, 40), ("red", 90, 50, 120, 90)]
    image = draw_scene(H, W, boxes)
    image[60:70, 95:105] = 0  # a hole: that red region fills less of its box
    only_red = reference_model.predict(image, classes=["red"], progress=False)[0]
    assert only_red.classes == ["red", "red"]
    strict = reference_model.predict(image, conf=0.99, progress=False)[0]
    assert sorted(strict.classes) == ["blue", "red"]
    assert reference_model.predict(image, conf=0.0, progress=False)[0].scores.min() < 0.99


def test_bad_options_are_clear_errors(reference_model):
    with pytest.raises(ValueError, match="unknown class name.*'dragon'.*red, green"):
        reference_model.predict(np.zeros((8, 8, 3), np.uint8), classes=["dragon"])
    with pytest.raises(TypeError, match="unknown option.*confidence.*valid options"):
        reference_model.predict(np.zeros((8, 8, 3), np.uint8), confidence=0.3)
    with pytest.raises(ValueError, match="conf must be between"):
        reference_model.predict(np.zeros((8, 8, 3), np.uint8), conf=2)
    with pytest.raises(ValueError, match="img_size"):
        reference_model.predict(np.zeros((8, 8, 3), np.uint8), img_size=(0, 10))


def test_bad_items_get_errors_and_never_lose_the_others(reference_model, tmp_path, http_root):
    good, good_boxes = scene(30)
    Image.fromarray(good).save(tmp_path / "good.png")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    buffer = tmp_path / "full.png"
    Image.fromarray(good).save(buffer)
    (tmp_path / "truncated.png").write_bytes(buffer.read_bytes()[:200])
    empty = tmp_path / "empty"
    empty.mkdir()
    big = np.zeros((300, 300, 3), np.uint8)
    inputs = [
        tmp_path / "missing.png",
        tmp_path / "corrupt.jpg",
        tmp_path / "truncated.png",
        empty,
        f"{http_root}/nothing-here.png",
        f"{http_root}/slow/a.png",
        big,
        tmp_path / "good.png",
    ]
    predictions = reference_model.predict(
        inputs, url_timeout=0.5, max_pixels=200 * 200, progress=False
    )
    assert len(predictions) == len(inputs)
    errors = [p.error for p in predictions]
    assert "missing.png" in errors[0] and "not found" in errors[0]
    assert "corrupt.jpg" in errors[1]
    assert "truncated.png" in errors[2]
    assert "empty" in errors[3] and "no images" in errors[3]
    assert "nothing-here.png" in errors[4] and "404" in errors[4]
    assert "slow/a.png" in errors[5] and "timed out" in errors[5]
    assert "pixels" in errors[6] and "limit" in errors[6]
    assert_boxes(predictions[7], good_boxes)
    assert len(predictions.failed) == 7
    # the model's time is measured per image; an image the model never saw has none
    assert predictions[7].latency_ms > 0
    assert all(p.latency_ms is None for p in predictions[:7])


def test_non_image_files_in_a_directory_are_skipped_and_counted(reference_model, tmp_path):
    image, boxes = scene(40)
    Image.fromarray(image).save(tmp_path / "one.png")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "data.csv").write_text("a,b")
    predictions = reference_model.predict(tmp_path, progress=False)
    assert len(predictions) == 1
    assert_boxes(predictions[0], boxes)
    assert sorted(Path(s).name for s in predictions.skipped) == ["data.csv", "notes.txt"]
    assert predictions.summary()["skipped"] == 2


def test_exif_orientation_is_applied_before_prediction(reference_model, tmp_path):
    boxes = [("green", 10, 20, 50, 40)]
    stored = draw_scene(60, 100, boxes)
    exif = Image.Exif()
    exif[0x0112] = 6  # the viewer rotates the stored pixels 90 degrees clockwise
    Image.fromarray(stored).save(tmp_path / "rotated.png", exif=exif)
    prediction = reference_model.predict(tmp_path / "rotated.png", progress=False)[0]
    assert (prediction.height, prediction.width) == (100, 60)
    # clockwise: (x, y) -> (H - 1 - y, x); the box x 10..50, y 20..40 lands at x 20..40, y 10..50
    np.testing.assert_array_equal(prediction.boxes, [[60 - 40, 10, 60 - 20, 50]])


def test_grayscale_and_rgba_arrays_are_converted(reference_model):
    boxes = [("white", 5, 5, 25, 25), ("white", 40, 30, 70, 60)]
    rgb = draw_scene(H, W, boxes)
    gray = rgb[..., 0]
    rgba = np.dstack([rgb, np.full((H, W), 255, np.uint8)])
    for prediction in reference_model.predict([gray, rgba], progress=False):
        assert_boxes(prediction, boxes)


def test_supervisely_project_input_keeps_dataset_names(reference_model, tmp_path):
    project = tmp_path / "project"
    known = {}
    for dataset, name, seed in [("train", "x.png", 50), ("val", "y.png", 51)]:
        (project / dataset / "img").mkdir(parents=True)
        (project / dataset / "ann").mkdir()
        image, boxes = scene(seed)
        Image.fromarray(image).save(project / dataset / "img" / name)
        known[(dataset, name)] = boxes
    (project / "meta.json").write_text(json.dumps({"classes": [], "tags": []}))
    predictions = reference_model.predict(project, progress=False)
    assert [(p.dataset, p.name) for p in predictions] == list(known)
    for prediction, boxes in zip(predictions, known.values()):
        assert prediction.source == "supervisely"
        assert_boxes(prediction, boxes)


def test_masks_come_back_aligned_with_boxes_in_original_pixels(ray_session):
    from engine.models.reference import ColorBoxDetector

    boxes = [("red", 10, 10, 50, 40), ("cyan", 80, 60, 150, 110)]
    image = draw_scene(H, W, boxes)
    with engine.deploy(ColorBoxDetector, with_masks=True) as model:
        prediction = model.predict(image, img_size=(60, 80), progress=False)[0]
    assert prediction.masks.shape == (2, H, W)
    for box, mask in zip(prediction.boxes, prediction.masks):
        x1, y1, x2, y2 = box.astype(int)
        ys, xs = np.nonzero(mask)
        assert abs(xs.min() - x1) <= 2 and abs(ys.min() - y1) <= 2
        assert abs(xs.max() + 1 - x2) <= 2 and abs(ys.max() + 1 - y2) <= 2
    assert prediction.annotation["objects"][0]["geometryType"] == "bitmap"
