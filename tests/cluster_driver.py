"""A driver run as a subprocess against the fixture cluster (tests/cluster_fixture.py).

It deploys the reference detector on the cluster named by ``RAY_ADDRESS``, runs one job
through the public API (``predict``, ``predict_detached`` or ``track``) and writes what
happened as JSON: every prediction, the nodes the model workers ran on, the job's actors,
the driver's memory, the outputs' summaries, and the node it killed, if any.

Usage::

    RAY_ADDRESS=127.0.0.1:PORT python tests/cluster_driver.py SPEC.json

SPEC.json holds:

- ``mode``: "predict", "detached" or "track";
- ``inputs``: paths (images, a directory, or videos for "track");
- ``options``: `predict` settings (``batch_size``, ``stride``...);
- ``outputs``: ``out``, ``format``, ``upload``, ``to``, ``upload_options`` (optional);
- ``num_workers``: model workers to deploy (None: the default, one per node);
- ``delay``: seconds each model batch sleeps (so a job lasts long enough to be hit);
- ``progress``: a file the model workers append one JSON line to per batch
  (node id, pid, images);
- ``kill_after``: once the workers have predicted this many images, SIGKILL the raylet
  of a worker node that runs a model worker (the one running most of the job's actors);
  ``cluster``: the fixture's description (`LocalCluster.write_description`), which names
  the head and each node's raylet pid;
- ``measure_memory``: record the driver's RSS before and during the job;
- ``result``: where the JSON result goes.

The model is `ProgressBoxes`, the reference detector (`ColorBoxDetector`) that also
writes its progress; its predictions are the reference detector's.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from engine.models.reference import ColorBoxDetector

__all__ = ["ProgressBoxes", "main", "run"]

#: Seconds the killer waits at most for the job to reach ``kill_after`` images.
KILL_WAIT_S = 300.0


class ProgressBoxes(ColorBoxDetector):
    """The reference detector, appending a JSON line per batch to ``progress``.

    Args:
        progress: The file to append to (shared by every worker on this machine).
        delay: Seconds each batch sleeps before its answer.
    """

    def __init__(self, progress: str, delay: float = 0.0) -> None:
        super().__init__()
        self.progress = progress
        self.delay = delay

    def infer(self, images: list[np.ndarray], conf: float) -> list[Any]:
        """Detect, sleep ``delay``, and record node, pid and batch size."""
        import ray

        found = super().infer(images, conf)
        if len(images) == 1 and images[0].shape[:2] == (256, 256) and not images[0].any():
            return found  # the worker's warm-up, not the job's
        time.sleep(self.delay)
        line = {
            "node": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "images": len(images),
        }
        with open(self.progress, "a") as out:  # one short line per write: appends interleave
            out.write(json.dumps(line) + "\n")
        return found


def progress_lines(path: str | Path) -> list[dict[str, Any]]:
    """The complete lines of a progress file."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.endswith("}")]


def job_actors() -> list[dict[str, Any]]:
    """This job's live actors: class, name, node id, pid.

    Read from the GCS's actor table (`ray._private.state.actors`, Ray's debugging view):
    the state API (`ray.util.state`) needs the dashboard, which the fixture leaves out.
    """
    import ray
    from ray._private.state import actors

    job = ray.JobID.from_hex(ray.get_runtime_context().get_job_id())
    found = actors(job_id=job, actor_state_name="ALIVE").values()
    return [
        {
            "class": a["ActorClassName"].rsplit(".", 1)[-1],
            "name": a.get("Name") or "",
            "node": a["Address"]["NodeID"],
            "pid": a.get("Pid"),
        }
        for a in found
    ]


class Killer(threading.Thread):
    """SIGKILL a worker node's raylet once the job has predicted ``after`` images."""

    def __init__(self, spec: dict[str, Any], record: dict[str, Any]) -> None:
        super().__init__(name="killer", daemon=True)
        self.spec, self.record = spec, record
        cluster = json.loads(Path(spec["cluster"]).read_text())
        self.head, self.raylets = cluster["head"], cluster["raylets"]

    def run(self) -> None:
        deadline = time.monotonic() + KILL_WAIT_S
        try:
            while sum(p["images"] for p in progress_lines(self.spec["progress"])) < int(
                self.spec["kill_after"]
            ):
                if time.monotonic() > deadline:
                    self.record["kill_error"] = "the job never reached kill_after images"
                    return
                time.sleep(0.05)
            actors = job_actors()
            model_nodes = {a["node"] for a in actors if a["class"] == "ModelWorker"}
            candidates = [n for n in self.raylets if n != self.head and n in model_nodes]
            if not candidates:
                self.record["kill_error"] = f"no worker node runs a model worker: {actors}"
                return
            victim = max(candidates, key=lambda n: sum(a["node"] == n for a in actors))
            done = sum(p["images"] for p in progress_lines(self.spec["progress"]))
            os.kill(int(self.raylets[victim]), signal.SIGKILL)
            self.record["killed"] = {
                "node": victim,
                "after_images": done,
                "actors_on_node": [a for a in actors if a["node"] == victim],
                "actors": actors,
            }
        except Exception:  # noqa: BLE001 - reported in the result, never lost
            self.record["kill_error"] = traceback.format_exc()


