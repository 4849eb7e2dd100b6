"""A real multi-node Ray cluster on this machine, for the cluster tests (tests/test_cluster.py).

`LocalCluster` starts a head and worker nodes as ``ray start --block`` processes, each
with its own raylet, CPUs and object store, under a temporary directory of its own and on
free ports. The test process itself stays connected to its in-process Ray
(``ray_session``), so the cluster is driven from subprocesses that join it with
``RAY_ADDRESS`` (`LocalCluster.env`). Everything is stopped by pid: never ``ray stop``
(it kills every Ray process on the host by name), never ``address="auto"``.

A node is killed the hard way, its raylet by SIGKILL (`LocalCluster.kill_raylet`); its
``ray start --block`` process then ends the rest of the node. `LocalCluster.restore`
adds worker nodes until the cluster has its worker nodes again.

Example:
    >>> from cluster_fixture import ray_cluster  # noqa: F401  (in a test module)
    >>> def test_something(ray_cluster):  # doctest: +SKIP
    ...     subprocess.run([...], env=ray_cluster.env(), check=True)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

__all__ = ["ClusterError", "LocalCluster", "RayNode", "ray_cluster"]

RAY = str(Path(sys.executable).parent / "ray")

#: Seconds the whole cluster may take to start (a head, then its worker nodes).
START_TIMEOUT_S = 300.0
#: Times a worker node that fails to start is started again.
START_ATTEMPTS = 3
#: Seconds a node killed by the tests may take to be marked dead by the head.
DEAD_TIMEOUT_S = 60.0

#: Ray Data gives up on a stalled job after this long (its default is 30 minutes). A lost
#: node's model worker restarting elsewhere took over 60 s on this 2-core machine under
#: load (CI, 2026-12-03), which failed the node-lost tests although nothing was stalled.
NO_PROGRESS_TIMEOUT_S = 180

#: The nodes' environment: no memory monitor killing workers on a crowded test machine;
#: a dead raylet noticed within seconds; a stalled Ray Data job failing in 3 minutes.
NODE_ENV = {
    "RAY_memory_monitor_refresh_ms": "0",
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "2000",
    "RAY_health_check_failure_threshold": "4",
    "RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S": str(NO_PROGRESS_TIMEOUT_S),
    "RAY_DEDUP_LOGS": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
}


class ClusterError(RuntimeError):
    """The fixture cluster could not start, or a node could not be killed or added."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RayNode:
    """One ``ray start --block`` process and what it runs.

    Attributes:
        name: "head", "worker-1", "worker-2"...
        process: The ``ray start --block`` process (its own process group).
        log: Its output file.
        node_id: The Ray node id of its raylet (hex), once known.
    """

    name: str
    process: subprocess.Popen
    log: Path
    node_id: str | None = None
    killed: bool = field(default=False)

    @property
    def head(self) -> bool:
        """Whether this is the head node."""
        return self.name == "head"

    def raylet_pid(self) -> int | None:
        """The pid of this node's raylet, or None when it is not (or no longer) running."""
        for child in _children(self.process.pid):
            if child.name() == "raylet":
                return child.pid
        return None

    def runs(self, actor_class: str) -> bool:
        """Whether one of this node's worker processes is an actor of that class.

        Ray names an actor's process ``ray::<Class>`` (``ray::<Class>.<method>`` while busy).
        """
        for child in _children(self.process.pid):
            title = " ".join(_cmdline(child))
            if title.startswith((f"ray::{actor_class} ", f"ray::{actor_class}.")) or (
                title.strip() == f"ray::{actor_class}"
            ):
                return True
        return False

    def read_node_id(self) -> str | None:
        """The node id on the raylet's command line (``--node_id=...``), or None."""
        for child in _children(self.process.pid):
            if child.name() != "raylet":
                continue
            for argument in _cmdline(child):
                if argument.startswith("--node_id="):
                    return argument.split("=", 1)[1]
        return None


