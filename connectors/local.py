"""The "local" plug-in: the export formats that belong to no platform (jsonl, coco, parquet).

Registered under the ``tessera.platforms`` entry-point group like any platform, so the
engine finds ``format="coco"`` the same way it finds a platform's own format.
"""

from __future__ import annotations

from collections.abc import Mapping

from connectors.block_parquet import BlockParquetExporter
from connectors.exports import CocoExporter, JsonlExporter
from engine.plugins import ExporterFactory, Platform

__all__ = ["PLATFORM", "LocalFormats"]


class LocalFormats(Platform):
    """Local export formats: ``jsonl`` (the default), ``coco`` and ``parquet``."""

    name = "local"

    def exporters(self) -> Mapping[str, ExporterFactory]:
        """``jsonl``, ``coco`` and ``parquet`` (written by Ray Data from the result blocks)."""
        return {"jsonl": JsonlExporter, "coco": CocoExporter, "parquet": BlockParquetExporter}


#: The instance the entry point names.
PLATFORM = LocalFormats()
