"""The model worker: a Ray actor that holds one loaded model and predicts batches.

Workers are created by `engine.deploy` and live as long as the `ModelAPI`, so every
`predict` call reuses a loaded, warmed-up model instead of paying for process start,
imports and weight loading again.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray

from engine.inference import ImageResult, predict_images
from engine.models.base import ModelAdapter
from engine.settings import ModelInfo, PredictSettings
from engine.sources.bands import BandSource
from engine.stored_images import StoredImage, fetch_stored


class ModelWorker:
    """Holds a loaded `ModelAdapter` and predicts the batches sent to it.

    Args:
        adapter: The (not yet loaded) adapter; it is loaded here, on ``device``.
        device: "cpu", "cuda" or "cuda:N" as seen inside this worker.
        threads: Torch intra-op threads for CPU inference (None: torch's default).
        half: Run the model under float16 autocast (a GPU only): convolutions and matrix
            products in half precision, the rest (box decoding, NMS) as the model wants.
    """

    def __init__(
        self, adapter: ModelAdapter, device: str, threads: int | None = None, half: bool = False
    ) -> None:
        # torch only where the model needs it: a model that does not use it (the reference
        # detector) starts its worker seconds sooner without it. Torch reads its thread
        # count from OMP_NUM_THREADS when it is first imported, and is told again after.
        if threads and "torch" not in sys.modules:
            os.environ["OMP_NUM_THREADS"] = str(threads)
        if half and not (device.startswith("cuda") and _cuda_available()):
            raise RuntimeError(f"half=True needs a GPU; this worker has {device} only")
        self.adapter = adapter
        self.device = device
        self.half = half
        adapter.load(device)
        if threads and "torch" in sys.modules:
            import torch

            torch.set_num_threads(threads)
        self._warm_up()

    def _precision(self) -> Any:
        """The context predictions run in: float16 autocast with ``half``, else none."""
        import contextlib

        if self.half:
            import torch

            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _warm_up(self) -> None:
        h, w = self.adapter.input_size
        with self._precision():
            self.adapter.infer([np.zeros((min(h, 256), min(w, 256), 3), np.uint8)], 1.0)

    def info(self) -> dict[str, Any]:
        """Describe the loaded model (`ModelInfo.to_json`), with its device and process id."""
        described = ModelInfo.of(self.adapter).to_json()
        return {**described, "device": self.device, "half": self.half, "pid": os.getpid()}

    def predict(
        self, images: list[np.ndarray | BandSource | StoredImage], settings: PredictSettings
    ) -> list[ImageResult]:
        """Predict a batch of images: decoded, read in bands, or read from the object store.

        Large files are read in bands when tiling; large in-memory images are read where
        they lie in the object store, not copied.

        See `engine.inference.predict_images`.
        """
        with self._precision():
            return predict_images(self.adapter, fetch_stored(images), settings)

    def resources(self) -> dict[str, Any]:
        """This worker's memory: its process RSS (now and peak), and GPU memory on a GPU."""
        import resource

        import psutil

        process = {
            "rss": int(psutil.Process().memory_info().rss),
            "peak_rss": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
        }
        if not self.device.startswith("cuda") or not _cuda_available():
            return {"device": self.device, "process": process}
        import torch

        index = torch.device(self.device).index or 0
        free, total = torch.cuda.mem_get_info(index)
        return {
            "process": process,
            "device": f"{self.device} ({torch.cuda.get_device_name(index)})",
            "allocated_by_model": int(torch.cuda.memory_allocated(index)),
            "allocated_total": int(total - free),
            "total": int(total),
        }


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@dataclass(frozen=True)
class WorkerLayout:
    """Where and how many model workers run.

    Attributes:
        device: "cpu", "cuda" (one GPU per worker, placed by Ray) or "cuda:N".
        num_workers: How many workers hold the model.
        threads: Torch threads per CPU worker (None: torch's default).
        half: Float16 autocast on the GPU (see `ModelWorker`).
    """

    device: str
    num_workers: int
    threads: int | None = None
    half: bool = False


def start_model_workers(
    adapter: ModelAdapter, layout: WorkerLayout, name_prefix: str | None = None
) -> tuple[list[Any], ModelInfo]:
    """Start the model workers, wait until each has loaded the model, and describe it.

    Args:
        adapter: The (not loaded) adapter, pickled to every worker.
        layout: Device, worker count and threads.
        name_prefix: Name the workers ``<prefix>-worker-<i>`` (namespace "tessera").

    Returns:
        The worker handles and the model's description.

    Raises:
        RuntimeError: The model failed to load; the message names the root cause.
    """
    # Workers are long-lived services: they hold no CPU slot, which would starve (and, with
    # several models deployed on a small node, deadlock) the decode tasks of every plan.
    # Restarts are bounded so that a worker that keeps crashing fails the job instead of
    # looping; a lost node costs each of its workers one restart, elsewhere (soft placement).
    # Calls are retried until the worker is back: a call to a worker whose node just died
    # fails at once, many times over, until the head marks the node dead (seconds).
    # SPREAD puts them one per node (round-robin), but Ray ignores an actor's scheduling
    # strategy when it asks for no resource at all (the GCS picks a random node), hence the
    # token 1-byte memory demand; SPREAD is soft, so a lost node's workers restart elsewhere.
    options: dict[str, Any] = {
        "max_restarts": 3,
        "max_task_retries": -1,
        "num_cpus": 0,
        "memory": 1,
        "scheduling_strategy": "SPREAD",
    }
    worker_device = layout.device
    if layout.device == "cuda":
        options.update(num_gpus=1)
        worker_device = "cuda:0"
    elif layout.device.startswith("cuda:"):
        gpu = layout.device.split(":")[1]
        options.update(runtime_env={"env_vars": {"CUDA_VISIBLE_DEVICES": gpu}})
        worker_device = "cuda:0"
    remote_worker = ray.remote(ModelWorker)
    workers = []
    for i in range(layout.num_workers):
        named = {"name": f"{name_prefix}-worker-{i}", "namespace": "tessera"} if name_prefix else {}
        workers.append(
            remote_worker.options(**options, **named).remote(
                adapter, worker_device, layout.threads, layout.half
            )
        )
    try:
        infos = ray.get([w.info.remote() for w in workers])
    except ray.exceptions.RayActorError as exc:
        for worker in workers:
            ray.kill(worker)
        raise RuntimeError(
            f"model {adapter.name!r} failed to load on {layout.device}: {root_cause(exc)}"
        ) from exc
    return workers, ModelInfo.from_json(infos[0])


#: Ray's exceptions that only wrap the one that matters.
_RAY_WRAPPERS = ("ray.exceptions.UserCodeException", "ray.exceptions.RayTaskError")
_ERROR_LINE = re.compile(r"^[A-Za-z_.]*(Error|Exception)\b.*:")


def root_cause(error: BaseException) -> str:
    """Return the line naming the error that caused a Ray error, without colours.

    That is the last 'SomethingError: message' line that is not one of Ray's wrappers.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    causes = [line.strip() for line in text.splitlines() if _ERROR_LINE.match(line.strip())]
    real = [c for c in causes if not c.startswith(_RAY_WRAPPERS)]
    if real or causes:
        return (real or causes)[-1]
    return text.strip().splitlines()[-1] if text.strip() else type(error).__name__
