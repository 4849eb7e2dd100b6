"""The `ModelAdapter` contract every model in Tessera fulfils.

An adapter turns a list of RGB images into a list of `Detections`. Everything else
(decoding, resizing for ``img_size``, score and class filtering, batching, tiling, moving
results back into original-image pixels) is Tessera's job, not the adapter's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Literal, get_args

import numpy as np

from engine.detections import Detections

Task = Literal["detection", "instance_segmentation", "keypoints", "classification"]
#: The tasks a model can have.
TASKS: tuple[str, ...] = get_args(Task)


def check_task(task: str) -> None:
    """Raise ValueError naming the valid tasks unless ``task`` is one of `TASKS`.

    Example:
        >>> check_task("detection")
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")


class ModelAdapter(ABC):
    """Base class for a model that Tessera can deploy.

    Subclasses set the class attributes (or instance attributes in ``__init__``) and
    implement `load` and `infer`. The adapter object is pickled to the model workers
    before `load` is called there, so ``__init__`` must stay light: build networks and
    read weights in `load`.

    Attributes:
        name: A short name shown in summaries and `tessera models`.
        task: One of "detection", "instance_segmentation", "keypoints", "classification".
        classes: Class names; a Detections' ``class_idxs`` index into this list.
        default_conf: Score threshold used when `predict` gets ``conf=None``.
        input_size: The (height, width) the network is designed for.

    Example:
        >>> class Boxes(ModelAdapter):
        ...     task, classes, default_conf, input_size = "detection", ["thing"], 0.5, (64, 64)
        ...     def load(self, device): pass
        ...     def infer(self, images, conf):
        ...         return [Detections.empty() for _ in images]
    """

    name: ClassVar[str] | str = "custom"
    task: Task = "detection"
    classes: list[str] = []
    default_conf: float = 0.5
    input_size: tuple[int, int] = (640, 640)

    def check_ready(self) -> None:
        """Refuse, in the deploying process, what would only fail once a worker loads.

        `engine.deploy` calls it before Ray or any worker starts, so a model that cannot
        load (weights that cannot be fetched, say) fails in a second with one line
        instead of after the start-up. The default checks nothing.

        Raises:
            RuntimeError: The model cannot be loaded; the message says what to do.
        """
        return None

    @abstractmethod
    def load(self, device: str) -> None:
        """Build the network and read its weights onto ``device`` ("cpu", "cuda:0", ...)."""

    def use_nms(self, iou: float | None, max_det: int | None) -> bool:
        """Have the model's own NMS use ``iou`` (and keep ``max_det`` objects) from now on.

        Called before each batch. None restores the model's own value. An adapter whose
        network suppresses overlaps itself (torchvision's detectors) sets its threshold
        and returns True; then Tessera runs no second NMS over its output. The default,
        for a model without its own NMS, returns False and Tessera suppresses overlaps
        at ``iou`` after the model.
        """
        return False

    @abstractmethod
    def infer(self, images: list[np.ndarray], conf: float) -> list[Detections]:
        """Predict on a batch of images.

        Args:
            images: HWC RGB uint8 arrays; sizes may differ within a batch.
            conf: The score threshold; an adapter may use it to prune early, and Tessera
                filters by it again afterwards.

        Returns:
            One `Detections` per image, in the pixels of the image it was given.
        """
