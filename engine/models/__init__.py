"""Model adapters and the model zoo.

Names load lazily: importing `engine.models.base` (as the decode path does) must not
import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.models.base import ModelAdapter, Task
    from engine.models.checkpoint import load_checkpoint, save_checkpoint
    from engine.models.torchscript import save_torchscript
    from engine.models.zoo import ZooEntry, list_models, resolve_model

_EXPORTS = {
    "ModelAdapter": "engine.models.base",
    "Task": "engine.models.base",
    "ZooEntry": "engine.models.zoo",
    "list_models": "engine.models.zoo",
    "load_checkpoint": "engine.models.checkpoint",
    "resolve_model": "engine.models.zoo",
    "save_checkpoint": "engine.models.checkpoint",
    "save_torchscript": "engine.models.torchscript",
}

__all__ = [
    "ModelAdapter",
    "Task",
    "ZooEntry",
    "list_models",
    "load_checkpoint",
    "resolve_model",
    "save_checkpoint",
    "save_torchscript",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'engine.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
