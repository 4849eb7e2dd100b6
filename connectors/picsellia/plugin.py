"""Picsellia as a Tessera platform plug-in (entry point ``tessera.platforms: picsellia``).

It provides the export (``format="picsellia"``: ``picsellia.jsonl``, one monitoring body
per image), the batch uploader (``to="picsellia"``: a job's predictions into a deployment's
monitoring) and the deployment monitor (``tessera serve --monitor picsellia``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.plugins import ExporterFactory, Monitor, Platform, Uploader

__all__ = ["PLATFORM", "PicselliaPlatform"]


class PicselliaPlatform(Platform):
    """The Picsellia platform: the local export, the uploader and the deployment monitor."""

    name = "picsellia"
    title = "Picsellia"

    def exporters(self) -> Mapping[str, ExporterFactory]:
        """``picsellia``: ``<out>/picsellia.jsonl``."""
        from connectors.picsellia.exporter import PicselliaExporter

        return {"picsellia": PicselliaExporter}

    def uploader(self, **options: Any) -> Uploader:
        """The `PicselliaConnector` (``to="picsellia"``): ``api_token``, ``host`` options."""
        from connectors.picsellia.uploader import PicselliaConnector

        return PicselliaConnector(**options)

    def monitor(self, **options: Any) -> Monitor:
        """The `PicselliaConnector` as a deployment monitor (``--monitor picsellia``).

        ``options`` are the monitor's (``--monitor-option``): ``deployment_id``... and
        ``api_token`` / ``host`` (default: the environment); `validate` checks them.
        """
        from connectors.picsellia.uploader import PicselliaConnector

        return PicselliaConnector(monitor_options=options)


#: The instance the entry point names.
PLATFORM = PicselliaPlatform()