class MemoryProbe(threading.Thread):
    """Sample this process's RSS every 20 ms; the peak over the job is what counts."""

    def __init__(self) -> None:
        super().__init__(name="rss", daemon=True)
        import psutil

        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)


def run(spec: dict[str, Any], record: dict[str, Any]) -> None:
    """Run the job that ``spec`` describes (see the module docstring), filling ``record``."""
    import engine
    from engine.prediction_json import prediction_to_json

    model = engine.deploy(
        ProgressBoxes(spec["progress"], float(spec.get("delay", 0.0))),
        **({"num_workers": int(spec["num_workers"])} if spec.get("num_workers") else {}),
    )
    import ray

    # a stalled job fails within 3 minutes, not Ray Data's 30 (the nodes' environment sets
    # the same for the session actors, `RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S`)
    context = ray.data.DataContext.get_current()
    context.execution_no_progress_timeout_s = float(spec.get("no_progress_timeout_s", 180))
    record["num_workers"] = model.num_workers
    record["driver_node"] = ray.get_runtime_context().get_node_id()
    record["nodes"] = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    record["actors_at_start"] = job_actors()
    options = dict(spec.get("options", {}))
    options.setdefault("progress", False)
    outputs = dict(spec.get("outputs", {}))
    inputs = spec["inputs"]
    probe = None
    if spec.get("measure_memory"):
        first = Path(inputs[0])
        warm = [str(p) for p in sorted(first.iterdir())[:2]] if first.is_dir() else inputs[:2]
        model.predict(warm, **options)  # every import and code path warm, on two images
        record["rss_before"] = int(MemoryProbe().process.memory_info().rss)
        record["maxrss_before"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        probe = MemoryProbe()
        probe.start()
    Path(spec["progress"]).write_text("")  # count only this job's batches
    if spec.get("kill_after") is not None:
        Killer(spec, record).start()
    started = time.monotonic()
    if spec["mode"] == "predict":
        results = model.predict(inputs, **outputs, **options)
        predictions, record["outputs"] = list(results), results.outputs
    elif spec["mode"] == "detached":
        session = model.predict_detached(inputs, **outputs, **options)
        record["session_id"] = session.id
        with session:
            predictions = list(session)
            record["status"] = _jsonable(session.status())
    elif spec["mode"] == "track":
        annotations = model.track(inputs, **options)
        predictions = [p for annotation in annotations for p in annotation.frames]
        record["errors"] = [a.error for a in annotations]
    else:
        raise ValueError(f"mode must be predict, detached or track, got {spec['mode']!r}")
    record["seconds"] = round(time.monotonic() - started, 3)
    if spec["mode"] != "detached":  # a session's own workers end with it
        record["actors_at_end"] = job_actors()
    if probe is not None:
        probe.stopped.set()
        probe.join()
        record["rss_peak"] = int(probe.peak)
        record["maxrss_after"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    record["predictions"] = [prediction_to_json(p, self_contained=False) for p in predictions]
    record["model_nodes"] = sorted({p["node"] for p in progress_lines(spec["progress"])})
    record["model_pids"] = sorted({p["pid"] for p in progress_lines(spec["progress"])})


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def main(argv: list[str]) -> int:
    """Run the spec file ``argv[0]``; write its result even when the job fails."""
    spec = json.loads(Path(argv[0]).read_text())
    record: dict[str, Any] = {"pid": os.getpid()}
    code = 0
    try:
        run(spec, record)
    except Exception:  # noqa: BLE001 - the test reads the error from the result
        record["error"], code = traceback.format_exc(), 1
    Path(spec["result"]).write_text(json.dumps(record, default=str))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