class LocalCluster:
    """A head and ``worker_nodes`` worker nodes, each a ``ray start --block`` process.

    Args:
        root: Directory for Ray's temporary files and the nodes' logs (kept short: Ray's
            socket paths must stay under 108 characters).
        worker_nodes: Worker nodes besides the head.
        cpus_per_node: Logical CPUs of every node.
        object_store_bytes: Object store of every node.
    """

    def __init__(
        self,
        root: Path,
        worker_nodes: int = 2,
        cpus_per_node: int = 1,
        object_store_bytes: int = 150 * 2**20,
    ) -> None:
        self.root = Path(root)
        self.worker_nodes = worker_nodes
        self.cpus_per_node = cpus_per_node
        self.object_store_bytes = object_store_bytes
        self.port = free_port()
        self.nodes: list[RayNode] = []
        self._added = 0

    # ------------------------------------------------------------------ addresses
    @property
    def address(self) -> str:
        """The head's GCS address, ``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a subprocess that joins this cluster (``RAY_ADDRESS`` set)."""
        env = {**os.environ, **NODE_ENV, "RAY_ADDRESS": self.address, **extra}
        env.pop("RAY_CLIENT_MODE", None)
        return env

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start the head, then the worker nodes; wait until every node is alive.

        Raises:
            ClusterError: A node did not come up in time; the message holds its log's tail.
        """
        deadline = time.monotonic() + timeout
        self.root.mkdir(parents=True, exist_ok=True)
        self._start_head(deadline)
        for _ in range(self.worker_nodes):  # one at a time: a crowded GCS times them out
            self._add_worker(deadline)

    def stop(self) -> None:
        """Stop every node this cluster started, by pid (SIGTERM, then SIGKILL)."""
        for node in self.nodes:  # every node at once: each takes seconds to end
            try:
                os.killpg(node.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for node in reversed(self.nodes):
            _stop_process_group(node.process)
        self.nodes = []

    # ------------------------------------------------------------------ nodes
    def alive_node_ids(self) -> set[str]:
        """Node ids the head reports alive."""
        return {node_id for node_id, alive in self._node_states().items() if alive}

    def workers(self) -> list[RayNode]:
        """The worker nodes that run (not killed)."""
        return [n for n in self.nodes if not n.head and not n.killed]

    def node(self, node_id: str) -> RayNode:
        """The node of this cluster with that Ray node id."""
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise ClusterError(f"node {node_id} is not one of this cluster's nodes")

    def worker_node_running(self, actor_class: str) -> str:
        """The node id of a live worker node that runs an actor of ``actor_class``.

        Raises:
            ClusterError: No worker node runs one.
        """
        for node in self.workers():
            if node.node_id and node.runs(actor_class):
                return node.node_id
        raise ClusterError(f"no worker node runs a {actor_class} actor")

    def raylets(self) -> dict[str, int]:
        """Node id -> raylet pid of every running node (what a driver may kill)."""
        found = {}
        for node in self.nodes:
            pid = None if node.killed else node.raylet_pid()
            if node.node_id and pid:
                found[node.node_id] = pid
        return found

    def kill_raylet(self, node_id: str) -> None:
        """SIGKILL a worker node's raylet; its ``ray start`` process ends the rest.

        Raises:
            ClusterError: ``node_id`` is the head (its loss ends the cluster) or not running.
        """
        node = self.node(node_id)
        if node.head:
            raise ClusterError("the head node is not killed: its loss ends the cluster")
        pid = node.raylet_pid()
        if pid is None:
            raise ClusterError(f"node {node.name} ({node_id}) has no raylet running")
        os.kill(pid, signal.SIGKILL)
        node.killed = True

    def mark_killed(self, node_id: str) -> None:
        """Record that a driver killed this node's raylet (see `kill_raylet`)."""
        self.node(node_id).killed = True

    def restore(self, timeout: float = DEAD_TIMEOUT_S + START_TIMEOUT_S) -> None:
        """Bring the cluster back to a head and ``worker_nodes`` live worker nodes.

        Waits until the head has marked the killed nodes dead, reaps their processes, and
        adds fresh worker nodes (``ray start --address``) for them.
        """
        deadline = time.monotonic() + timeout
        for node in [n for n in self.nodes if n.killed or n.process.poll() is not None]:
            node.killed = True
            while node.node_id in self.alive_node_ids():
                if time.monotonic() > deadline:
                    raise ClusterError(f"the head still sees killed node {node.name} alive")
                time.sleep(0.5)
            _stop_process_group(node.process)
            self.nodes.remove(node)
        while len(self.workers()) < self.worker_nodes:
            self._add_worker(deadline)

    def wait_for_nodes(self, count: int, deadline: float) -> None:
        """Wait until ``count`` of this cluster's running nodes are alive at the head."""
        while True:
            for node in self.nodes:
                if node.node_id is None and not node.killed:
                    node.node_id = node.read_node_id()
                if node.process.poll() is not None and not node.killed:
                    raise ClusterError(
                        f"Ray node {node.name} exited with {node.process.returncode}:\n"
                        + _tail(node.log)
                    )
            running = {n.node_id for n in self.nodes if n.node_id and not n.killed}
            if len(running & self._alive_or_empty()) >= count:
                return
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {n.name}:\n{_tail(n.log)}" for n in self.nodes)
                raise ClusterError(
                    f"the fixture cluster did not reach {count} live nodes in time "
                    f"(alive: {len(running & self._alive_or_empty())}):\n{logs}"
                )
            time.sleep(0.3)

    def describe(self) -> dict[str, Any]:
        """Address and nodes (for a driver script, and for failure messages)."""
        return {
            "address": self.address,
            "head": next((n.node_id for n in self.nodes if n.head), None),
            "raylets": self.raylets(),
        }

    def write_description(self, path: Path) -> Path:
        """Write `describe` as JSON to ``path``; return it."""
        path.write_text(json.dumps(self.describe()))
        return path

    # ------------------------------------------------------------------ internals
    def _start_head(self, deadline: float) -> RayNode:
        """Start the head and wait until it is alive (on fresh ports when started again)."""
        return self._start_node(self._launch_head, deadline)

    def _add_worker(self, deadline: float) -> RayNode:
        """Start one worker node and wait until it is alive."""
        return self._start_node(self._launch_worker, deadline)

    def _start_node(
        self, launch: Callable[[], RayNode], deadline: float, attempts: int = START_ATTEMPTS
    ) -> RayNode:
        """Launch a node and wait until it is alive at the head, ``attempts`` times.

        ``ray start`` gives a raylet a fixed 30 s to register with the GCS; on a crowded
        machine (the suite's other workers starting their own Ray) it can miss that, so a
        node that exits while starting is started again.
        """
        for attempt in range(1, attempts + 1):
            node = launch()
            try:
                if node.head:
                    self._wait_for_port(node, deadline)
                self.wait_for_nodes(1 + len(self.workers()), deadline)
                return node
            except ClusterError:
                if node.process.poll() is None or attempt == attempts:
                    raise
                _stop_process_group(node.process)
                self.nodes.remove(node)
                if node.head:
                    self.port = free_port()
        raise ClusterError("unreachable")

    def _launch_head(self) -> RayNode:
        return self._launch(
            "head",
            [
                "--head",
                "--port",
                str(self.port),
                "--include-dashboard",
                "false",
                "--dashboard-port",
                str(free_port()),
                "--temp-dir",
                str(self.root / "ray"),
                "--ray-client-server-port",
                str(free_port()),
            ],
        )

    def _launch_worker(self) -> RayNode:
        self._added += 1
        return self._launch(
            f"worker-{self._added}",
            ["--address", self.address, "--temp-dir", str(self.root / "ray")],
        )

    def _launch(self, name: str, arguments: list[str]) -> RayNode:
        log = self.root / f"{name}.log"
        command = [
            RAY,
            "start",
            "--block",
            "--num-cpus",
            str(self.cpus_per_node),
            "--object-store-memory",
            str(self.object_store_bytes),
            "--dashboard-agent-listen-port",
            str(free_port()),
            "--disable-usage-stats",
            *arguments,
        ]
        with log.open("w") as out:
            process = subprocess.Popen(
                command,
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stopped as one, by pid
            )
        node = RayNode(name, process, log)
        self.nodes.append(node)
        return node

    def _wait_for_port(self, head: RayNode, deadline: float) -> None:
        while time.monotonic() < deadline:
            if head.process.poll() is not None:
                raise ClusterError(
                    f"the Ray head exited with {head.process.returncode}:\n{_tail(head.log)}"
                )
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.2)
        raise ClusterError(f"the Ray head did not listen on {self.address} in time")

    def _node_states(self) -> dict[str, bool]:
        from ray._raylet import GcsClient

        client = GcsClient(address=self.address)
        infos = client.get_all_node_info(timeout=10)
        return {info.node_id.hex(): info.state == 0 for info in infos.values()}

    def _alive_or_empty(self) -> set[str]:
        try:
            return self.alive_node_ids()
        except Exception:  # noqa: BLE001 - the head is still starting: try again
            return set()


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def _stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM the node's process group (its ``ray start --block`` and what it started)."""
    pids = [process.pid, *(c.pid for c in _children(process.pid))]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_running(p) for p in pids):
            for pid in pids:  # reap what is ours
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
            time.sleep(0.2)
        if not any(_running(p) for p in pids):
            break
    process.poll()


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@pytest.fixture(scope="session")
def ray_cluster():
    """A head and two worker nodes (1 CPU each) on this machine, for the whole session.

    Fails (never skips) with the nodes' logs when the cluster cannot start.
    """
    root = Path(tempfile.mkdtemp(prefix="tcl_", dir="/tmp"))
    cluster = LocalCluster(root)
    try:
        try:
            cluster.start()
        except ClusterError as exc:
            pytest.fail(f"the fixture Ray cluster did not start: {exc}", pytrace=False)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
