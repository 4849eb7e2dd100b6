"""Supervisely as a Tessera platform plug-in (entry point ``tessera.platforms: supervisely``).

It provides every part a platform can: ``project_id(s)``, ``dataset_id(s)``,
``image_id(s)`` and ``video_id(s)`` inputs with the fetcher of their images; local
Supervisely projects as ``input=``; the image annotation format (`Prediction.annotation`
is this one: Supervisely is the default annotation format) and the video annotation
format; the ``sly`` export (a local project); and the uploader (``to="supervisely"``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from connectors.supervisely.annotation import prediction_to_supervisely, supervisely_to_detections
from connectors.supervisely.client import URL_SCHEME
from connectors.supervisely.project import has_project_layout, read_project
from engine.detections import Detections
from engine.plugins import (
    AnnotationFormat,
    ExporterFactory,
    InputRef,
    Platform,
    PlatformInputs,
    Uploader,
    VideoAnnotationFormat,
)
from engine.prediction import Prediction

__all__ = ["PLATFORM", "SuperviselyImageFormat", "SuperviselyPlatform"]


def _labelled_images(
    datasets: list[tuple[str, list[tuple[Path, Path | None]]]], class_names: list[str]
) -> Iterator[Prediction]:
    for dataset, images in datasets:
        for image, annotation_path in images:
            if annotation_path is None:
                raise ValueError(f"{image}: the image has no annotation file in ann/")
            try:
                annotation = json.loads(annotation_path.read_text())
                size = annotation["size"]
                detections = supervisely_to_detections(annotation, class_names)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{annotation_path}: not a readable annotation ({exc})") from exc
            yield Prediction(
                detections=detections,
                class_names=list(class_names),
                source="file",
                name=image.name,
                path=str(image),
                dataset=dataset,
                height=int(size["height"]),
                width=int(size["width"]),
            )


class SuperviselyImageFormat:
    """Supervisely's image annotation JSON (`engine.plugins.AnnotationFormat`)."""

    def encode(self, prediction: Prediction) -> dict[str, Any]:
        """The prediction as a Supervisely annotation (its task decides the geometries)."""
        return prediction_to_supervisely(prediction, task=prediction.task)

    def decode(self, annotation: dict[str, Any], class_names: list[str]) -> Detections:
        """An annotation's rectangles and bitmaps as `Detections`."""
        return supervisely_to_detections(annotation, class_names)


class SuperviselyPlatform(Platform):
    """The Supervisely platform: inputs, local projects, formats, export and uploader."""

    name = "supervisely"
    title = "Supervisely"
    input_keywords = {
        "project_ids": "a Supervisely project to predict (repeatable)",
        "dataset_ids": "a Supervisely dataset to predict (repeatable)",
        "image_ids": "a Supervisely image to predict (repeatable)",
        "video_ids": "a Supervisely video to predict (repeatable)",
    }
    url_scheme = URL_SCHEME
    default_annotation = True

    def resolve_inputs(self, ids: dict[str, list[Any]]) -> PlatformInputs:
        """List the images of the projects, datasets and ids; download each video once."""
        from connectors.supervisely.inputs import resolve_supervisely_inputs

        inputs = resolve_supervisely_inputs(**ids)
        refs = [
            InputRef(name=image["name"], url=image["url"], dataset=image["dataset"])
            for image in inputs.images
        ]
        refs += [
            InputRef(name=video["name"], url=video["url"], path=video["path"], video=True)
            for video in inputs.videos
        ]
        return PlatformInputs(refs=refs, fetch=inputs.fetcher, sources=inputs.sources)

    def fetcher(self) -> Callable[[str], bytes]:
        """Downloads ``sly://images/<id>`` with the credentials of the environment."""
        from connectors.supervisely.inputs import SuperviselyFetcher

        return SuperviselyFetcher()

    def read_local(self, directory: Path) -> list[InputRef] | None:
        """The images of a local Supervisely project (every dataset, nested ones too)."""
        if not has_project_layout(directory):
            return None
        project = read_project(directory)  # a bad meta.json raises ValueError: reported
        return [
            InputRef(name=image.name, path=str(image.absolute()), dataset=dataset)
            for dataset, images in project.datasets
            for image, _annotation in images
        ]

    def read_local_ground_truth(self, directory: Path) -> Iterator[Prediction] | None:
        """A local project's labelled images: rectangles and bitmaps as boxes and masks."""
        if not has_project_layout(directory):
            return None
        project = read_project(directory)
        names = [c["title"] for c in project.meta.get("classes", [])]
        return _labelled_images(project.datasets, names)

    def annotation_formats(self) -> Mapping[str, AnnotationFormat]:
        """``supervisely``: the image annotation JSON."""
        return {"supervisely": SuperviselyImageFormat()}

    def video_annotation_formats(self) -> Mapping[str, VideoAnnotationFormat]:
        """``supervisely``: the video annotation JSON (objects, frames, figures)."""
        from connectors.supervisely.video_annotation import SuperviselyVideoFormat

        return {"supervisely": SuperviselyVideoFormat()}

    def exporters(self) -> Mapping[str, ExporterFactory]:
        """``sly``: a local Supervisely project."""
        from connectors.supervisely.exporter import SuperviselyExporter

        return {"sly": SuperviselyExporter}

    def uploader(self, **options: Any) -> Uploader:
        """The `SuperviselyConnector` (``to="supervisely"``)."""
        from connectors.supervisely.uploader import SuperviselyConnector

        return SuperviselyConnector(**options)


#: The instance the entry point names.
PLATFORM = SuperviselyPlatform()
