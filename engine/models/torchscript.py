"""TorchScript models: run a ``torch.jit.save`` archive as a Tessera model.

The archive may carry an extra file ``tessera.json`` (written by `save_torchscript`) that
says what the script predicts::

    {"format": "tessera-torchscript", "version": 1, "task": "classification",
     "classes": ["cat", "dog"], "input_size": [224, 224],
     "preprocess": {"resize_size": 256, "crop_size": 224, "mean": [...], "std": [...]}}

Without it, pass ``task=`` and ``classes=``. Two kinds of scripts are understood:

- classification: the script takes an (N, 3, H, W) float batch, preprocessed as
  torchvision's ImageNet classifiers expect (see `ClassifierPreprocess`, overridable with
  "preprocess"), and returns (N, C) logits;
- detection (also instance_segmentation and keypoints): the script takes a list of float
  CHW tensors in [0, 1] and returns torchvision-style outputs, a list of dicts with
  ``boxes``, ``scores``, ``labels`` (and ``masks`` / ``keypoints``), or the
  ``(losses, detections)`` tuple that scripted torchvision detectors return.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch

from engine.detections import Detections
from engine.models.base import ModelAdapter, Task
from engine.models.torchvision_models import (
    ClassifierPreprocess,
    detections_from_logits,
    detections_from_output,
    images_to_tensors,
)

#: Name of the extra file inside the archive that describes the model.
EXTRA_FILE = "tessera.json"
#: The value of tessera.json's "format" key.
TORCHSCRIPT_FORMAT = "tessera-torchscript"

_DEFAULT_INPUT_SIZE = {"classification": (224, 224)}


def save_torchscript(
    path: str | Path,
    module: torch.nn.Module,
    task: Task,
    classes: Sequence[str],
    input_size: tuple[int, int] | None = None,
    preprocess: ClassifierPreprocess | None = None,
) -> Path:
    """Write a TorchScript archive that Tessera can run, with its ``tessera.json``.

    Args:
        path: The file to write (parent folders are created).
        module: A ``torch.jit.ScriptModule``, or an ``nn.Module`` that is scripted here.
        task: What the script predicts (see the module docstring for the expected I/O).
        classes: Class names indexed by the script's class outputs.
        input_size: The (height, width) the network is designed for.
        preprocess: For classification, the resize/crop/normalisation to apply
            (default: torchvision's ImageNet one, resize 256 and crop 224).

    Returns:
        The path written.

    Example:
        >>> net = torchvision.models.mobilenet_v3_small().eval()  # doctest: +SKIP
        >>> save_torchscript("clf.ts", torch.jit.script(net), "classification",
        ...                  imagenet_names)  # doctest: +SKIP
        >>> resolve_model("clf.ts").task  # doctest: +SKIP
        'classification'

    """
    if task not in get_args(Task):
        raise ValueError(f"task must be one of {get_args(Task)}, got {task!r}")
    if isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
        raise ValueError("classes must be a sequence of class-name strings")
    description: dict[str, Any] = {
        "format": TORCHSCRIPT_FORMAT,
        "version": 1,
        "task": task,
        "classes": list(classes),
    }
    if input_size is not None:
        description["input_size"] = [int(v) for v in input_size]
    if preprocess is not None:
        description["preprocess"] = {
            "resize_size": preprocess.resize_size,
            "crop_size": preprocess.crop_size,
            "mean": list(preprocess.mean),
            "std": list(preprocess.std),
            "interpolation": preprocess.interpolation,
        }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        scripted = (
            module if isinstance(module, torch.jit.ScriptModule) else torch.jit.script(module)
        )
        torch.jit.save(scripted, str(path), _extra_files={EXTRA_FILE: json.dumps(description)})
    return path


def read_description(path: str | Path) -> dict[str, Any]:
    """Return the ``tessera.json`` stored in a TorchScript archive ({} when it has none).

    It reads the zip entry directly, without loading the script.

    Example:
        >>> read_description("clf.ts")["task"]  # doctest: +SKIP
        'classification'

    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith(f"/extra/{EXTRA_FILE}")), None)
            if name is None:
                return {}
            raw = archive.read(name)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"{path}: is not a TorchScript archive ({exc})") from exc
    try:
        description = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: its {EXTRA_FILE} is not valid JSON ({exc})") from exc
    if not isinstance(description, dict):
        raise ValueError(f"{path}: its {EXTRA_FILE} must hold a JSON object")
    return description


