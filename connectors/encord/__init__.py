"""Encord, as a platform plug-in: one module per job.

- `connectors.encord.client`: credentials (SSH key) and the SDK behind the job's gate;
- `connectors.encord.urls`: ``encord://<project>/<data hash>`` media URLs;
- `connectors.encord.format`: Prediction <-> Encord label rows and ontologies (pure);
- `connectors.encord.exporter`: the ``encord`` export;
- `connectors.encord.uploader`: `EncordUploader` (a prediction branch per job);
- `connectors.encord.plugin`: the `engine.plugins.Platform` tying them together.
"""

from connectors.encord.client import EncordClient, EncordConfigError, resolve_credentials
from connectors.encord.exporter import EncordExporter
from connectors.encord.uploader import EncordUploader
from connectors.encord.urls import data_url, parse_data_url

__all__ = [
    "EncordClient",
    "EncordConfigError",
    "EncordExporter",
    "EncordUploader",
    "data_url",
    "parse_data_url",
    "resolve_credentials",
]
