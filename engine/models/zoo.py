"""The model zoo: names for the models Tessera ships, and turning any model spec into an adapter.

`resolve_model` accepts a zoo name, a local file (Tessera checkpoint, TorchScript archive
or plain state dict), a `ModelAdapter` instance or a `ModelAdapter` subclass, and returns
an adapter that is not loaded yet (workers call ``load`` where the model runs).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from engine.models.architectures import ARCHITECTURES, ZOO_PREFIX
from engine.models.base import ModelAdapter, Task

#: The options `resolve_model` understands for zoo names and files.
MODEL_OPTIONS = ("pretrained", "weights", "classes", "architecture", "task")


@dataclass(frozen=True)
class ZooEntry:
    """One model of the zoo.

    Attributes:
        name: The name to deploy it by, e.g. ``"torchvision/resnet50"``.
        task: What it predicts.
        description: One line for `tessera models`.

    Example:
        >>> ZooEntry("faces/mtcnn", "detection", "faces").name
        'faces/mtcnn'

    """

    name: str
    task: Task
    description: str


_MTCNN = ZooEntry(
    "faces/mtcnn",
    "detection",
    "MTCNN faces with 5 landmarks as keypoints (facenet-pytorch, weights bundled)",
)


_REFERENCE = (
    ZooEntry(
        "reference/color-boxes",
        "detection",
        "deterministic detector of solid coloured rectangles (tests, benchmarks, demos)",
    ),
    ZooEntry(
        "reference/color-masks",
        "instance_segmentation",
        "the colour-rectangle detector with a mask per object",
    ),
)


def list_models() -> list[ZooEntry]:
    """Return every model of the zoo.

    Example:
        >>> "torchvision/resnet50" in [entry.name for entry in list_models()]
        True

    """
    entries = [
        ZooEntry(ZOO_PREFIX + name, a.task, a.description) for name, a in ARCHITECTURES.items()
    ]
    return [*entries, _MTCNN, *_REFERENCE]


def checkpoint_architecture(name: str) -> str:
    """Return the zoo name a checkpoint of architecture ``name`` is stored under.

    Only torchvision architectures can be checkpointed; the bare builder name is accepted.

    Raises:
        ValueError: ``name`` is not a torchvision architecture of the zoo.

    Example:
        >>> checkpoint_architecture("resnet50")
        'torchvision/resnet50'

    """
    bare = name.removeprefix(ZOO_PREFIX)
    if bare not in ARCHITECTURES:
        raise ValueError(
            f"{name!r} is not an architecture that checkpoints hold; use one of: "
            f"{', '.join(ZOO_PREFIX + a for a in ARCHITECTURES)}"
        )
    return ZOO_PREFIX + bare


def resolve_model(
    model: str | Path | ModelAdapter | type[ModelAdapter], **options: Any
) -> ModelAdapter:
    """Turn a model spec into a `ModelAdapter` (not loaded).

    Args:
        model: One of
            - a zoo name (`list_models`; the bare torchvision name, e.g. ``"resnet50"``,
              also works);
            - a local file: a Tessera checkpoint (builds the architecture stored in it with
              its classes and weights), a TorchScript archive, or a plain state dict
              (needs ``architecture=``);
            - a `ModelAdapter` instance, returned as is (no options allowed);
            - a `ModelAdapter` subclass, instantiated with ``options`` as its arguments.
        **options: For zoo names and files: ``pretrained`` (bool), ``weights`` (a local
            weights file for a zoo name), ``classes`` (list of names), ``architecture``
            (zoo name, for plain state dicts), ``task`` (for TorchScript files without
            ``tessera.json``; elsewhere it must match the model's task). A file's own
            weights are always used, so ``pretrained`` does not matter for files.

    Returns:
        The adapter.

    Raises:
        ValueError: An unknown zoo name (the message lists the zoo), an unknown or
            inapplicable option, or a file that is not a model.
        FileNotFoundError: ``model`` or ``weights`` names a file that does not exist.
        TypeError: ``model`` is not a name, path or adapter.

    Example:
        >>> resolve_model("ssdlite320_mobilenet_v3_large", pretrained=False).name
        'torchvision/ssdlite320_mobilenet_v3_large'

    """
    if isinstance(model, type) and issubclass(model, ModelAdapter):
        return _instantiate(model, options)
    unknown = sorted(set(options) - set(MODEL_OPTIONS))
    if unknown:
        raise ValueError(
            f"unknown model option(s) {', '.join(map(repr, unknown))}; valid options are: "
            f"{', '.join(MODEL_OPTIONS)}"
        )
    _check_option_types(options)
    if isinstance(model, ModelAdapter):
        if options:
            raise ValueError(
                f"options {sorted(options)} do not apply to a ModelAdapter instance; "
                "pass them to its constructor, or pass the class"
            )
        return model
    if not isinstance(model, (str, Path)):
        raise TypeError(
            "model must be a zoo name, a file path, or a ModelAdapter instance or subclass; "
            f"got {type(model).__name__}"
        )
    if isinstance(model, str) and _zoo_name(model) is not None:
        return _from_zoo(_zoo_name(model), options)  # type: ignore[arg-type]
    path = Path(model).expanduser()
    if path.exists():
        return _from_file(path, options)
    if isinstance(model, Path) or _looks_like_path(model):
        raise FileNotFoundError(f"model file not found: {model}")
    raise ValueError(_unknown_name_message(model))


# ---------------------------------------------------------------------- zoo names
def _zoo_name(name: str) -> str | None:
    names = {entry.name for entry in list_models()}
    if name in names:
        return name
    if ZOO_PREFIX + name in names:
        return ZOO_PREFIX + name
    return None


def _from_zoo(name: str, options: dict[str, Any]) -> ModelAdapter:
    entry = next(e for e in list_models() if e.name == name)
    _check_task(name, entry.task, options)
    if "architecture" in options and _zoo_name(options["architecture"]) != name:
        raise ValueError(f"architecture={options['architecture']!r} contradicts the model {name!r}")
    if name == _MTCNN.name:
        return _mtcnn(options)
    if name.startswith("reference/"):
        return _reference(name, options)
    if options.get("weights") is not None:
        _check_weights_file(Path(options["weights"]).expanduser(), name)
    from engine.models.torchvision_models import torchvision_adapter_class  # imports torch

    adapter_class = torchvision_adapter_class(name)
    return adapter_class(
        name,
        pretrained=options.get("pretrained", True),
        weights=options.get("weights"),
        classes=options.get("classes"),
    )


def _mtcnn(options: dict[str, Any]) -> ModelAdapter:
    from engine.models.mtcnn import MTCNNFaceDetector

    if options.get("pretrained", True) is False or options.get("weights") is not None:
        raise ValueError(
            "faces/mtcnn always uses the weights bundled with facenet-pytorch; "
            "pretrained=False and weights= do not apply to it"
        )
    if options.get("classes") not in (None, ["face"]):
        raise ValueError("faces/mtcnn has the single class ['face']; classes= cannot change it")
    return MTCNNFaceDetector()


def _reference(name: str, options: dict[str, Any]) -> ModelAdapter:
    from engine.models.reference import ColorBoxDetector

    if options.get("weights") is not None or options.get("classes") is not None:
        raise ValueError(
            f"{name} has no weights and fixed classes; weights= and classes= do not apply to it"
        )
    return ColorBoxDetector(with_masks=name.endswith("masks"))


# ---------------------------------------------------------------------- files
def _from_file(path: Path, options: dict[str, Any]) -> ModelAdapter:
    # torch only for what needs it (files, torchvision names): a reference or plain adapter
    # deploys without importing it
    from engine.models.checkpoint import is_torchscript, read_weights
    from engine.models.torchvision_models import torchvision_adapter_class

    if not path.is_file():
        raise ValueError(f"{path}: is a folder, not a model file")
    if is_torchscript(path):
        _reject(path, "a TorchScript archive", options, ("weights", "architecture"))
        from engine.models.torchscript import TorchScriptModel

        return TorchScriptModel(path, task=options.get("task"), classes=options.get("classes"))
    _reject(path, "a weights file", options, ("weights",))
    found = read_weights(path, mmap=True)
    if found.architecture is not None:
        try:
            architecture = checkpoint_architecture(found.architecture)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
        given = options.get("architecture")
        if given is not None and _zoo_name(given) != architecture:
            raise ValueError(
                f"{path}: is a checkpoint of {architecture!r}, but architecture={given!r}"
            )
    elif options.get("architecture") is not None:
        architecture = checkpoint_architecture(options["architecture"])
    else:
        raise ValueError(
            f"{path}: is a plain state dict, which does not say its architecture; pass "
            f"architecture= (one of: {', '.join(ARCHITECTURES)})"
        )
    _check_task(str(path), ARCHITECTURES[architecture.removeprefix(ZOO_PREFIX)].task, options)
    classes = options.get("classes")
    if classes is None and found.classes is not None:
        classes = found.classes
    return torchvision_adapter_class(architecture)(
        architecture, pretrained=False, weights=path, classes=classes
    )


# ---------------------------------------------------------------------- checks
def _check_weights_file(weights: Path, name: str) -> None:
    """Fail early, on the driver, for a weights= file the workers could not load."""
    from engine.models.checkpoint import read_weights

    if not weights.exists():
        raise FileNotFoundError(f"weights file not found: {weights}")
    found = read_weights(weights, mmap=True)  # ValueError naming the file if it is not one
    stored = found.architecture
    if stored is not None and stored.removeprefix(ZOO_PREFIX) != name.removeprefix(ZOO_PREFIX):
        raise ValueError(
            f"{weights}: is a checkpoint of {found.architecture!r}, not of {name!r}; "
            "resolve the checkpoint path itself to get its architecture"
        )


def _instantiate(cls: type[ModelAdapter], options: dict[str, Any]) -> ModelAdapter:
    signature = inspect.signature(cls)
    try:
        signature.bind(**options)
    except TypeError as exc:
        accepted = [p for p in signature.parameters if p not in ("args", "kwargs")]
        raise ValueError(
            f"{cls.__name__} does not accept these options ({exc}); its options are: "
            f"{', '.join(accepted) or 'none'}"
        ) from exc
    return cls(**options)


def _check_option_types(options: dict[str, Any]) -> None:
    checks: dict[str, tuple[Callable[[Any], bool], str]] = {
        "pretrained": (lambda v: isinstance(v, bool), "True or False"),
        "weights": (lambda v: v is None or isinstance(v, (str, Path)), "a file path"),
        "classes": (
            lambda v: (
                v is None
                or (isinstance(v, (list, tuple)) and bool(v) and all(isinstance(c, str) for c in v))
            ),
            "a non-empty list of class names",
        ),
        "architecture": (lambda v: v is None or isinstance(v, str), "a zoo name"),
        "task": (lambda v: v is None or v in get_args(Task), f"one of {get_args(Task)}"),
    }
    for key, value in options.items():
        ok, expected = checks[key]
        if not ok(value):
            raise ValueError(f"option {key} must be {expected}, got {value!r}")
    if isinstance(options.get("classes"), tuple):
        options["classes"] = list(options["classes"])


def _check_task(what: str, task: str, options: dict[str, Any]) -> None:
    given = options.get("task")
    if given is not None and given != task:
        raise ValueError(f"{what} is a {task} model, but task={given!r} was given")


def _reject(path: Path, kind: str, options: dict[str, Any], names: tuple[str, ...]) -> None:
    bad = [n for n in names if options.get(n) is not None]
    if bad:
        raise ValueError(f"{path}: is {kind}; option(s) {', '.join(bad)} do not apply to it")


def _looks_like_path(text: str) -> bool:
    return (
        bool(Path(text).suffix)
        or text.startswith((".", "/", "~", "\\"))
        or text.count("/") > 1
        or "\\" in text
    )


def _unknown_name_message(name: str) -> str:
    names = [entry.name for entry in list_models()]
    close = difflib.get_close_matches(name, names + list(ARCHITECTURES), n=3)
    hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
    return (
        f"unknown model {name!r}: not a zoo name nor an existing file.{hint} "
        f"Zoo models (see `tessera models`): {', '.join(names)}"
    )