class TorchScriptModel(ModelAdapter):
    """Run a TorchScript archive; see the module docstring for the scripts it understands.

    Args:
        path: The archive written by ``torch.jit.save`` (or `save_torchscript`).
        task: What it predicts; default from its ``tessera.json``.
        classes: Class names; default from its ``tessera.json``.

    Raises:
        ValueError: task or classes are neither given nor stored in the archive.

    Example:
        >>> clf = TorchScriptModel("clf.ts"); clf.load("cpu")  # doctest: +SKIP
        >>> clf.infer([image], 0.0)[0].class_idxs  # doctest: +SKIP

    """

    def __init__(
        self, path: str | Path, task: Task | None = None, classes: list[str] | None = None
    ) -> None:
        self.path = Path(path).expanduser().resolve()
        description = read_description(self.path)
        task = task or description.get("task")
        classes = classes if classes is not None else description.get("classes")
        if task is None or classes is None:
            missing = [n for n, v in (("task", task), ("classes", classes)) if v is None]
            raise ValueError(
                f"{self.path}: TorchScript archive without {EXTRA_FILE}; pass "
                f"{' and '.join(f'{m}=' for m in missing)} (or write it with save_torchscript)"
            )
        if task not in get_args(Task):
            raise ValueError(f"{self.path}: task must be one of {get_args(Task)}, got {task!r}")
        if isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
            raise ValueError(f"{self.path}: classes must be a list of strings")
        self.name = f"torchscript/{self.path.name}"
        self.task = task
        self.classes = list(classes)
        self.default_conf = 0.0 if task == "classification" else 0.5
        size = description.get("input_size") or _DEFAULT_INPUT_SIZE.get(task, (800, 800))
        self.input_size = (int(size[0]), int(size[1]))
        self.preprocess = _preprocess_from(description.get("preprocess"))
        self.network: torch.jit.ScriptModule | None = None
        self.device: torch.device | None = None

    def load(self, device: str) -> None:
        """Load the script onto ``device``."""
        self.device = torch.device(device)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
            try:
                network = torch.jit.load(str(self.path), map_location=self.device)
            except RuntimeError as exc:
                raise ValueError(
                    f"{self.path}: cannot load the TorchScript archive: {exc}"
                ) from exc
        self.network = network.eval()

    def infer(self, images: list[np.ndarray], conf: float) -> list[Detections]:
        """Run the script on the batch and convert its output (see the module docstring)."""
        if self.network is None:
            raise RuntimeError(f"{self.name}: call load(device) before infer()")
        if not images:
            return []
        with torch.inference_mode():
            if self.task == "classification":
                logits = self.network(self.preprocess(images, self.device))
                return detections_from_logits(_logits(logits, self.path), images)
            outputs = self.network(images_to_tensors(images, self.device))
        if isinstance(outputs, tuple) and len(outputs) == 2 and isinstance(outputs[1], list):
            outputs = outputs[1]  # scripted torchvision detectors return (losses, detections)
        if not isinstance(outputs, list) or len(outputs) != len(images):
            raise RuntimeError(
                f"{self.path}: a {self.task} script must return a list of {len(images)} dicts "
                f"with boxes, scores and labels; got {type(outputs).__name__}"
            )
        return [detections_from_output(output).with_min_score(conf) for output in outputs]


def _logits(output: Any, path: Path) -> torch.Tensor:
    if isinstance(output, (tuple, list)) and output:
        output = output[0]
    if not isinstance(output, torch.Tensor) or output.ndim != 2:
        raise RuntimeError(f"{path}: a classification script must return (N, C) logits")
    return output


def _preprocess_from(spec: dict[str, Any] | None) -> ClassifierPreprocess:
    spec = dict(spec or {})
    for key in ("mean", "std"):
        if key in spec:
            spec[key] = tuple(float(v) for v in spec[key])
    try:
        return ClassifierPreprocess(**{"resize_size": 256, "crop_size": 224, **spec})
    except TypeError as exc:
        raise ValueError(f"invalid 'preprocess' in {EXTRA_FILE}: {exc}") from exc
