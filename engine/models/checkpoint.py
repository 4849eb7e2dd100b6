"""Tessera checkpoints: one file holding a zoo architecture's name, classes and weights.

A checkpoint is written with `torch.save` as a plain dict of tensors, strings and numbers,
so it loads with ``torch.load(..., weights_only=True)`` and never runs pickled code::

    {"format": "tessera-checkpoint", "version": 1,
     "architecture": "torchvision/ssdlite320_mobilenet_v3_large",
     "classes": ["__background__", "cat", "dog"],
     "state_dict": {...}, "metadata": {...}}

`read_weights` also reads plain state-dict files, and `is_torchscript` recognises TorchScript
archives (see `engine.models.torchscript`), so the zoo can tell the three kinds apart.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.models.base import ModelAdapter

#: The value of a checkpoint's "format" key.
CHECKPOINT_FORMAT = "tessera-checkpoint"
#: The newest checkpoint version this code reads and the one it writes.
CHECKPOINT_VERSION = 1

_REQUIRED_KEYS: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "version": int,
    "architecture": str,
    "classes": list,
    "state_dict": dict,
    "metadata": dict,
}
# Keys under which training scripts commonly nest a state dict.
_NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model")


def save_checkpoint(
    path: str | Path,
    model: str | ModelAdapter,
    classes: Sequence[str] | None = None,
    state_dict: Mapping[str, torch.Tensor] | torch.nn.Module | None = None,
    **metadata: Any,
) -> Path:
    """Write a Tessera checkpoint that `engine.deploy` / `resolve_model` can load by path.

    Two ways to call it: name the architecture and pass classes and weights, or pass a
    loaded zoo adapter and let the architecture, classes and weights come from it.

    Args:
        path: The file to write; missing parent folders are created. The file is written
            to a temporary name first and moved into place, so a crash leaves no half file.
        model: A zoo name (``"torchvision/ssdlite320_mobilenet_v3_large"``; the bare
            ``"ssdlite320_mobilenet_v3_large"`` also works), or a loaded zoo adapter.
        classes: Class names, in the order of the network's outputs (for torchvision
            detectors index 0 is ``"__background__"``). Required with a zoo name; with an
            adapter, defaults to the adapter's classes.
        state_dict: The weights, as a state dict or the ``torch.nn.Module`` holding them.
            Required with a zoo name; with an adapter, defaults to its network's weights.
        **metadata: JSON-serialisable facts to keep with the weights (dataset, epoch, ...).

    Returns:
        The path written.

    Raises:
        ValueError: Unknown architecture, missing classes or weights, an adapter that is
            not loaded, or metadata that is not JSON-serialisable.
        TypeError: ``model`` is neither a name nor an adapter.

    Example:
        >>> net = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        ...     weights=None, weights_backbone=None, num_classes=3)  # doctest: +SKIP
        >>> save_checkpoint("pets.pt", "torchvision/ssdlite320_mobilenet_v3_large",
        ...                 ["__background__", "cat", "dog"], net, epochs=12)  # doctest: +SKIP
        >>> adapter = resolve_model("pets.pt"); adapter.load("cpu")  # doctest: +SKIP
        >>> save_checkpoint("copy.pt", adapter)  # doctest: +SKIP

    """
    # 1) work out architecture, classes and weights from either calling form
    if isinstance(model, ModelAdapter):
        network = getattr(model, "network", None)
        if not isinstance(network, torch.nn.Module):
            raise ValueError(
                f"cannot checkpoint {model.name!r}: it is not loaded (call load() first) or "
                "it is not a zoo adapter with a `network`"
            )
        architecture = str(model.name)
        classes = list(model.classes) if classes is None else classes
        state_dict = network if state_dict is None else state_dict
    elif isinstance(model, str):
        architecture = model
    else:
        raise TypeError(
            f"model must be a zoo name or a loaded ModelAdapter, got {type(model).__name__}"
        )
    from engine.models.zoo import checkpoint_architecture  # lazy: the zoo imports this

    architecture = checkpoint_architecture(architecture)
    if classes is None or state_dict is None:
        missing = [n for n, v in (("classes", classes), ("state_dict", state_dict)) if v is None]
        raise ValueError(f"save_checkpoint needs {' and '.join(missing)} with a zoo name")
    # 2) normalise the parts into weights-only-loadable values
    class_list = _check_classes(classes)
    tensors = _cpu_state_dict(state_dict)
    try:
        metadata = json.loads(json.dumps(metadata))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint metadata must be JSON-serialisable: {exc}") from exc
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "architecture": architecture,
        "classes": class_list,
        "state_dict": tensors,
        "metadata": metadata,
    }
    # 3) write atomically
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp_name)
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return path


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Read and validate a Tessera checkpoint written by `save_checkpoint`.

    Args:
        path: The checkpoint file.
        mmap: Map the tensors from the file instead of reading them (cheap inspection).

    Returns:
        The checkpoint dict: format, version, architecture, classes, state_dict, metadata.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file is not a PyTorch file, is TorchScript, holds pickled Python
            objects, or is not a Tessera checkpoint (the message names the file and the
            missing or wrong keys).

    Example:
        >>> ckpt = load_checkpoint("pets.pt")  # doctest: +SKIP
        >>> ckpt["architecture"], ckpt["classes"]  # doctest: +SKIP
        ('torchvision/ssdlite320_mobilenet_v3_large', ['__background__', 'cat', 'dog'])

    """
    path = Path(path)
    content = _torch_load(path, mmap)
    if not is_tessera_checkpoint(content):
        raise ValueError(
            f"{path}: not a Tessera checkpoint (no format={CHECKPOINT_FORMAT!r} key); for a "
            "plain state dict pass architecture= to resolve_model, or weights= to a zoo model"
        )
    problems = [
        f"{key!r} is missing" if key not in content else f"{key!r} is not a {kind.__name__}"
        for key, kind in _REQUIRED_KEYS.items()
        if not isinstance(content.get(key), kind)
    ]
    if not problems and content["version"] > CHECKPOINT_VERSION:
        problems.append(
            f"version {content['version']} is newer than this Tessera reads ({CHECKPOINT_VERSION})"
        )
    if not problems and not all(isinstance(c, str) for c in content["classes"]):
        problems.append("'classes' must hold strings")
    if not problems and not _is_tensor_mapping(content["state_dict"]):
        problems.append("'state_dict' must map parameter names to tensors")
    if problems:
        raise ValueError(f"{path}: invalid Tessera checkpoint: {'; '.join(problems)}")
    return content


