"""Connectors: write predictions to labeling platforms and local exports.

``predict(..., upload=MODE, to="supervisely")`` names a platform's uploader; platforms are
plug-ins (`engine.plugins`, entry-point group ``tessera.platforms``), one package each
(`connectors.supervisely`), and `get_connector` builds the uploader of one by name.
Importing this package does not import Ray or a platform client: the runtime
(`connectors.runtime`: `UploadJob`, the rate limiter, the uploader actors) loads on first
use of its names here.
"""

from __future__ import annotations

import importlib
from typing import Any

from engine import plugins

_RUNTIME_NAMES = ("UploadJob", "RateLimiter", "LimiterGate")

__all__ = ["get_connector", *_RUNTIME_NAMES]


def get_connector(name: str, **options: Any) -> Any:
    """Build the uploader of the platform registered as ``name``, with its options.

    Args:
        name: An installed platform with an uploader (case-insensitive).
        **options: The connector's own options (e.g. the client's ``server_address``).

    Returns:
        A `connectors.base.Connector`.

    Raises:
        ValueError: No platform of that name has an uploader; the message lists those
            that do.

    Example:
        >>> get_connector("supervisely")  # doctest: +SKIP
        SuperviselyConnector(name='supervisely')
    """
    return plugins.uploader(name, **options)


def __getattr__(name: str) -> Any:
    """Load the runtime's public names lazily (``from connectors import UploadJob``)."""
    if name in _RUNTIME_NAMES:
        return getattr(importlib.import_module("connectors.runtime"), name)
    raise AttributeError(f"module 'connectors' has no attribute {name!r}")
