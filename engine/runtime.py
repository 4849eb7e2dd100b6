"""Starting or joining Ray, and the Ray Data settings Tessera runs under."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

import ray

from engine import local_ray

logger = logging.getLogger(__name__)

#: Times a task killed by Ray's memory monitor is tried again (Ray's default: forever).
OOM_RETRIES = 3
#: Ray's setting for that bound, read by each Ray process from its environment.
OOM_RETRIES_VARIABLE = "RAY_task_oom_retries"

#: Ray's setting for how many idle worker processes a node keeps.
WORKERS_SOFT_LIMIT_VARIABLE = "RAY_num_workers_soft_limit"

#: GCS addresses of the Rays that `ensure_ray` started inside this process.
_PRIVATE_RAY: set[str] = set()

_RAY_DATA_LOGGING = Path(__file__).with_name("ray_data_logging.yaml")


def ensure_ray(address: str | None = None) -> None:
    """Connect to Ray once per process.

    A Ray already initialised in this process is used as it is. Otherwise ``address`` (or
    the ``RAY_ADDRESS`` environment variable) joins an existing cluster. With neither, a
    live cluster that ``ray start`` left on this machine (`local_cluster_address`) is
    joined, with a warning naming it (a stale record of a cluster that died, which Ray
    itself would retry for minutes, is ignored); else Tessera's own local Ray
    (`engine.local_ray`), which outlives this process, is joined or started.

    Args:
        address: A cluster address such as "ray://head:10001" or "auto"; "local" starts
            a private Ray inside this process, which ends with it.
    """
    os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(_RAY_DATA_LOGGING))
    # Ray retries a task its memory monitor killed forever by default; the Rays started
    # here (in-process, or Tessera's local Ray) and their workers inherit this bound
    os.environ.setdefault(OOM_RETRIES_VARIABLE, str(OOM_RETRIES))
    # Ray keeps num_cpus idle workers and ends the rest after a second idle; a job's decode
    # tasks (and two plans overlapping) run more at once, so every plan started workers
    # again (2,000 tiny images: 24 s warm, against 7 s with this)
    os.environ.setdefault(WORKERS_SOFT_LIMIT_VARIABLE, str(idle_workers_kept()))
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
        if address is None:
            own = local_ray.start_local_ray()
            local_ray.hold_lease()
            logger.warning("using %s", own.describe())
            address = own.address
        if address != "local":
            logger.info("joining the Ray cluster at %s", address)
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(
                address="local",
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
            _PRIVATE_RAY.add(ray.get_runtime_context().gcs_address)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.execution_options.preserve_order = True
    context.print_on_execution_start = False


def idle_workers_kept(cpus: int | None = None) -> int:
    """Idle Ray workers a node Tessera starts keeps: two plans' decode tasks, and a few more.

    Example:
        >>> idle_workers_kept(2), idle_workers_kept(16)
        (8, 36)
    """
    return 2 * (cpus or os.cpu_count() or 1) + 4


def runs_private_ray() -> bool:
    """True when this process runs the Ray it is connected to (``address="local"``)."""
    return ray.is_initialized() and ray.get_runtime_context().gcs_address in _PRIVATE_RAY


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
            "ignoring %s: the Ray cluster it names (%s) does not answer; not joining it",
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
