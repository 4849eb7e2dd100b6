"""Scaling on paper: the same job on a 1-, 2- and 3-node Ray cluster on this machine.

Each cluster is started with ``ray start`` processes of its own (a head and N-1 further
nodes, 1 CPU each, a temp directory and ports of its own; every process is stopped by its
process group when the run ends, never with ``ray stop``). A driver subprocess joins it with
``RAY_ADDRESS``, deploys the reference detector (``reference/color-boxes``) with one model
worker per node, and predicts a few hundred generated 640x480 JPEGs: once to warm up, then
``--runs`` timed runs. The driver also measures where the time goes, on one CPU of this
machine: decoding (images/s per CPU) and the model (images/s per worker), and its own CPU
seconds per image.

This machine has 2 cores, so 3 one-CPU nodes are oversubscribed: the figures show the
per-worker rates and the overheads, not a cluster's throughput. The expected throughput of
a GPU cluster is worked out from them (see ``expected`` in the results).

    python benchmarks/cluster_scaling.py [--nodes 1 2 3] [--images 300]

Writes the key ``scaling`` of benchmarks/results/cluster.json (other keys are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, write_results  # noqa: E402

MODEL = "reference/color-boxes"
#: Bytes of object store per node: the job's blocks are small.
OBJECT_STORE_BYTES = 300 * 2**20
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalCluster:
    """A head and further nodes started with ``ray start --block``, stopped by process group.

    Args:
        nodes: Nodes in all, the head included; each has 1 CPU.
        temp_dir: Ray's temp directory for this cluster alone.

    Example:
        >>> with LocalCluster(2, Path("/tmp/rc")) as cluster:  # doctest: +SKIP
        ...     print(cluster.address)
    """

    def __init__(self, nodes: int, temp_dir: Path) -> None:
        self.nodes = nodes
        self.temp_dir = temp_dir
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._processes: list[subprocess.Popen] = []
        self._env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self._env["RAY_memory_monitor_refresh_ms"] = "0"  # a benchmark, on a shared host

    def _start(self, *args: str) -> None:
        log = open(self.temp_dir / f"node{len(self._processes)}.log", "w")  # noqa: SIM115
        common = [
            "--block",
            "--num-cpus",
            "1",
            "--object-store-memory",
            str(OBJECT_STORE_BYTES),
            "--dashboard-agent-listen-port",
            str(free_port()),
            "--disable-usage-stats",
        ]
        process = subprocess.Popen(
            [RAY, "start", *args, *common],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self._env,
            start_new_session=True,  # its own process group: stopped as one, by its id
        )
        self._processes.append(process)

    def __enter__(self) -> LocalCluster:
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        self._start(
            "--head",
            "--port",
            str(self.port),
            "--node-ip-address",
            "127.0.0.1",
            "--include-dashboard",
            "false",
            "--temp-dir",
            str(self.temp_dir),
        )
        self._wait_head()
        for _ in range(self.nodes - 1):
            self._start("--address", self.address, "--node-ip-address", "127.0.0.1")
        self.start_s = time.perf_counter() - started
        return self

    def _wait_head(self, timeout: float = 120.0) -> None:
        """Wait until the head's GCS port takes connections."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self._processes[0].poll() is not None:
                raise RuntimeError(f"ray start --head ended: see {self.temp_dir}/node0.log")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1.0).close()
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"the head at {self.address} did not start within {timeout} s")

    def __exit__(self, *exc: object) -> None:
        # workers first, the head last; SIGTERM lets each node stop its own processes
        for process in reversed(self._processes):
            _stop_group(process)


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group ``process`` leads, then SIGKILL what is left of it."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    time.sleep(1.0)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=10)


