"""Torch is imported only where a model needs it (a model without torch starts seconds sooner).

Each check runs in a fresh interpreter, whose ``sys.modules`` shows what was imported.
"""

from __future__ import annotations

import json
import subprocess
import sys

LEAN_DRIVER_AND_WORKER = """
import json, os, sys
import numpy as np
import engine.api, engine.session, engine.cli  # what a driver and a session actor import
from engine.inference import predict_images
from engine.models.zoo import list_models, resolve_model
from engine.settings import ModelInfo, validate_settings
from engine.worker import ModelWorker

names = [entry.name for entry in list_models()]  # the zoo, torchvision names included
adapter = resolve_model("reference/color-boxes")
worker = ModelWorker(adapter, "cpu", threads=1)
image = np.zeros((40, 60, 3), np.uint8)
image[5:20, 10:30] = (255, 0, 0)
found = worker.predict([image], validate_settings({}, ModelInfo.of(adapter)))
print(json.dumps({
    "torch": "torch" in sys.modules,
    "torchvision": "torchvision" in sys.modules,
    "omp_threads": os.environ.get("OMP_NUM_THREADS"),
    "zoo_has_torchvision": "torchvision/resnet50" in names,
    "objects": len(found[0].detections),
    "info_device": worker.resources()["device"],
}))
"""

WITH_IOU = """
import json, sys
import numpy as np
from engine.models.reference import ColorBoxDetector
from engine.settings import ModelInfo, validate_settings
from engine.worker import ModelWorker

adapter = ColorBoxDetector()
worker = ModelWorker(adapter, "cpu")
image = np.zeros((40, 60, 3), np.uint8)
image[5:25, 10:30] = (255, 0, 0)
image[7:27, 12:32] = (0, 255, 0)  # overlaps the red one: IoU about 0.7
info = ModelInfo.of(adapter)
apart = worker.predict([image], validate_settings({"conf": 0.1}, info))
suppressed = {"conf": 0.1, "iou": 0.5, "agnostic_nms": True}
merged = worker.predict([image], validate_settings(suppressed, info))
after_nms = "torch" in sys.modules
from engine.tiling import merge_detections  # SAHI's NMS order runs on torchvision's NMS

sahi = merge_detections(apart[0].detections, "nms", "iou", 0.5, True, sahi_compatible=True)
print(json.dumps({
    "torch_after_nms": after_nms,
    "torch_after_sahi_nms": "torch" in sys.modules,
    "objects": [len(apart[0].detections), len(merged[0].detections), len(sahi)],
}))
"""


def run(code: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_model_without_torch_is_resolved_loaded_and_predicts_without_importing_it():
    seen = run(LEAN_DRIVER_AND_WORKER)
    assert seen["objects"] == 1  # the red rectangle, found
    assert seen["zoo_has_torchvision"]  # listing the zoo needs no torch
    assert seen["torch"] is False and seen["torchvision"] is False
    # the worker's thread count still reaches torch, should the model import it later
    assert seen["omp_threads"] == "1"
    assert seen["info_device"] == "cpu"


def test_iou_suppression_needs_no_torch_and_sahi_order_imports_it_on_use():
    seen = run(WITH_IOU)
    # two overlapping boxes; class-agnostic NMS keeps one, in both orders
    assert seen["objects"] == [2, 1, 1]
    assert seen["torch_after_nms"] is False
    assert seen["torch_after_sahi_nms"] is True  # torchvision's NMS, imported when it runs
