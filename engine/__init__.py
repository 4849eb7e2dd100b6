"""Tessera: distributed inference for computer-vision models on Ray.

Public names load lazily, so that a Ray task importing one light module of the package
(a decode task imports `engine.pipeline`) does not pay for torch.

Example:
    >>> import engine
    >>> model = engine.deploy("faces/mtcnn")                 # doctest: +SKIP
    >>> predictions = model.predict("examples/")             # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine._lazy import lazy_exports

if TYPE_CHECKING:
    from engine.api import (
        ModelAPI,
        attach,
        connect,
        deploy,
        resume,
        track,
    )
    from engine.detections import Detections
    from engine.evaluation import EvaluationReport, evaluate
    from engine.models.base import ModelAdapter
    from engine.models.checkpoint import save_checkpoint
    from engine.models.zoo import list_models
    from engine.prediction import Prediction
    from engine.results import PredictionResults, PredictionStream
    from engine.session import PredictionSession, SessionError
    from engine.tracking import VideoAnnotation

_EXPORTS = {
    "Detections": "engine.detections",
    "EvaluationReport": "engine.evaluation",
    "evaluate": "engine.evaluation",
    "ModelAPI": "engine.api",
    "ModelAdapter": "engine.models.base",
    "Prediction": "engine.prediction",
    "PredictionResults": "engine.results",
    "PredictionStream": "engine.results",
    "PredictionSession": "engine.session",
    "SessionError": "engine.session",
    "attach": "engine.api",
    "connect": "engine.api",
    "deploy": "engine.api",
    "list_models": "engine.models.zoo",
    "resume": "engine.api",
    "save_checkpoint": "engine.models.checkpoint",
    "track": "engine.api",
    "VideoAnnotation": "engine.tracking",
}

__all__ = [
    "attach",
    "connect",
    "Detections",
    "EvaluationReport",
    "evaluate",
    "ModelAPI",
    "ModelAdapter",
    "Prediction",
    "PredictionResults",
    "PredictionSession",
    "PredictionStream",
    "SessionError",
    "deploy",
    "list_models",
    "resume",
    "save_checkpoint",
    "track",
    "VideoAnnotation",
]


__getattr__, __dir__ = lazy_exports("engine", _EXPORTS, globals())
