"""Connectors: write predictions to labeling platforms and local exports.

``predict(..., upload=MODE, to="supervisely")`` names a connector; `get_connector` builds
it from the registry below. Importing this package does not import Ray or a platform
client: the runtime (`connectors.runtime`: `UploadJob`, the rate limiter, the uploader
actors) loads on first use of its names here.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Connector name -> "module:class".
REGISTRY: dict[str, str] = {
    "supervisely": "connectors.supervisely:SuperviselyConnector",
}

_RUNTIME_NAMES = ("UploadJob", "RateLimiter", "LimiterGate")

__all__ = ["REGISTRY", "get_connector", *_RUNTIME_NAMES]


def get_connector(name: str, **options: Any) -> Any:
    """Build the connector registered as ``name`` with its options.

    Args:
        name: A key of `REGISTRY` (case-insensitive).
        **options: The connector's own options (e.g. the client's ``server_address``).

    Returns:
        A `connectors.base.Connector`.

    Raises:
        ValueError: No connector has that name; the message lists the known ones.

    Example:
        >>> get_connector("supervisely")  # doctest: +SKIP
        SuperviselyConnector(name='supervisely')
    """
    target = REGISTRY.get(str(name).lower())
    if target is None:
        raise ValueError(f"unknown connector {name!r}; known connectors: {', '.join(REGISTRY)}")
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)(**options)


def __getattr__(name: str) -> Any:
    """Load the runtime's public names lazily (``from connectors import UploadJob``)."""
    if name in _RUNTIME_NAMES:
        return getattr(importlib.import_module("connectors.runtime"), name)
    raise AttributeError(f"module 'connectors' has no attribute {name!r}")
