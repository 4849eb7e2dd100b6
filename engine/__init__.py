"""Tessera: distributed inference for computer-vision models on Ray.

Public names load lazily, so that a Ray task importing one light module of the package
(a decode task imports `engine.pipeline`) does not pay for torch.

Example:
    >>> import engine
    >>> model = engine.deploy("faces/mtcnn")                 # doctest: +SKIP
    >>> predictions = model.predict("examples/")             # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.api import ModelAPI, PredictionResults, attach, deploy
    from engine.detections import Detections
    from engine.models.base import ModelAdapter
    from engine.models.checkpoint import save_checkpoint
    from engine.models.zoo import list_models
    from engine.prediction import Prediction
    from engine.session import PredictionSession, SessionError

_EXPORTS = {
    "Detections": "engine.detections",
    "ModelAPI": "engine.api",
    "ModelAdapter": "engine.models.base",
    "Prediction": "engine.prediction",
    "PredictionResults": "engine.api",
    "PredictionSession": "engine.session",
    "SessionError": "engine.session",
    "attach": "engine.api",
    "deploy": "engine.api",
    "list_models": "engine.models.zoo",
    "save_checkpoint": "engine.models.checkpoint",
}

__all__ = [
    "attach",
    "Detections",
    "ModelAPI",
    "ModelAdapter",
    "Prediction",
    "PredictionResults",
    "PredictionSession",
    "SessionError",
    "deploy",
    "list_models",
    "save_checkpoint",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
