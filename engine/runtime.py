"""Starting or joining Ray, and the Ray Data settings Tessera runs under."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

import ray

logger = logging.getLogger(__name__)

_RAY_DATA_LOGGING = Path(__file__).with_name("ray_data_logging.yaml")


def ensure_ray(address: str | None = None) -> None:
    """Connect to Ray once per process.

    A Ray already initialised in this process is used as it is. Otherwise ``address`` (or
    the ``RAY_ADDRESS`` environment variable) joins an existing cluster. With neither, a
    live cluster that ``ray start`` left on this machine (`local_cluster_address`) is
    joined, with a warning naming it; else a local Ray starts in-process, also when that
    file is stale (its cluster died), which Ray itself would retry for minutes.

    Args:
        address: A cluster address such as "ray://head:10001" or "auto"; "local" always
            starts a local Ray in-process.
    """
    os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(_RAY_DATA_LOGGING))
    if ray.is_initialized():
        if address and address not in ("auto", "local"):
            current = ray.get_runtime_context().gcs_address
            if address.split("://")[-1] != current:
                raise ValueError(
                    f"address={address!r} asked for, but this process is already connected "
                    f"to the Ray cluster at {current}; call ray.shutdown() first"
                )
    else:
        address = address or os.environ.get("RAY_ADDRESS") or None
        if address is None:
            address = local_cluster_address()
            if address is not None:
                logger.warning(
                    "joining the Ray cluster at %s, which `ray start` runs on this machine "
                    "(address='local' starts a separate one)",
                    address,
                )
        if address and address != "local":
            logger.info("joining the Ray cluster at %s", address)
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(
                address="local",
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.execution_options.preserve_order = True
    context.print_on_execution_start = False


def local_cluster_address(connect_timeout_s: float = 2.0) -> str | None:
    """The address of the cluster ``ray start`` left on this machine, when it is alive.

    ``ray start`` writes its GCS address to ``<Ray's temp dir>/ray_current_cluster``; an
    address whose port does not accept a connection within ``connect_timeout_s`` is stale
    (the cluster died without ``ray stop``) and is logged and ignored.

    Example:
        >>> local_cluster_address() is None or ":" in local_cluster_address()
        True
    """
    temp_root = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    record = Path(temp_root) / "ray" / "ray_current_cluster"
    try:
        address = record.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=connect_timeout_s):
            return address
    except (OSError, ValueError):
        logger.warning(
            "ignoring %s: the Ray cluster it names (%s) does not answer; "
            "starting a local Ray instead",
            record,
            address,
        )
        return None


def near_caller() -> dict[str, Any]:
    """Actor options that place a job's support actor on the caller's node, softly.

    Ray places an actor that asks for no resource on a random node, whatever its
    scheduling strategy; a token 1-byte ``memory`` demand makes it honour the soft node
    affinity. So a job's session, uploaders, rate limiters and trackers live beside the
    process that runs the job, and losing some other node never takes them with it.

    Example:
        >>> ray.remote(num_cpus=0)(Tracker).options(**near_caller())  # doctest: +SKIP
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    return {"memory": 1, "scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=True)}


def cluster_gpus() -> float:
    """Return the number of GPUs the Ray cluster has."""
    return float(ray.cluster_resources().get("GPU", 0))


class DropProgressBarNotice(logging.Filter):
    """Hide Ray Data's notice that its progress bars are off: Tessera draws its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Return False for the progress-bar notice, True for every other record."""
        return not str(record.msg).startswith("Progress bars disabled")
