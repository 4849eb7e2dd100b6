"""Supervisely, as a platform plug-in: one module per job.

- `connectors.supervisely.client`: credentials, ``sly://`` media URLs, the HTTP client;
- `connectors.supervisely.inputs`: project/dataset/image/video ids -> media, the fetcher;
- `connectors.supervisely.annotation`: image annotation JSON <-> Detections (pure);
- `connectors.supervisely.format`: project meta and its checks (pure);
- `connectors.supervisely.video_annotation`: video annotation JSON (pure);
- `connectors.supervisely.project`: the local project layout (read and write paths);
- `connectors.supervisely.exporter`: the ``sly`` export;
- `connectors.supervisely.uploader`: `SuperviselyConnector`;
- `connectors.supervisely.plugin`: the `engine.plugins.Platform` tying them together.
"""

from connectors.supervisely.client import (
    JOB_TAG,
    MAX_ANNOTATIONS_PER_CALL,
    SuperviselyClient,
    SuperviselyConfigError,
    image_url,
    parse_sly_url,
    resolve_credentials,
    video_url,
)
from connectors.supervisely.inputs import (
    SuperviselyFetcher,
    SuperviselyInputs,
    resolve_supervisely_inputs,
)
from connectors.supervisely.uploader import SuperviselyConnector

__all__ = [
    "JOB_TAG",
    "MAX_ANNOTATIONS_PER_CALL",
    "SuperviselyClient",
    "SuperviselyConfigError",
    "SuperviselyConnector",
    "SuperviselyFetcher",
    "SuperviselyInputs",
    "image_url",
    "parse_sly_url",
    "resolve_credentials",
    "resolve_supervisely_inputs",
    "video_url",
]
