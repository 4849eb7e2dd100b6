"""The `Predictor` deployment: a loaded model whose replicas predict requests in batches.

Each call predicts one decoded image with its settings; Serve gathers concurrent calls
into batches of up to ``max_batch_size`` (waiting at most ``batch_wait_timeout_s`` for a
batch to fill). A batch is split into groups of equal settings and each group goes through
`engine.inference.predict_images`, the code model workers run for batch prediction, so
resizing, tiling, merging and filtering work exactly as in `ModelAPI.predict`.
"""

from __future__ import annotations

import asyncio
import collections
import os
from typing import Any

import numpy as np
import ray
from ray import serve

from engine.inference import ImageResult, predict_images
from engine.models.base import ModelAdapter
from engine.models.zoo import resolve_model
from engine.settings import ModelInfo, PredictSettings


def predict_batch(
    adapter: ModelAdapter, images: list[np.ndarray], settings: list[PredictSettings]
) -> list[ImageResult]:
    """Predict images that each carry their own settings; images of equal settings share runs.

    Args:
        adapter: A loaded adapter.
        images: HWC RGB uint8 images.
        settings: The settings of each image (same length as ``images``).

    Returns:
        One `ImageResult` per image, in order.

    Example:
        >>> from engine.models.reference import ColorBoxDetector
        >>> from engine.settings import ModelInfo, validate_settings
        >>> adapter = ColorBoxDetector(); adapter.load("cpu")
        >>> info = ModelInfo("m", "detection", adapter.classes, 0.5, (512, 512))
        >>> image = np.zeros((20, 20, 3), np.uint8); image[2:6, 3:9] = (255, 0, 0)
        >>> results = predict_batch(adapter, [image], [validate_settings({}, info)])
        >>> results[0].detections.xyxy.tolist()
        [[3.0, 2.0, 9.0, 6.0]]
    """
    groups: dict[PredictSettings, list[int]] = collections.defaultdict(list)
    for index, setting in enumerate(settings):
        groups[setting].append(index)
    results: list[ImageResult | None] = [None] * len(images)
    for setting, indices in groups.items():
        outcomes = predict_images(adapter, [images[i] for i in indices], setting)
        for index, outcome in zip(indices, outcomes):
            results[index] = outcome
    return results  # type: ignore[return-value]


@serve.deployment(name="Predictor", ray_actor_options={"num_cpus": 0})
class Predictor:
    """A replica holding one loaded model; `predict` is batched by Serve.

    Args:
        model: A zoo name, checkpoint path, or `ModelAdapter` (instance or class).
        device: The device inside the replica: "cpu" or "cuda:0".
        model_options: Options of `engine.models.zoo.resolve_model` (pretrained,
            weights, classes, architecture, task).
        max_batch_size: Most images in one batch.
        batch_wait_timeout_s: Longest wait for a batch to fill.
    """

    def __init__(
        self,
        model: Any,
        device: str = "cpu",
        model_options: dict[str, Any] | None = None,
        max_batch_size: int = 8,
        batch_wait_timeout_s: float = 0.01,
    ) -> None:
        self.adapter = resolve_model(model, **(model_options or {}))
        self.adapter.load(device)
        h, w = self.adapter.input_size
        self.adapter.infer([np.zeros((min(h, 256), min(w, 256), 3), np.uint8)], 1.0)
        self.device = device
        self.predict.set_max_batch_size(max_batch_size)
        self.predict.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self._batching = (max_batch_size, batch_wait_timeout_s)
        self._batch_sizes: collections.Counter[int] = collections.Counter()

    async def info(self) -> dict[str, Any]:
        """Describe the loaded model (`ModelInfo.to_json`: name, task, classes...)."""
        return ModelInfo.of(self.adapter).to_json()

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def predict(
        self, images: list[np.ndarray], settings: list[PredictSettings]
    ) -> list[ImageResult]:
        """Predict one image with its settings (called per image; Serve batches the calls).

        Args:
            images: The batch's images (the caller passes one).
            settings: The batch's settings (the caller passes one).

        Returns:
            One `ImageResult` per image (the caller receives its own).
        """
        self._batch_sizes[len(images)] += 1
        # in a thread, so that requests keep arriving (and form the next batch) meanwhile
        return await asyncio.to_thread(predict_batch, self.adapter, images, settings)

    async def stats(self) -> dict[str, Any]:
        """Batches seen by this replica, and where it runs.

        Returns:
            ``{"batch_sizes": {size: count}, "batches": n, "images": n,
            "max_batch_size": B, "batch_wait_timeout_s": T, "replica": actor name,
            "pid": process id, "device": device}``.
        """
        return {
            "batch_sizes": dict(sorted(self._batch_sizes.items())),
            "batches": sum(self._batch_sizes.values()),
            "images": sum(size * count for size, count in self._batch_sizes.items()),
            "max_batch_size": self._batching[0],
            "batch_wait_timeout_s": self._batching[1],
            "replica": ray.get_runtime_context().get_actor_name(),
            "pid": os.getpid(),
            "device": self.device,
        }
