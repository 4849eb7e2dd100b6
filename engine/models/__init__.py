"""Model adapters and the model zoo.

Names load lazily: importing `engine.models.base` (as the decode path does) must not
import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine._lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports("engine.models", _EXPORTS, globals())
