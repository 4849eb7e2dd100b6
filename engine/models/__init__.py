"""Model adapters and the model zoo."""

from engine.models.base import ModelAdapter, Task
from engine.models.checkpoint import load_checkpoint, save_checkpoint
from engine.models.torchscript import save_torchscript
from engine.models.zoo import ZooEntry, list_models, resolve_model

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
