"""What only a GPU can show: ``half=True`` (float16 autocast). Skipped without CUDA.

On a machine with a GPU these run in `make test`; the rest of the suite runs on CPUs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import engine
from engine.models.torchvision_models import TorchvisionDetector

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ARCHITECTURE = "fasterrcnn_mobilenet_v3_large_fpn"


def test_half_predicts_the_objects_float32_predicts(ray_session, tmp_path):
    torch.manual_seed(0)
    detector = TorchvisionDetector(ARCHITECTURE, pretrained=False)
    detector.load("cpu")
    weights = tmp_path / "weights.pt"
    torch.save(detector.network.state_dict(), weights)  # the same weights for both
    rng = np.random.default_rng(0)
    images = [(rng.random((320, 320, 3)) * 255).astype(np.uint8) for _ in range(4)]
    found = {}
    for half in (False, True):
        with engine.deploy(
            f"torchvision/{ARCHITECTURE}", device="cuda", weights=str(weights), half=half
        ) as model:
            found[half] = model.predict(images, conf=0.05, progress=False)
    for full, halved in zip(found[False], found[True]):
        assert full.error is None and halved.error is None
        assert abs(len(full) - len(halved)) <= max(2, len(full) // 10)  # borderline scores
