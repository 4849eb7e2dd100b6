"""faces/mtcnn through Tessera equals facenet-pytorch called directly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

import engine

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PHOTOS = ["astronaut.png", "camera.png", "grace_hopper.jpg"]


def test_mtcnn_through_tessera_matches_facenet_directly(ray_session):
    from facenet_pytorch import MTCNN

    direct = MTCNN(keep_all=True, device="cpu")
    with engine.deploy("faces/mtcnn") as model:
        predictions = model.predict([EXAMPLES / name for name in PHOTOS], progress=False)
    for name, prediction in zip(PHOTOS, predictions):
        boxes, probs = direct.detect(Image.open(EXAMPLES / name).convert("RGB"))
        boxes = np.asarray(boxes, np.float32)
        assert prediction.error is None
        assert len(prediction) == 1, f"{name}: one face expected"
        np.testing.assert_allclose(prediction.boxes, boxes, atol=1e-3)
        np.testing.assert_allclose(prediction.scores, np.asarray(probs, np.float32), atol=1e-5)
        assert prediction.classes == ["face"]
        assert prediction.keypoints.shape == (1, 5, 3)
