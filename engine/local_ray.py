"""Tessera's own local Ray: one ``ray start --head`` on this machine that outlives its callers.

When no cluster is given, Tessera runs on a local Ray of its own rather than one inside
the calling process, so a detached session (`ModelAPI.predict_detached`) goes on after
its caller exits and `engine.attach` finds it from any process of this machine without
an address. The first Tessera process that needs Ray starts it; later ones join it (3.5 s
here, against 5.3 s for starting Ray).

What it is: a keeper process (``python -m engine.local_ray keep``, the leader of its own
process group) runs ``ray start --head --block`` on free ports, under
its own temporary directory, and writes where it listens to ``<dir>/cluster.json``, where
``<dir>`` is ``$TESSERA_LOCAL_RAY_DIR`` or ``~/.tessera/ray``. Every Tessera process using
it, and every detached session running on it, holds a lease (a file named by its pid,
under ``<dir>/leases``). Once no lease has been held for the idle time (10 minutes unless
``$TESSERA_LOCAL_RAY_IDLE_S`` says otherwise) the keeper stops the cluster; ``tessera ray
stop`` (`stop_local_ray`) stops it at once. It is stopped by its process group, never by
``ray stop`` (which ends every Ray process of the host).

``address="local"`` (``--address local``) still starts a private Ray inside the process,
which ends with it.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Environment variable naming the folder of Tessera's local Ray (record, lock, leases).
DIR_VARIABLE = "TESSERA_LOCAL_RAY_DIR"
#: Environment variable with the idle seconds after which the local Ray stops itself.
IDLE_VARIABLE = "TESSERA_LOCAL_RAY_IDLE_S"
#: Seconds without any lease after which the local Ray stops itself.
DEFAULT_IDLE_STOP_S = 600.0
#: Seconds the local Ray may take to start before `start_local_ray` gives up.
START_TIMEOUT_S = 180.0
#: Times the keeper starts the head when ``ray start`` exits while starting.
START_ATTEMPTS = 3
#: Seconds the head may take to end after SIGTERM before what is left is killed (its
#: ``ray start --block`` took 30 s to end on its own, waiting on processes already gone).
STOP_TIMEOUT_S = 8.0
#: Seconds between the keeper's checks of the leases.
CHECK_PERIOD_S = 2.0
#: What ``ray start --block`` prints once the head's GCS and raylet run.
STARTED_LINE = "Ray runtime started"
#: Set in the local Ray's environment, so its workers (a session actor) know to hold leases.
OWNED_VARIABLE = "TESSERA_LOCAL_RAY_OWNED"


@dataclass(frozen=True)
class LocalRay:
    """A running Tessera local Ray.

    Attributes:
        address: The GCS address to join ("127.0.0.1:PORT").
        pid: The keeper's pid, which is also the process group of the whole cluster.
        directory: Its folder (record, lock, leases, logs).
        started_at: When it started (seconds since the epoch).
        idle_stop_s: Seconds without a lease after which it stops itself.
    """

    address: str
    pid: int
    directory: Path
    started_at: float
    idle_stop_s: float

    def describe(self) -> str:
        """One line for the user: where it runs and how it ends."""
        return (
            f"Tessera's local Ray at {self.address} (pid {self.pid}; stops after "
            f"{self.idle_stop_s:g} s unused, or with `tessera ray stop`)"
        )


def local_ray_dir() -> Path:
    """The folder of Tessera's local Ray: ``$TESSERA_LOCAL_RAY_DIR`` or ``~/.tessera/ray``."""
    configured = os.environ.get(DIR_VARIABLE)
    return Path(configured).expanduser() if configured else Path.home() / ".tessera" / "ray"


