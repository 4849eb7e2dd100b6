"""Labelbox as a Tessera platform plug-in (entry point ``tessera.platforms: labelbox``).

It provides ``labelbox_dataset_id(s)`` and ``labelbox_model_run_id(s)`` inputs (their data
rows, media fetched under the job's rate limit), the ``labelbox`` annotation format
(NDJSON lines; its ``encode`` gives ``{"annotations": [...]}`` for one image), the export
(``labelbox.ndjson``) and the uploader (``to="labelbox"``, into a model run).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from connectors.labelbox.urls import SCHEME
from engine.detections import Detections
from engine.plugins import AnnotationFormat, ExporterFactory, Platform, PlatformInputs, Uploader
from engine.prediction import Prediction

__all__ = ["PLATFORM", "LabelboxFormat", "LabelboxPlatform"]


class LabelboxFormat:
    """Labelbox prediction NDJSON of one image (`engine.plugins.AnnotationFormat`)."""

    def encode(self, prediction: Prediction) -> dict[str, Any]:
        """``{"annotations": [line, ...]}``, the data row keyed by the image's name."""
        from connectors.labelbox.format import data_row_ref, prediction_to_ndjson

        ref = data_row_ref(global_key=prediction.name)
        return {"annotations": prediction_to_ndjson(prediction, ref)}

    def decode(self, annotation: dict[str, Any], class_names: list[str]) -> Detections:
        """The ``bbox`` lines of ``annotation["annotations"]`` as `Detections`.

        Raises:
            ValueError: A line names a class not in ``class_names``.
        """
        index = {name: i for i, name in enumerate(class_names)}
        boxes, scores, labels = [], [], []
        for line in annotation.get("annotations", []):
            if "bbox" not in line:
                continue
            if line.get("name") not in index:
                raise ValueError(f"feature {line.get('name')!r} is not one of {class_names}")
            b = line["bbox"]
            boxes.append([b["left"], b["top"], b["left"] + b["width"], b["top"] + b["height"]])
            scores.append(float(line.get("confidence", 1.0)))
            labels.append(index[line["name"]])
        return Detections(
            np.array(boxes, np.float32).reshape(-1, 4),
            np.array(scores, np.float32),
            np.array(labels, np.int64),
        )


class LabelboxPlatform(Platform):
    """The Labelbox platform: dataset inputs, NDJSON format, the local export, the uploader."""

    name = "labelbox"
    title = "Labelbox"
    input_keywords = {
        "labelbox_dataset_ids": "a Labelbox dataset to predict (repeatable)",
        "labelbox_model_run_ids": "a Labelbox model run whose data rows to predict (repeatable)",
    }
    url_scheme = SCHEME

    def parse_ids(self, keyword: str, value: Any) -> list[Any]:
        """Labelbox ids are strings (``"clx..."``): one, or a list of them."""
        values = list(value) if isinstance(value, (list, tuple, set)) else [value]
        for ident in values:
            if not isinstance(ident, str) or not ident.strip():
                raise ValueError(f"{keyword} must be a Labelbox id (a string), got {ident!r}")
        return [str(i).strip() for i in values]

    def cli_id(self, text: str) -> str:
        """A Labelbox id from the command line, as it is (ids are strings)."""
        if not text.strip():
            raise ValueError("a Labelbox id cannot be empty")
        return text.strip()

    def resolve_inputs(self, ids: dict[str, list[Any]]) -> PlatformInputs:
        """The data rows of the datasets and model runs in ``ids``, with their fetcher."""
        from connectors.labelbox.inputs import resolve_inputs

        return resolve_inputs(
            ids.get("labelbox_dataset_ids", []), ids.get("labelbox_model_run_ids", [])
        )

    def fetcher(self) -> Callable[[str], bytes]:
        """Downloads ``labelbox://datarows/<id>`` (credentials from the environment)."""
        from connectors.labelbox.fetcher import LabelboxFetcher

        return LabelboxFetcher()

    def annotation_formats(self) -> Mapping[str, AnnotationFormat]:
        """``labelbox``: prediction NDJSON lines of one image."""
        return {"labelbox": LabelboxFormat()}

    def exporters(self) -> Mapping[str, ExporterFactory]:
        """``labelbox``: ``<out>/labelbox.ndjson``."""
        from connectors.labelbox.exporter import LabelboxExporter

        return {"labelbox": LabelboxExporter}

    def uploader(self, **options: Any) -> Uploader:
        """The `LabelboxConnector` (``to="labelbox"``): ``api_key``, ``endpoint`` options."""
        from connectors.labelbox.uploader import LabelboxConnector

        return LabelboxConnector(**options)


#: The instance the entry point names.
PLATFORM = LabelboxPlatform()