# ---------------------------------------------------------------------- the driver side
def driver(args: argparse.Namespace) -> dict[str, Any]:
    """Run in the driver subprocess (``RAY_ADDRESS`` set): the job and its timings."""
    if not os.environ.get("RAY_ADDRESS"):
        raise RuntimeError("the driver joins the benchmark's cluster by RAY_ADDRESS")
    import psutil
    import ray

    import engine
    from engine.item_prediction import decode_items
    from engine.models.zoo import resolve_model
    from engine.settings import ModelInfo, validate_settings
    from engine.sources.resolve import resolve_input

    paths = sorted(str(p) for p in Path(args.folder).glob("*.jpg"))
    process = psutil.Process()
    started = time.perf_counter()
    ray.init(log_to_driver=False)  # RAY_ADDRESS: the benchmark's own cluster
    while sum(1 for n in ray.nodes() if n["Alive"]) < args.nodes:
        if time.perf_counter() - started > 120:
            raise RuntimeError(f"the cluster did not reach {args.nodes} nodes in 120 s")
        time.sleep(0.5)
    nodes_s = time.perf_counter() - started
    started = time.perf_counter()
    model = engine.deploy(MODEL, num_workers=args.nodes, threads=1)
    deploy_s = time.perf_counter() - started
    nodes = [n for n in ray.nodes() if n["Alive"]]
    options = {"batch_size": args.batch_size, "progress": False}
    model.predict(paths, **options)  # warm: worker processes, imports
    runs = []
    for _ in range(args.runs):
        cpu = process.cpu_times()
        started = time.perf_counter()
        predictions = model.predict(paths, **options)
        seconds = time.perf_counter() - started
        after = process.cpu_times()
        assert len(predictions) == len(paths) and not predictions.failed
        runs.append(
            {
                "seconds": round(seconds, 3),
                "images_per_s": round(len(paths) / seconds, 2),
                "driver_cpu_s": round(after.user + after.system - cpu.user - cpu.system, 3),
                "objects": sum(len(p) for p in predictions),
            }
        )
    model.close()
    # where the time goes, on one CPU of this machine: decode, then the model alone
    adapter = resolve_model(MODEL)
    adapter.load("cpu")
    settings = validate_settings({"batch_size": args.batch_size}, ModelInfo.of(adapter))
    items = resolve_input(paths[: args.stage_images]).items
    started = time.process_time()
    decoded = decode_items(items, settings, None)
    decode_cpu_s = time.process_time() - started
    images = [d.image for d in decoded]
    started = time.process_time()
    adapter.infer(images, settings.general.conf or adapter.default_conf)
    model_cpu_s = time.process_time() - started
    best = min(runs, key=lambda r: r["seconds"])
    return {
        "nodes": len(nodes),
        "cpus": sum(n["Resources"].get("CPU", 0) for n in nodes),
        "model_workers": args.nodes,
        "nodes_up_s": round(nodes_s, 2),
        "deploy_s": round(deploy_s, 2),
        "runs": runs,
        "images_per_s": statistics.median(r["images_per_s"] for r in runs),
        "best_images_per_s": best["images_per_s"],
        "per_worker_images_per_s": round(
            statistics.median(r["images_per_s"] for r in runs) / args.nodes, 2
        ),
        "driver_cpu_ms_per_image": round(
            1000 * statistics.median(r["driver_cpu_s"] for r in runs) / len(paths), 3
        ),
        "stage_images": len(images),
        "decode_images_per_cpu_s": round(len(images) / decode_cpu_s, 1),
        "model_images_per_cpu_s": round(len(images) / model_cpu_s, 1),
    }


def run_driver(cluster: LocalCluster, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Run `driver` in a subprocess joined to ``cluster``; return its figures."""
    command = [
        sys.executable,
        __file__,
        "--driver",
        "--folder",
        str(folder),
        "--nodes",
        str(cluster.nodes),
        "--runs",
        str(args.runs),
        "--batch-size",
        str(args.batch_size),
        "--stage-images",
        str(args.stage_images),
    ]
    env = {**os.environ, "RAY_ADDRESS": cluster.address}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"driver on {cluster.nodes} node(s) failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def expected(scaling: list[dict[str, Any]], driver_figures: dict[str, Any] | None) -> dict:
    """The inputs of the GPU-cluster estimate, measured here, and the formula."""
    decode = statistics.median(s["decode_images_per_cpu_s"] for s in scaling)
    model = statistics.median(s["model_images_per_cpu_s"] for s in scaling)
    one = next((s for s in scaling if s["model_workers"] == 1), scaling[0])
    inputs: dict[str, Any] = {
        "decode_images_per_cpu_s": decode,
        "reference_model_images_per_cpu_s": model,
        "per_worker_images_per_s_1_node": one["per_worker_images_per_s"],
        "driver_cpu_ms_per_image": one["driver_cpu_ms_per_image"],
    }
    if driver_figures:
        bound = [r["driver_bound_items_per_s"] for r in driver_figures.get("runs", [])]
        if bound:
            inputs["driver_bound_items_per_s"] = min(bound)
    return {
        "formula": (
            "images/s = min(G * per_gpu_rate, G * decode_cpus_per_gpu * "
            "decode_images_per_cpu_s, driver_bound_items_per_s)"
        ),
        "inputs": inputs,
        "note": (
            "decode_images_per_cpu_s is for 640x480 JPEGs, measured on one CPU of this "
            "machine; per_gpu_rate depends on the model and is not measured here"
        ),
    }


def main() -> None:
    """Start each cluster in turn, run the driver on it, stop it; write the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--stage-images", type=int, default=64)
    parser.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver:
        args.nodes = args.nodes[0]
        print(json.dumps(driver(args)))
        return
    from throughput import make_images

    scaling = []
    with tempfile.TemporaryDirectory(prefix="tessera-scaling-") as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        make_images(folder, args.images)
        for nodes in args.nodes:
            with LocalCluster(nodes, Path(tmp) / f"ray{nodes}") as cluster:
                figures = run_driver(cluster, args, folder)
                figures["cluster_start_s"] = round(cluster.start_s, 2)
            scaling.append(figures)
            print(json.dumps(figures), flush=True)
    path = RESULTS / "cluster.json"
    current = json.loads(path.read_text()) if path.exists() else {}
    current.pop("measured_at", None)
    current.pop("machine", None)
    one = next((s for s in scaling if s["model_workers"] == 1), scaling[0])
    current["scaling"] = {
        "model": MODEL,
        "images": args.images,
        "image_size": [480, 640],
        "batch_size": args.batch_size,
        "cpus_on_this_machine": os.cpu_count(),
        "node_cpus": 1,
        "clusters": scaling,
        "speedup_vs_1_node": {
            str(s["model_workers"]): round(s["images_per_s"] / one["images_per_s"], 2)
            for s in scaling
        },
        "expected_gpu_cluster": expected(scaling, current.get("driver")),
    }
    write_results("cluster", current)


if __name__ == "__main__":
    main()
