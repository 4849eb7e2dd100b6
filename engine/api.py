"""The public entry points: `deploy` a model, then `predict` with the `ModelAPI`."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import ray
from tqdm.auto import tqdm

from engine.models.base import ModelAdapter
from engine.models.zoo import resolve_model
from engine.pipeline import iter_prediction_rows, plan_predictions
from engine.prediction import Prediction
from engine.runtime import cluster_gpus, ensure_ray
from engine.settings import ModelInfo, PredictSettings, validate_settings
from engine.sources.resolve import resolve_input
from engine.worker import ModelWorker

logger = logging.getLogger(__name__)

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")
_ENGINE_OPTIONS = ("num_workers", "threads")
_ERROR_LINE = re.compile(r"^[A-Za-z_.]*(Error|Exception)\b.*:")


class PredictionResults(list):
    """The Predictions of one `predict` call (a list), plus what was skipped.

    Attributes:
        skipped: Files inside input directories that were not images, so not predicted.
    """

    def __init__(self, predictions: Iterable[Prediction], skipped: list[str]) -> None:
        super().__init__(predictions)
        self.skipped = skipped

    @property
    def failed(self) -> list[Prediction]:
        """The Predictions that carry an error."""
        return [p for p in self if p.error is not None]

    def summary(self) -> dict[str, Any]:
        """Counts of items, failures, skipped files and objects found."""
        return {
            "items": len(self),
            "predicted": len(self) - len(self.failed),
            "failed": len(self.failed),
            "skipped": len(self.skipped),
            "objects": sum(len(p) for p in self),
        }


class ModelAPI:
    """A deployed model: its workers hold the loaded weights until `close`.

    Obtain one with `engine.deploy`. Usable as a context manager.
    """

    def __init__(self, workers: list[Any], info: ModelInfo, device: str) -> None:
        self._workers = workers
        self.info = info
        self.device = device

    @property
    def classes(self) -> list[str]:
        """The model's class names."""
        return list(self.info.classes)

    @property
    def task(self) -> str:
        """The model's task: detection, instance_segmentation, keypoints or classification."""
        return self.info.task

    @property
    def num_workers(self) -> int:
        """How many model workers (Ray actors) serve this model."""
        return len(self._workers)

    def settings(self, **options: Any) -> PredictSettings:
        """Validate `predict` options against this model without running anything."""
        return validate_settings(options, self.info)

    def predict(self, input: Any, **options: Any) -> PredictionResults:  # noqa: A002
        """Predict over images and return one Prediction per image, in input order.

        Args:
            input: An image path, a directory, an http(s) URL, a PIL image, a numpy array
                (HWC RGB uint8; grayscale and RGBA are converted), a local Supervisely
                project, or a list mixing these.
            **options: conf, batch_size, img_size, classes, recursive, progress,
                max_pixels, url_timeout (see `engine.settings.SETTINGS`). Any other
                keyword is an error.

        Returns:
            A list of Predictions (with ``.skipped`` non-image files and ``.summary()``).
            An item that could not be read or predicted is a Prediction whose ``error``
            says why; it never stops the others.

        Example:
            >>> model = engine.deploy("reference/color-boxes")  # doctest: +SKIP
            >>> model = engine.deploy("reference/color-boxes")  # doctest: +SKIP
            >>> preds[0].boxes, preds[0].classes  # doctest: +SKIP
        """
        # 1) settings, once, at the boundary
        settings = validate_settings(options, self.info)
        # 2) input -> items
        resolved = resolve_input(input, recursive=settings.recursive)
        if resolved.skipped:
            logger.warning("skipped %d non-image file(s)", len(resolved.skipped))
        # 3) items -> Ray Data plan -> prediction rows -> Predictions
        dataset = plan_predictions(resolved.items, self._workers, settings)
        predictions: list[Prediction] = []
        with tqdm(
            total=len(resolved.items), disable=not settings.progress, desc="predict", unit="img"
        ) as bar:
            for rows in iter_prediction_rows(dataset):
                for row in rows:
                    prediction = Prediction.from_arrow(row, self.info.classes, self.info.task)
                    prediction.image = resolved.in_memory.get(prediction.index)
                    predictions.append(prediction)
                bar.update(len(rows))
        predictions.sort(key=lambda p: p.index)
        return PredictionResults(predictions, resolved.skipped)

    def close(self) -> None:
        """Stop the model workers and free what they hold."""
        for worker in self._workers:
            ray.kill(worker)
        self._workers = []

    def __enter__(self) -> ModelAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"ModelAPI(model={self.info.name!r}, task={self.info.task!r}, "
            f"device={self.device!r}, workers={self.num_workers})"
        )


