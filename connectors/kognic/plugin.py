"""Kognic as a Tessera platform plug-in (entry point ``tessera.platforms: kognic``).

It provides the ``openlabel`` annotation format (one image's OpenLABEL prediction), the
``openlabel`` export (``openlabel/<image name>.json``) and the uploader (``to="kognic"``,
into a predictions group). Predicting over a Kognic dataset's scenes is not provided.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from engine.detections import Detections
from engine.plugins import AnnotationFormat, ExporterFactory, Platform, Uploader
from engine.prediction import Prediction

__all__ = ["PLATFORM", "KognicPlatform", "OpenLabelFormat"]


class OpenLabelFormat:
    """Kognic's OpenLABEL prediction of one image (`engine.plugins.AnnotationFormat`)."""

    def encode(self, prediction: Prediction) -> dict[str, Any]:
        """``{"openlabel": {...}}`` (`connectors.kognic.format.prediction_to_openlabel`)."""
        from connectors.kognic.format import prediction_to_openlabel

        return prediction_to_openlabel(prediction)

    def decode(self, annotation: dict[str, Any], class_names: list[str]) -> Detections:
        """The boxes of frame ``"0"`` as `Detections` (the ``confidence`` as score).

        Raises:
            ValueError: An object's type is not in ``class_names``.
        """
        index = {name: i for i, name in enumerate(class_names)}
        document = annotation.get("openlabel", annotation)
        types = {k: o.get("type") for k, o in (document.get("objects") or {}).items()}
        frame = (document.get("frames") or {}).get("0") or {}
        boxes, scores, labels = [], [], []
        for key, found in (frame.get("objects") or {}).items():
            if types.get(key) not in index:
                raise ValueError(f"object type {types.get(key)!r} is not one of {class_names}")
            for bbox in (found.get("object_data") or {}).get("bbox") or []:
                x, y, w, h = (float(v) for v in bbox["val"])
                boxes.append([x - w / 2, y - h / 2, x + w / 2, y + h / 2])
                nums = (bbox.get("attributes") or {}).get("num") or []
                score = next((n["val"] for n in nums if n.get("name") == "confidence"), 1.0)
                scores.append(float(score))
                labels.append(index[types[key]])
        return Detections(
            np.array(boxes, np.float32).reshape(-1, 4),
            np.array(scores, np.float32),
            np.array(labels, np.int64),
        )


class KognicPlatform(Platform):
    """The Kognic platform: the OpenLABEL format, its local export, the uploader."""

    name = "kognic"
    title = "Kognic"

    def annotation_formats(self) -> Mapping[str, AnnotationFormat]:
        """``openlabel``: one image's OpenLABEL prediction."""
        return {"openlabel": OpenLabelFormat()}

    def exporters(self) -> Mapping[str, ExporterFactory]:
        """``openlabel``: ``<out>/openlabel/<image name>.json``."""
        from connectors.kognic.exporter import OpenLabelExporter

        return {"openlabel": OpenLabelExporter}

    def uploader(self, **options: Any) -> Uploader:
        """The `KognicConnector` (``to="kognic"``); credentials from the environment."""
        from connectors.kognic.uploader import KognicConnector

        return KognicConnector(**options)


#: The instance the entry point names.
PLATFORM = KognicPlatform()