@dataclass
class WeightsFile:
    """The weights read from a file, whatever kind of weights file it was.

    Attributes:
        state_dict: Parameter name to tensor.
        architecture: The zoo name stored in a Tessera checkpoint, else None.
        classes: The class names stored in a Tessera checkpoint, else None.
        metadata: A Tessera checkpoint's metadata, else empty.

    """

    state_dict: dict[str, torch.Tensor]
    architecture: str | None = None
    classes: list[str] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def read_weights(path: str | Path, mmap: bool = False) -> WeightsFile:
    """Read a Tessera checkpoint or a plain state dict file.

    A plain state dict may also be nested under a ``"state_dict"``, ``"model_state_dict"``
    or ``"model"`` key, as training scripts often save it.

    Args:
        path: The weights file.
        mmap: Map the tensors from the file instead of reading them.

    Returns:
        The weights and, for a Tessera checkpoint, its architecture, classes and metadata.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file is not a weights file (the message says why).

    Example:
        >>> read_weights("resnet50.pth").architecture is None  # doctest: +SKIP
        True

    """
    path = Path(path)
    if is_torchscript(path):
        raise ValueError(
            f"{path}: is a TorchScript archive, not a state dict; resolve it with "
            "resolve_model(path) to run it as a TorchScript model"
        )
    content = _torch_load(path, mmap)
    if is_tessera_checkpoint(content):
        ckpt = load_checkpoint(path, mmap=mmap)
        return WeightsFile(
            dict(ckpt["state_dict"]), ckpt["architecture"], list(ckpt["classes"]), ckpt["metadata"]
        )
    if _is_tensor_mapping(content):
        return WeightsFile(dict(content))
    if isinstance(content, Mapping):
        for key in _NESTED_STATE_KEYS:
            if _is_tensor_mapping(content.get(key)):
                return WeightsFile(dict(content[key]))
    raise ValueError(
        f"{path}: holds a {type(content).__name__}, not a state dict (a mapping of parameter "
        "names to tensors) nor a Tessera checkpoint"
    )


def is_tessera_checkpoint(content: Any) -> bool:
    """Tell whether an object loaded from a file is a Tessera checkpoint dict."""
    return isinstance(content, Mapping) and content.get("format") == CHECKPOINT_FORMAT


def is_torchscript(path: str | Path) -> bool:
    """Tell whether ``path`` is a TorchScript archive (as written by ``torch.jit.save``).

    TorchScript archives are zip files holding a ``code/`` folder and ``constants.pkl``,
    which plain ``torch.save`` files never have.

    Example:
        >>> is_torchscript("classifier.ts")  # doctest: +SKIP
        True

    """
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _torch_load(path: Path, mmap: bool) -> Any:
    if not path.exists():
        raise FileNotFoundError(f"weights file not found: {path}")
    if not path.is_file():
        raise ValueError(f"{path}: is not a file")
    if is_torchscript(path):
        raise ValueError(
            f"{path}: is a TorchScript archive, not a checkpoint; resolve_model(path) runs it"
        )
    try:
        # mmap needs the zip format; older files fall back to a full read
        use_mmap = mmap and zipfile.is_zipfile(path)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
    except pickle.UnpicklingError as exc:
        reason = str(exc.__context__ or exc).splitlines()[0][:200]
        if "Unsupported global" in reason:
            raise ValueError(
                f"{path}: holds pickled Python objects (e.g. a whole nn.Module), which "
                "weights-only loading refuses to run; save model.state_dict() or use "
                f"save_checkpoint instead ({reason})"
            ) from exc
        raise ValueError(f"{path}: is not a PyTorch weights file ({reason})") from exc
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200] or type(exc).__name__
        raise ValueError(f"{path}: is not a PyTorch weights file ({reason})") from exc


def _is_tensor_mapping(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def _check_classes(classes: Sequence[str]) -> list[str]:
    if isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
        raise ValueError("classes must be a sequence of class-name strings")
    class_list = list(classes)
    if not class_list:
        raise ValueError("classes must not be empty")
    return class_list


def _cpu_state_dict(
    state_dict: Mapping[str, torch.Tensor] | torch.nn.Module,
) -> dict[str, torch.Tensor]:
    if isinstance(state_dict, torch.nn.Module):
        state_dict = state_dict.state_dict()
    if not _is_tensor_mapping(state_dict):
        raise ValueError("state_dict must be an nn.Module or a mapping of names to tensors")
    return {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
