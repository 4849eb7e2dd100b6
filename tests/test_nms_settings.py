"""The settings Ultralytics users reach for: ``iou``, ``agnostic_nms``, ``max_det`` (issue 17)."""

from __future__ import annotations

import numpy as np
import pytest
from scenes import draw_scene

from engine.cli import main
from engine.detections import Detections
from engine.inference import predict_images
from engine.models.base import ModelAdapter
from engine.settings import ModelInfo, check_settings, validate_settings

# a box, its near twin of the same class (IoU 0.81), the same twin in another class, and
# a box far from them all
BOXES = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 1, 10, 11], [40, 40, 50, 50]], np.float32)
SCORES = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
CLASSES = np.array([0, 0, 1, 0])


class OverlappingBoxes(ModelAdapter):
    """A model whose every image holds `BOXES`, as a model without its own NMS gives them."""

    name, task, classes, default_conf, input_size = (
        "overlap",
        "detection",
        ["a", "b"],
        0.1,
        (64, 64),
    )

    def load(self, device: str) -> None:
        pass

    def infer(self, images: list[np.ndarray], conf: float) -> list[Detections]:
        return [Detections(BOXES, SCORES, CLASSES) for _ in images]


def predicted(**options) -> Detections:
    model = OverlappingBoxes()
    settings = validate_settings({"progress": False, **options}, ModelInfo.of(model))
    (result,) = predict_images(model, [np.zeros((64, 64, 3), np.uint8)], settings)
    return result.detections


def sorted_boxes(detections: Detections) -> list[list[float]]:
    return sorted(detections.xyxy.tolist())


def test_without_them_every_box_the_model_gives_is_kept():
    assert sorted_boxes(predicted()) == sorted(BOXES.tolist())


@pytest.mark.parametrize(
    ("options", "kept"),
    [
        ({"iou": 0.5}, [0, 2, 3]),  # the twin of its class goes, the other class's stays
        ({"iou": 0.9}, [0, 1, 2, 3]),  # 0.81 < 0.9: nothing overlaps that much
        ({"iou": 0.5, "agnostic_nms": True}, [0, 3]),  # across classes too
        ({"agnostic_nms": True}, [0, 3]),  # at Ultralytics' default iou, 0.7
        ({"max_det": 2}, [0, 1]),  # the two best-scoring
        ({"iou": 0.5, "max_det": 2}, [0, 2]),
    ],
)
def test_suppression_and_the_cap_keep_the_known_boxes(options, kept):
    assert sorted_boxes(predicted(**options)) == sorted(BOXES[kept].tolist())


def test_they_apply_to_tiled_images_after_the_merge():
    tiled = {"sliding_window": True, "window_size": 64, "overlap": 0, "merge": "none"}
    assert len(predicted(**tiled)) == 4
    assert predicted(**tiled, max_det=1).xyxy.tolist() == [BOXES[0].tolist()]
    assert sorted_boxes(predicted(**tiled, iou=0.5)) == sorted(BOXES[[0, 2, 3]].tolist())


@pytest.mark.parametrize(
    ("options", "message"),
    [({"iou": 1.5}, "iou must be between"), ({"max_det": 0}, "max_det"),
     ({"agnostic_nms": "yes"}, "agnostic_nms must be True or False")],
)  # fmt: skip
def test_bad_values_are_refused_naming_the_setting(options, message):
    with pytest.raises(ValueError, match=message):
        check_settings(options)


def test_through_predict_and_the_cli(reference_model, tmp_path, capsys):
    boxes = [("red", 2, 2, 20, 20), ("green", 30, 5, 50, 25), ("blue", 5, 30, 25, 50)]
    image = draw_scene(60, 60, boxes)
    (all_of_them,) = reference_model.predict(image, progress=False)
    (capped,) = reference_model.predict(image, max_det=2, iou=0.5, progress=False)
    assert len(all_of_them) == 3 and len(capped) == 2
    assert set(map(tuple, capped.boxes.tolist())) <= set(map(tuple, all_of_them.boxes.tolist()))
    args = ["predict", "x.png", "--model", "reference/color-boxes", "--out", str(tmp_path)]
    assert main([*args, "--max-det", "0"]) == 2  # refused before Ray or a model starts
    assert "max_det" in capsys.readouterr().err


class CountingOwnNms(OverlappingBoxes):
    """`OverlappingBoxes` as a model with its own NMS: it records the IoU it is given."""

    def use_nms(self, iou, max_det):
        self.used = (iou, max_det)
        return True


def test_a_model_with_its_own_nms_gets_the_iou_and_tessera_adds_no_second_pass():
    model = CountingOwnNms()
    settings = validate_settings({"iou": 0.5, "max_det": 2}, ModelInfo.of(model))
    (result,) = predict_images(model, [np.zeros((64, 64, 3), np.uint8)], settings)
    assert model.used == (0.5, 2)
    # its own NMS is trusted: the twin it returned stays; max_det still caps the objects
    assert sorted_boxes(result.detections) == sorted(BOXES[[0, 1]].tolist())
    agnostic = validate_settings({"iou": 0.5, "agnostic_nms": True}, ModelInfo.of(model))
    (result,) = predict_images(model, [np.zeros((64, 64, 3), np.uint8)], agnostic)
    assert sorted_boxes(result.detections) == sorted(BOXES[[0, 3]].tolist())  # across classes


def test_torchvision_detectors_run_their_own_nms_at_the_iou_asked_for():
    import torch

    from engine.models.torchvision_models import TorchvisionDetector

    torch.manual_seed(0)
    detector = TorchvisionDetector(
        "fasterrcnn_mobilenet_v3_large_fpn", pretrained=False, min_size=160, max_size=160
    )
    detector.load("cpu")
    heads = detector.network.roi_heads
    built = (heads.nms_thresh, heads.detections_per_img)
    image = (np.random.default_rng(0).random((160, 160, 3)) * 255).astype(np.uint8)
    settings = validate_settings({"iou": 0.2, "max_det": 300, "conf": 0.0}, ModelInfo.of(detector))
    (result,) = predict_images(detector, [image], settings)
    assert (heads.nms_thresh, heads.detections_per_img) == (0.2, 300)
    heads.score_thresh = 0.0  # the network's own output at that IoU is what Tessera returns
    with torch.inference_mode():
        (own,) = detector.network([torch.from_numpy(image).permute(2, 0, 1).float() / 255])
    assert len(result.detections) == len(own["boxes"]) > 0
    np.testing.assert_allclose(
        sorted_boxes(result.detections), sorted(own["boxes"].tolist()), atol=1e-3
    )
    predict_images(detector, [image], validate_settings({}, ModelInfo.of(detector)))
    assert (heads.nms_thresh, heads.detections_per_img) == built  # None: the model's own again
    predict_images(detector, [image], settings)
    tiled = validate_settings({"sliding_window": True, "window_size": 96}, ModelInfo.of(detector))
    predict_images(detector, [image], tiled)  # an earlier call's iou does not stay for tiles
    assert (heads.nms_thresh, heads.detections_per_img) == built
