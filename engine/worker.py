"""The model worker: a Ray actor that holds one loaded model and predicts batches.

Workers are created by `engine.deploy` and live as long as the `ModelAPI`, so every
`predict` call reuses a loaded, warmed-up model instead of paying for process start,
imports and weight loading again.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

import numpy as np

from engine.inference import ImageResult, predict_images
from engine.models.base import ModelAdapter
from engine.settings import ModelInfo, PredictSettings


class ModelWorker:
    """Holds a loaded `ModelAdapter` and predicts the batches sent to it.

    Args:
        adapter: The (not yet loaded) adapter; it is loaded here, on ``device``.
        device: "cpu", "cuda" or "cuda:N" as seen inside this worker.
        threads: Torch intra-op threads for CPU inference (None: torch's default).
    """

    def __init__(self, adapter: ModelAdapter, device: str, threads: int | None = None) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.adapter = adapter
        self.device = device
        adapter.load(device)
        self._warm_up()

    def _warm_up(self) -> None:
        h, w = self.adapter.input_size
        self.adapter.infer([np.zeros((min(h, 256), min(w, 256), 3), np.uint8)], 1.0)

    def info(self) -> dict[str, Any]:
        """Describe the loaded model (name, task, classes, default_conf, input_size)."""
        info = ModelInfo(
            name=str(self.adapter.name),
            task=str(self.adapter.task),
            classes=list(self.adapter.classes),
            default_conf=float(self.adapter.default_conf),
            input_size=tuple(self.adapter.input_size),
        )
        return {**asdict(info), "device": self.device, "pid": os.getpid()}

    def predict(self, images: list[np.ndarray], settings: PredictSettings) -> list[ImageResult]:
        """Predict a batch of decoded images (see `engine.inference.predict_images`)."""
        return predict_images(self.adapter, images, settings)