def running_local_ray(directory: Path | None = None) -> LocalRay | None:
    """The local Ray recorded in ``directory`` when it is alive and answers, else None."""
    directory = directory or local_ray_dir()
    try:
        record = json.loads((directory / "cluster.json").read_text(encoding="utf-8"))
        found = LocalRay(
            address=str(record["address"]),
            pid=int(record["pid"]),
            directory=directory,
            started_at=float(record["started_at"]),
            idle_stop_s=float(record["idle_stop_s"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if record.get("python") != sys.executable:
        logger.warning(
            "not joining %s: it runs under %s, this process under %s",
            found.describe(),
            record.get("python"),
            sys.executable,
        )
        return None
    if not _alive(found.pid) or not _answers(found.address):
        return None
    return found


def start_local_ray(
    idle_stop_s: float | None = None, timeout_s: float = START_TIMEOUT_S
) -> LocalRay:
    """Return the running local Ray, starting it first when there is none.

    Two processes starting at once start one cluster: the second waits for the first
    (a file lock).

    Raises:
        RuntimeError: Ray did not start within ``timeout_s``; the message ends with its log.
        ValueError: ``idle_stop_s`` (or ``$TESSERA_LOCAL_RAY_IDLE_S``) is not a number of
            seconds above 0.
    """
    # refused before anything starts or is joined
    idle_given = None if idle_stop_s is None else checked_idle(idle_stop_s, "idle_stop_s")
    directory = local_ray_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(directory):
        running = running_local_ray(directory)
        if running is not None:
            return running
        (directory / "cluster.json").unlink(missing_ok=True)
        idle = idle_given if idle_given is not None else _configured_idle()
        log = directory / "keeper.log"
        with log.open("w") as out:
            keeper = subprocess.Popen(
                [sys.executable, "-m", "engine.local_ray", "keep", "--idle-s", str(idle)],
                env={**os.environ, DIR_VARIABLE: str(directory)},
                cwd=str(directory),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives this process; stopped as one group
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            running = running_local_ray(directory)
            if running is not None:
                return running
            if keeper.poll() is not None:
                break
            time.sleep(0.1)
        _stop_group(keeper.pid)
        raise RuntimeError(
            f"Tessera's local Ray did not start within {timeout_s:g} s "
            f"(pass address='local' to run Ray inside this process instead); "
            f"its log {log}:\n{_tail(log)}"
        )


def stop_local_ray(
    directory: Path | None = None, timeout_s: float = STOP_TIMEOUT_S + 10.0
) -> LocalRay | None:
    """Stop Tessera's local Ray (its whole process group); return what was stopped, or None.

    Args:
        directory: Its folder (default `local_ray_dir`).
        timeout_s: Seconds to wait for it to end before killing what is left.
    """
    directory = directory or local_ray_dir()
    with _locked(directory) if directory.is_dir() else contextlib.nullcontext():
        running = running_local_ray(directory)
        if running is None:
            return None
        _stop_group(running.pid, timeout_s)
        (directory / "cluster.json").unlink(missing_ok=True)
        return running


def process_group_alive(pgid: int) -> bool:
    """True while any process of group ``pgid`` (the local Ray's keeper pid) lives."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def hold_lease(pid: int | None = None) -> None:
    """Keep the local Ray up while process ``pid`` (default: this one) lives."""
    pid = pid or os.getpid()
    leases = local_ray_dir() / "leases"
    leases.mkdir(parents=True, exist_ok=True)
    lease = leases / str(pid)
    lease.touch()
    if pid == os.getpid():
        atexit.register(lease.unlink, missing_ok=True)


def hold_lease_if_owned() -> None:
    """Hold a lease when this process is a worker of Tessera's local Ray (a session actor)."""
    if os.environ.get(OWNED_VARIABLE) == "1":
        hold_lease()


def live_leases(directory: Path | None = None) -> list[int]:
    """The pids holding a lease on the local Ray now; stale lease files are removed."""
    leases = (directory or local_ray_dir()) / "leases"
    alive = []
    for lease in leases.glob("*") if leases.is_dir() else ():
        if lease.name.isdigit() and _alive(int(lease.name)):
            alive.append(int(lease.name))
        else:
            lease.unlink(missing_ok=True)
    return alive


def _keep(idle_stop_s: float) -> int:
    """The keeper: run the head, record it, and stop it once unused for ``idle_stop_s``."""
    if os.getpgid(0) != os.getpid():
        os.setpgid(0, 0)  # lead a process group of its own: the cluster is stopped as one
    directory = local_ray_dir()
    signal.signal(signal.SIGTERM, _exit_on_signal)
    head: subprocess.Popen[bytes] | None = None
    try:
        for attempt in range(1, START_ATTEMPTS + 1):
            head, address = _launch_head(directory, attempt)
            if _wait_started(head, directory / "head.log"):
                break
        else:
            return 1
        record = {
            "address": address,
            "pid": os.getpid(),
            "python": sys.executable,
            "started_at": time.time(),
            "idle_stop_s": idle_stop_s,
        }
        partial = directory / "cluster.json.partial"
        partial.write_text(json.dumps(record), encoding="utf-8")
        partial.replace(directory / "cluster.json")
        print(f"Tessera's local Ray at {address}", flush=True)
        last_used = time.monotonic()
        while head.poll() is None:
            if live_leases(directory):
                last_used = time.monotonic()
            elif time.monotonic() - last_used > idle_stop_s:
                print(f"unused for {idle_stop_s:g} s: stopping", flush=True)
                break
            time.sleep(CHECK_PERIOD_S)
    except SystemExit:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        (directory / "cluster.json").unlink(missing_ok=True)
        os.killpg(os.getpgid(0), signal.SIGTERM)  # `ray start --block` ends its node
        if head is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                head.wait(timeout=STOP_TIMEOUT_S)
        _kill_rest_of_group()
        if head is not None:  # logs and spilled objects, of no use once it is gone
            for tried in range(1, attempt + 1):
                shutil.rmtree(_temp_dir(tried), ignore_errors=True)
    return 0


def _temp_dir(attempt: int) -> Path:
    """Ray's temporary folder for the keeper's ``attempt``-th head (short: socket paths)."""
    return Path(tempfile.gettempdir()) / f"tessera-ray-{os.getpid()}-{attempt}"


def _launch_head(directory: Path, attempt: int) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``ray start --head --block`` on free ports; return it and its GCS address."""
    port = _free_port()
    temp_dir = _temp_dir(attempt)
    ray = str(Path(sys.executable).parent / "ray")
    env = {**os.environ, OWNED_VARIABLE: "1", DIR_VARIABLE: str(directory)}
    with (directory / "head.log").open("w") as out:
        head = subprocess.Popen(
            [
                ray,
                "start",
                "--head",
                "--block",
                "--disable-usage-stats",
                "--port",
                str(port),
                "--include-dashboard",
                "false",
                "--dashboard-port",
                str(_free_port()),
                "--dashboard-agent-listen-port",
                str(_free_port()),
                "--ray-client-server-port",
                str(_free_port()),
                "--temp-dir",
                str(temp_dir),
            ],  # fmt: skip
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return head, f"127.0.0.1:{port}"


def _wait_started(head: subprocess.Popen[bytes], log: Path) -> bool:
    """Wait until ``head`` says its node runs (True) or exits first (False).

    On a crowded machine ``ray start`` can miss its fixed 30 s for the raylet to
    register; it then exits, and the keeper starts it again.
    """
    while head.poll() is None:
        if STARTED_LINE in log.read_text(errors="replace"):
            return True
        time.sleep(0.1)
    print(f"ray start exited with {head.returncode}:\n{_tail(log)}", flush=True)
    return False


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(0)


def _kill_rest_of_group() -> None:
    """SIGKILL what is left of this process's group (all but this process)."""
    import psutil

    group = os.getpgid(0)
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if process.pid != os.getpid() and os.getpgid(process.pid) == group:
                process.kill()


def _configured_idle() -> float:
    value = os.environ.get(IDLE_VARIABLE)
    if not value:
        return DEFAULT_IDLE_STOP_S
    return checked_idle(value, f"${IDLE_VARIABLE}")


def checked_idle(value: Any, name: str) -> float:
    """``value`` as seconds > 0; ``name`` (the setting given) leads the error otherwise.

    Example:
        >>> checked_idle("90", "idle")
        90.0
    """
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{name} must be a number of seconds above 0, got {value!r}")
    return seconds


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with (directory / "lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _stop_group(pgid: int, timeout_s: float = 30.0) -> None:
    """SIGTERM the process group ``pgid``, then SIGKILL what is left after ``timeout_s``."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(-pgid, os.WNOHANG)  # reap it when it is our child
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not reaped) is not alive
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def _answers(address: str, timeout_s: float = 1.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the keeper process (``python -m engine.local_ray keep``)."""
    parser = argparse.ArgumentParser(prog="python -m engine.local_ray")
    parser.add_argument("command", choices=["keep"])
    parser.add_argument("--idle-s", type=float, default=DEFAULT_IDLE_STOP_S)
    args = parser.parse_args(argv)
    return _keep(args.idle_s)


if __name__ == "__main__":
    sys.exit(main())
