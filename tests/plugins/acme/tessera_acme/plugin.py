"""Acme as a Tessera platform: the one object the ``tessera.platforms`` entry point names.

``pip install`` this distribution and, with no change to Tessera::

    model.predict(acme_image_ids=[1, 2], out="out", format="acme",
                  upload="create", to="acme", upload_options={"set_name": "run 1"})
    model.predict("downloaded_acme_folder/")
    tessera predict --acme-image-id 1 --format acme --out out --model reference/color-boxes
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from engine.plugins import (
    AnnotationFormat,
    ExporterFactory,
    InputRef,
    Platform,
    PlatformInputs,
)
from tessera_acme.exporter import AcmeExporter
from tessera_acme.fetcher import AcmeFetcher
from tessera_acme.format import AcmeFormat
from tessera_acme.inputs import read_folder, resolve_image_ids
from tessera_acme.uploader import AcmeUploader
from tessera_acme.urls import SCHEME

__all__ = ["PLATFORM", "AcmePlatform"]


class AcmePlatform(Platform):
    """Acme's inputs, media fetcher, local folder, format, export and uploader."""

    name = "acme"
    title = "Acme"
    input_keywords = {"acme_image_ids": "an Acme image to predict"}
    url_scheme = SCHEME

    def resolve_inputs(self, ids: dict[str, list[Any]]) -> PlatformInputs:
        """The Acme images of ``ids["acme_image_ids"]``, with their fetcher."""
        return resolve_image_ids(ids.get("acme_image_ids", []))

    def fetcher(self) -> Callable[[str], bytes]:
        """Downloads ``acme://images/<id>`` (credentials from the environment)."""
        return AcmeFetcher()

    def read_local(self, directory: Path) -> list[InputRef] | None:
        """The images of a folder holding ``acme.json``; None for any other folder."""
        return read_folder(directory)

    def annotation_formats(self) -> Mapping[str, AnnotationFormat]:
        """``"acme"``: the Acme annotation JSON."""
        return {"acme": AcmeFormat()}

    def exporters(self) -> Mapping[str, ExporterFactory]:
        """``format="acme"``: ``<out>/acme.json``."""
        return {"acme": AcmeExporter}

    def uploader(self, **options: Any) -> AcmeUploader:
        """``to="acme"``; ``options`` may give ``server`` and ``token``."""
        return AcmeUploader(**options)


#: The platform, as the entry point names it.
PLATFORM = AcmePlatform()
