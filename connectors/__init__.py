"""Connectors: where predictions go besides the caller (platforms and local exports).

``predict(..., upload=MODE, to="supervisely")`` names a connector; `get_connector` builds
it from the registry below. Nothing here imports Ray or a platform client until asked.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Connector name -> "module:class".
REGISTRY: dict[str, str] = {
    "supervisely": "connectors.supervisely:SuperviselyConnector",
}

__all__ = ["REGISTRY", "get_connector"]


def get_connector(name: str, **options: Any) -> Any:
    """Build the connector registered as ``name`` with its options.

    Args:
        name: A key of `REGISTRY` (case-insensitive).
        **options: The connector's own options (e.g. ``project_name``).

    Returns:
        A `connectors.base.Connector`.

    Raises:
        ValueError: No connector has that name; the message lists the known ones.

    Example:
        >>> get_connector("supervisely", project_name="cars")  # doctest: +SKIP
        SuperviselyConnector(name='supervisely')
    """
    target = REGISTRY.get(str(name).lower())
    if target is None:
        raise ValueError(f"unknown connector {name!r}; known connectors: {', '.join(REGISTRY)}")
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)(**options)
