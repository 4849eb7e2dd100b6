"""Tessera: distributed inference for computer-vision models on Ray.

Example:
    >>> import engine
    >>> model = engine.deploy("faces/mtcnn")                 # doctest: +SKIP
    >>> predictions = model.predict("examples/")             # doctest: +SKIP
"""

from engine.api import ModelAPI, PredictionResults, deploy
from engine.detections import Detections
from engine.models.base import ModelAdapter
from engine.models.checkpoint import save_checkpoint
from engine.models.zoo import list_models
from engine.prediction import Prediction

__all__ = [
    "Detections",
    "ModelAPI",
    "ModelAdapter",
    "Prediction",
    "PredictionResults",
    "deploy",
    "list_models",
    "save_checkpoint",
]
