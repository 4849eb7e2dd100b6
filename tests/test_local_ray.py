"""Which Ray a process without an address uses (issue 17: a stale `ray start` file made
`deploy()` hang about 6 minutes, then raise ConnectionError)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

PREDICT_ONE_IMAGE = (
    "import engine, numpy as np\n"
    "with engine.deploy('reference/color-boxes') as model:\n"
    "    print('predictions:', len(model.predict(np.zeros((8, 8, 3), np.uint8), progress=False)))\n"
)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_stale_cluster_file_is_ignored_and_a_local_ray_starts():
    # a short folder: Ray's unix sockets live below it, and their paths have a length limit
    root = Path(tempfile.mkdtemp(prefix="tray", dir="/tmp"))
    (root / "ray").mkdir()
    (root / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{closed_port()}")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = str(root)
    done = subprocess.run(
        [sys.executable, "-c", PREDICT_ONE_IMAGE],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,  # Ray's own retries of the dead address took about 6 minutes
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "predictions: 1" in done.stdout
    assert "does not answer; not joining it" in done.stderr
