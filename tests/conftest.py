"""Shared fixtures: one local Ray for the session, a deployed reference detector."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# `make test` runs several pytest workers (pytest-xdist), each with its own local Ray: random ports
# keep their GCS, raylets and object managers from colliding on Ray's fixed defaults
os.environ.setdefault("RAY_USE_RANDOM_PORTS", "1")
# every job record and upload journal of the suite (and of the Ray workers and subprocesses
# it starts, which inherit this) goes to a temporary folder, not ~/.tessera/jobs
#: Temporary folders this process made for the suite; removed when the suite ends.
_MADE_HERE: list[str] = []
if "TESSERA_JOBS_DIR" not in os.environ:  # set once, by the first process (xdist's controller)
    os.environ["TESSERA_JOBS_DIR"] = tempfile.mkdtemp(prefix="tessera-test-jobs-")
    _MADE_HERE.append(os.environ["TESSERA_JOBS_DIR"])
# the suite's subprocesses (CLI calls, scripts) share one Tessera local Ray of the suite's
# own, never the user's; it is stopped when the suite ends (`pytest_sessionfinish`)
if "TESSERA_LOCAL_RAY_DIR" not in os.environ:
    os.environ["TESSERA_LOCAL_RAY_DIR"] = tempfile.mkdtemp(prefix="tessera-test-ray-")
    _MADE_HERE.append(os.environ["TESSERA_LOCAL_RAY_DIR"])


def pytest_sessionstart(session):
    """Stop at once when the test platform plug-in (tests/plugins/acme) is not installed."""
    from importlib import metadata

    if not any(e.name == "acme" for e in metadata.entry_points(group="tessera.platforms")):
        pytest.exit(
            "the test platform 'acme' (tests/plugins/acme) is not installed: run `make test`, "
            "or `.venv/bin/python -m pip install --no-deps -e tests/plugins/acme`",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )


def pytest_sessionfinish(session, exitstatus):
    """Stop the suite's Tessera local Ray and remove the suite's temporary folders, once
    every worker has finished (xdist's controller)."""
    if not hasattr(session.config, "workerinput"):
        from engine.local_ray import stop_local_ray

        stop_local_ray()
        for folder in _MADE_HERE:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance sized for this 2-core machine, shared by every test."""
    import ray

    from engine.runtime import ensure_ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ensure_ray()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def reference_model(ray_session):
    """The colour-box reference detector, deployed once for the session."""
    import engine
    from engine.models.reference import ColorBoxDetector

    model = engine.deploy(ColorBoxDetector())
    yield model
    model.close()
