"""Starting or joining Ray, and the Ray Data settings Tessera runs under."""

from __future__ import annotations

import logging
import os

import ray

logger = logging.getLogger(__name__)


def ensure_ray(address: str | None = None) -> None:
    """Connect to Ray once per process.

    A Ray already initialised in this process is used as it is. Otherwise ``address`` (or
    the ``RAY_ADDRESS`` environment variable) joins an existing cluster, and with neither a
    local Ray starts in-process.

    Args:
        address: A cluster address such as "ray://head:10001" or "auto".
    """
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        if address:
            logger.info("joining the Ray cluster at %s", address)
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(include_dashboard=False, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.execution_options.preserve_order = True
    context.print_on_execution_start = False


def cluster_gpus() -> float:
    """Return the number of GPUs the Ray cluster has."""
    return float(ray.cluster_resources().get("GPU", 0))
