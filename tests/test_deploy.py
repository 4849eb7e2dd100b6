"""deploy(): checkpoints, TorchScript-free zoo models, devices and addresses, through Ray."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from scenes import draw_scene

import engine
from engine.models.zoo import resolve_model


def test_checkpoint_round_trip_gives_the_same_predictions(ray_session, tmp_path):
    torch.manual_seed(0)
    network = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=3
    )
    classes = ["__background__", "cat", "dog"]
    path = engine.save_checkpoint(
        tmp_path / "pets.pt", "torchvision/ssdlite320_mobilenet_v3_large", classes, network
    )
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (96, 128, 3), dtype=np.uint8) for _ in range(3)]

    direct = resolve_model(path)
    direct.load("cpu")
    expected = direct.infer(images, 0.05)
    with engine.deploy(path) as model:
        assert model.classes == classes
        predictions = model.predict(images, conf=0.05, progress=False)
    for prediction, detections in zip(predictions, expected):
        assert len(prediction) == len(detections) > 0
        np.testing.assert_allclose(prediction.boxes, detections.xyxy, atol=1e-4)
        np.testing.assert_allclose(prediction.scores, detections.scores, atol=1e-5)
        assert set(prediction.classes) <= {"cat", "dog"}


def test_adapter_class_with_options_and_zoo_name_deploy(ray_session):
    from engine.models.reference import ColorBoxDetector

    image = draw_scene(40, 40, [("red", 2, 2, 4, 4), ("blue", 10, 10, 30, 30)])
    with engine.deploy(ColorBoxDetector, min_area=10) as model:
        assert model.predict(image, progress=False)[0].classes == ["blue"]
    with engine.deploy("reference/color-boxes", num_workers=2) as model:
        assert model.num_workers == 2
        predictions = model.predict([image] * 6, batch_size=1, progress=False)
        assert [sorted(p.classes) for p in predictions] == [["blue", "red"]] * 6


def test_bad_device_options_and_address_are_clear_errors(ray_session):
    with pytest.raises(ValueError, match="device must be"):
        engine.deploy("reference/color-boxes", device="gpu")
    with pytest.raises(ValueError, match="no GPU"):
        engine.deploy("reference/color-boxes", device="cuda")
    with pytest.raises(ValueError, match="num_workers"):
        engine.deploy("reference/color-boxes", num_workers=0)
    with pytest.raises(ValueError, match="unknown model option.*'colour'"):
        engine.deploy("reference/color-boxes", colour="red")
    with pytest.raises(ValueError, match="already connected"):
        engine.deploy("reference/color-boxes", address="10.1.2.3:6379")
    with pytest.raises(RuntimeError, match="failed to load.*weights are corrupt"):
        engine.deploy(_BrokenModel())


class _BrokenModel(engine.ModelAdapter):
    name = "broken"
    classes = ["x"]

    def load(self, device):
        raise OSError("weights are corrupt")

    def infer(self, images, conf):
        return []


def test_decode_tasks_do_not_import_torch():
    """Decode tasks import engine.pipeline; pulling torch in there costs seconds per process."""
    import subprocess
    import sys

    code = "import sys, engine.pipeline; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_ray_address_joins_the_running_cluster(ray_session, tmp_path):
    """A second process given RAY_ADDRESS deploys and predicts on this test's cluster."""
    import os
    import subprocess
    import sys

    import ray

    address = ray.get_runtime_context().gcs_address
    script = (
        "import numpy as np, ray, engine\n"
        "with engine.deploy('reference/color-boxes') as model:\n"
        "    image = np.zeros((20, 20, 3), np.uint8); image[2:9, 3:7] = (0, 0, 255)\n"
        "    p = model.predict(image, progress=False)[0]\n"
        "print(ray.get_runtime_context().gcs_address, p.classes, p.boxes.tolist())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "RAY_ADDRESS": address},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert result.stdout.split()[0] == address
    assert "['blue'] [[3.0, 2.0, 7.0, 9.0]]" in result.stdout
