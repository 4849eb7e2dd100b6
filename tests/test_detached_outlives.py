"""A detached session outlives its caller on a plain machine (issue 17).

Under the in-process Ray a `predict_detached` session died with the process that started
it. Without an address Tessera now runs on a local Ray of its own (`engine.local_ray`):
the session goes on after its caller exits, `engine.attach(id)` finds it from another
process without an address, and the cluster stops when unused or with `tessera ray stop`.
Each test runs the real processes, on a local Ray of its own folder (not the suite's).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from engine import local_ray

START_DETACHED = """
import json, numpy as np, engine
from engine.models.reference import ColorBoxDetector
model = engine.deploy(ColorBoxDetector())
images = [np.full((24, 24, 3), i, np.uint8) for i in range(12)]
session = model.predict_detached(images, progress=False)
first = session.next(timeout=240)
print(json.dumps({"id": session.detach(), "address": session.address, "first": first.index}))
"""

ATTACH = """
import json, sys, engine
with engine.attach(sys.argv[1]) as session:  # closed at the end: the session actor ends
    rest = [p.index for p in session]
print(json.dumps({"rest": rest}))
"""


def run_python(code: str, env: dict[str, str], *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def own_local_ray_env(tmp_path: Path, idle_s: float) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env[local_ray.DIR_VARIABLE] = str(tmp_path / "local-ray")
    env[local_ray.IDLE_VARIABLE] = str(idle_s)
    return env


def wait_until_stopped(directory: Path, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if local_ray.running_local_ray(directory) is None:
            return True
        time.sleep(1.0)
    return False


def test_a_detached_session_outlives_its_caller_and_is_attached_without_an_address(tmp_path):
    env = own_local_ray_env(tmp_path, idle_s=8)
    directory = Path(env[local_ray.DIR_VARIABLE])
    tessera = [str(Path(sys.executable).parent / "tessera"), "ray"]
    try:
        started = run_python(START_DETACHED, env)  # this process has exited once it returns
        running = local_ray.running_local_ray(directory)
        assert running is not None, "the local Ray ended with the process that started it"
        assert started["address"].rsplit(":", 1)[1] == running.address.rsplit(":", 1)[1]
        status = subprocess.run([*tessera, "status"], env=env, capture_output=True, text=True)
        assert running.address in status.stdout and "used by 1 process" in status.stdout

        time.sleep(12)  # past the idle time: the live session's lease keeps the cluster up
        assert local_ray.running_local_ray(directory) == running

        attached = run_python(ATTACH, env, started["id"])
        assert sorted([started["first"], *attached["rest"]]) == list(range(12))
        deadline = time.monotonic() + 60  # the closed session's actor ends: nothing holds it
        while local_ray.live_leases(directory) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert local_ray.live_leases(directory) == []

        # unused now: `tessera ray stop` stops it, unless its idle time already did
        stop = subprocess.run([*tessera, "stop"], env=env, capture_output=True, text=True)
        assert stop.returncode == 0, stop.stderr
        assert "stopped" in stop.stdout or "no Tessera local Ray is running" in stop.stdout
        assert wait_until_stopped(directory, timeout_s=60)
        deadline = time.monotonic() + 60
        while local_ray.process_group_alive(running.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not local_ray.process_group_alive(running.pid), "Ray processes were left behind"
        again = subprocess.run([*tessera, "status"], env=env, capture_output=True, text=True)
        assert "no Tessera local Ray is running" in again.stdout
    finally:
        local_ray.stop_local_ray(directory)
