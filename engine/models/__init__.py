"""Model adapters and the model zoo."""

from engine.models.base import ModelAdapter, Task

__all__ = ["ModelAdapter", "Task"]
