"""Encord as a Tessera platform plug-in (entry point ``tessera.platforms: encord``).

It provides the ``encord`` annotation format (an image's Encord object instances), the
``format="encord"`` export and the ``to="encord"`` uploader (predictions into a prediction
branch of each label row)::

    model.predict(encord_project="0d6c...", out="out", format="encord")
    model.predict("images/", upload="create", to="encord",
                  upload_options={"project_hash": "0d6c...", "branch_name": "model-v1"})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from connectors.encord.exporter import EncordExporter
from connectors.encord.format import (
    features_for_task,
    objects_to_detections,
    prediction_objects,
)
from connectors.encord.inputs import EncordFetcher, resolve_project_hashes
from connectors.encord.uploader import EncordUploader
from connectors.encord.urls import SCHEME
from engine.detections import Detections
from engine.plugins import AnnotationFormat, ExporterFactory, Platform, PlatformInputs
from engine.prediction import Prediction

__all__ = ["PLATFORM", "EncordAnnotationFormat", "EncordPlatform"]


class EncordAnnotationFormat:
    """An image's Encord labels: ``{"width", "height", "objects": [...]}`` (pure)."""

    def encode(self, prediction: Prediction) -> dict[str, Any]:
        """The prediction's object instances (features of an ontology of its classes)."""
        features = features_for_task(list(prediction.class_names), prediction.task)
        return {
            "width": int(prediction.width),
            "height": int(prediction.height),
            "objects": prediction_objects(prediction, features, "0000"),
        }

    def decode(self, annotation: dict[str, Any], class_names: list[str]) -> Detections:
        """Read the objects back into `Detections` (pixel boxes)."""
        return objects_to_detections(
            annotation.get("objects", []),
            class_names,
            int(annotation["height"]),
            int(annotation["width"]),
        )

    def __repr__(self) -> str:
        return "EncordAnnotationFormat()"


class EncordPlatform(Platform):
    """Encord's inputs (a project's images and videos), fetcher, format, export, uploader."""

    name = "encord"
    title = "Encord"
    input_keywords = {"encord_projects": "an Encord project whose images and videos to predict"}
    url_scheme = SCHEME

    def parse_ids(self, keyword: str, value: Any) -> list[Any]:
        """Project hashes: a non-empty string or a list of them."""
        values = list(value) if isinstance(value, (list, tuple, set)) else [value]
        for ident in values:
            if not isinstance(ident, str) or not ident.strip() or "/" in ident:
                raise ValueError(f"{keyword} must be an Encord project hash, got {ident!r}")
        return [str(v).strip() for v in values]

    def cli_id(self, text: str) -> str:
        """A project hash from the command line, as it is."""
        return self.parse_ids("--encord-project", text)[0]

    def resolve_inputs(self, ids: dict[str, list[Any]]) -> PlatformInputs:
        """The image and video data units of ``ids["encord_projects"]``, with their fetcher."""
        return resolve_project_hashes(ids.get("encord_projects", []))

    def fetcher(self) -> Callable[[str], bytes]:
        """Downloads ``encord://<project>/<data hash>`` (credentials from the environment)."""
        return EncordFetcher()

    def annotation_formats(self) -> Mapping[str, AnnotationFormat]:
        """``"encord"``: an image's Encord object instances."""
        return {"encord": EncordAnnotationFormat()}

    def exporters(self) -> Mapping[str, ExporterFactory]:
        """``format="encord"``: ``encord/ontology.json`` and ``encord/<image>.json``."""
        return {"encord": EncordExporter}

    def uploader(self, **options: Any) -> EncordUploader:
        """``to="encord"``; ``options`` may give ``ssh_key``, ``ssh_key_file``, ``domain``."""
        return EncordUploader(**options)


#: The platform, as the entry point names it.
PLATFORM = EncordPlatform()