def deploy(
    model: str | Path | ModelAdapter | type[ModelAdapter],
    device: str = "cpu",
    address: str | None = None,
    **options: Any,
) -> ModelAPI:
    """Load a model onto Ray workers and return the API to predict with it.

    Args:
        model: A zoo name (see `tessera models`), a checkpoint path (Tessera checkpoint or
            TorchScript), or your own `ModelAdapter` subclass or instance.
        device: "cpu", "cuda" (a GPU per worker, placed by Ray) or "cuda:N" (GPU N of the
            node, outside Ray's GPU accounting).
        address: A Ray cluster to join; None starts a local Ray (or uses RAY_ADDRESS).
        **options: ``num_workers`` (model workers; default one per GPU with cuda, else 1),
            ``threads`` (torch threads per CPU worker; default the node's CPUs divided among
            the workers), and the model's options: ``pretrained``, ``weights``,
            ``classes``, ``architecture``, ``task``.

    Returns:
        A ModelAPI whose workers hold the loaded model.

    Raises:
        ValueError: An invalid device or option, or cuda without GPUs in the cluster.

    Example:
        >>> model = engine.deploy("faces/mtcnn")  # doctest: +SKIP
        >>> model.predict("examples/astronaut.png")[0].boxes  # doctest: +SKIP
    """
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    engine_options = {k: options.pop(k) for k in _ENGINE_OPTIONS if k in options}
    adapter = resolve_model(model, **options)
    ensure_ray(address)
    _ship_user_code(type(adapter))
    num_workers, threads = _worker_layout(device, **engine_options)
    # Workers are long-lived services: they hold no CPU slot, which would starve (and, with
    # several models deployed on a small node, deadlock) the decode tasks of every plan.
    actor_options: dict[str, Any] = {
        "max_restarts": 3,
        "max_task_retries": 2,
        "num_cpus": 0,
        "scheduling_strategy": "SPREAD",
    }
    worker_device = device
    if device == "cuda":
        actor_options.update(num_gpus=1)
        worker_device = "cuda:0"
    elif device.startswith("cuda:"):
        actor_options.update(
            runtime_env={"env_vars": {"CUDA_VISIBLE_DEVICES": device.split(":")[1]}}
        )
        worker_device = "cuda:0"
    remote_worker = ray.remote(ModelWorker).options(**actor_options)
    workers = [remote_worker.remote(adapter, worker_device, threads) for _ in range(num_workers)]
    try:
        infos = ray.get([w.info.remote() for w in workers])
    except ray.exceptions.RayActorError as exc:
        for worker in workers:
            ray.kill(worker)
        raise RuntimeError(
            f"model {adapter.name!r} failed to load on {device}: {_root_cause(exc)}"
        ) from exc
    info = infos[0]
    model_info = ModelInfo(
        name=info["name"],
        task=info["task"],
        classes=info["classes"],
        default_conf=info["default_conf"],
        input_size=tuple(info["input_size"]),
    )
    logger.info("deployed %s on %d %s worker(s)", model_info.name, num_workers, device)
    return ModelAPI(workers, model_info, device)


def _ship_user_code(adapter_class: type) -> None:
    """Let workers unpickle an adapter class defined in the user's own, uninstalled module.

    Classes are pickled by reference (module + name); a worker process cannot import a
    module that lives only beside the user's script, so such a module travels by value.
    """
    module = sys.modules.get(adapter_class.__module__)
    file = getattr(module, "__file__", None)
    if module is None or file is None or module.__name__ == "__main__":
        return
    if module.__name__.split(".")[0] in ("engine", "serve", "connectors"):
        return
    if any(part in Path(file).parts for part in ("site-packages", "dist-packages")):
        return
    ray.cloudpickle.register_pickle_by_value(module)


def _root_cause(error: BaseException) -> str:
    """Return the last 'SomethingError: message' line of a Ray error, without colours."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    causes = [line.strip() for line in text.splitlines() if _ERROR_LINE.match(line.strip())]
    return causes[-1] if causes else text.strip().splitlines()[-1]


def _worker_layout(
    device: str, num_workers: int | None = None, threads: int | None = None
) -> tuple[int, int | None]:
    if num_workers is not None and (isinstance(num_workers, bool) or int(num_workers) < 1):
        raise ValueError(f"num_workers must be a positive integer, got {num_workers!r}")
    if threads is not None and (isinstance(threads, bool) or int(threads) < 1):
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    if device.startswith("cuda"):
        gpus = int(cluster_gpus())
        if gpus < 1:
            raise ValueError(f"device {device!r} asked for, but the Ray cluster has no GPU")
        return (num_workers or (gpus if device == "cuda" else 1)), threads
    workers = num_workers or 1
    cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
    return workers, threads or max(1, cpus // workers)
