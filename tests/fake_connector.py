"""A fake labeling platform for the connector runtime tests.

`FakeServer` is an async Ray actor standing in for a platform's HTTP API: it stores the
items created, logs the start time and keys of every request, tracks how many requests
run at once, and injects faults: 429s with ``Retry-After`` every ``throttle_every``-th
request, "lost answers" (the write happens, then the answer is dropped) every
``lose_every``-th create, batches rejected with a 400 when they hold a ``poison`` key, and
per-item 404s for ``missing`` keys.

`FakeConnector` talks to it like a real connector: every request goes through its gate,
and it checks which items exist before creating (so a retry creates no duplicate).

Ray workers do not have ``tests/`` on their path, so this module is pickled by value.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import ray
from ray import cloudpickle

from connectors.base import Connector, DeliveryError, DeliveryResult, UploadPlan
from engine.detections import Detections
from engine.prediction import Prediction

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@ray.remote(num_cpus=0, max_concurrency=256)
class FakeServer:
    """An in-memory platform API with fault injection (see the module docstring)."""

    def __init__(self) -> None:
        self._configure()

    def _configure(
        self,
        latency_s: float = 0.0,
        throttle_every: int = 0,
        retry_after: float = 0.02,
        lose_every: int = 0,
        poison: Sequence[str] = (),
        missing: Sequence[str] = (),
    ) -> None:
        self.latency_s = latency_s
        self.throttle_every = throttle_every
        self.retry_after = retry_after
        self.lose_every = lose_every
        self.poison = set(poison)
        self.missing = set(missing)
        self.items: dict[str, dict] = {}
        self.creates: collections.Counter[str] = collections.Counter()
        self.starts: list[float] = []
        self.requested_keys: set[str] = set()
        self.in_flight = 0
        self.peak_in_flight = 0
        self.create_calls = 0
        self.lost = 0
        self.throttled = 0

    async def reset(self, **config: Any) -> None:
        """Forget everything and take a new fault configuration."""
        self._configure(**config)

    async def fix(self) -> None:
        """Stop rejecting poison and missing keys (the platform was fixed)."""
        self.poison.clear()
        self.missing.clear()

    async def clear_log(self) -> None:
        """Forget the request log (keep the items)."""
        self.starts.clear()
        self.requested_keys.clear()
        self.peak_in_flight = 0

    async def log(self) -> dict[str, Any]:
        """Request starts, keys requested, peak in flight, items and create counts."""
        return {
            "starts": list(self.starts),
            "requested_keys": set(self.requested_keys),
            "peak_in_flight": self.peak_in_flight,
            "items": dict(self.items),
            "creates": dict(self.creates),
            "lost": self.lost,
            "throttled": self.throttled,
        }

    async def request(
        self, op: str, keys: list[str], payloads: list[dict] | None = None
    ) -> dict[str, Any]:
        """Serve one API request: ``prepare``, ``exists`` or ``create``."""
        self.starts.append(time.time())
        self.requested_keys.update(keys if op != "prepare" else ())
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            if self.throttle_every and len(self.starts) % self.throttle_every == 0:
                self.throttled += 1
                return {"status": 429, "retry_after": self.retry_after}
            if op == "prepare":
                return {"status": 200}
            if op == "exists":
                return {"status": 200, "existing": [k for k in keys if k in self.items]}
            assert op == "create" and payloads is not None
            bad = sorted(self.poison.intersection(keys))
            if bad:
                return {"status": 400, "error": f"invalid annotation for {bad[0]}"}
            failed = {}
            for key, payload in zip(keys, payloads):
                if key in self.missing:
                    failed[key] = f"HTTP 404: image {key} not found"
                    continue
                self.creates[key] += 1  # a second create would be a duplicate
                self.items[key] = payload
            self.create_calls += 1
            if self.lose_every and self.create_calls % self.lose_every == 0:
                self.lost += 1
                return {"status": 0, "lost": True}
            return {"status": 201, "failed": failed}
        finally:
            self.in_flight -= 1


class FakeConnector(Connector):
    """A connector to `FakeServer` that checks what exists before creating."""

    name = "fake"
    modes = ("create", "append")

    def __init__(self, server: Any) -> None:
        super().__init__()
        self.server = server
        self.api_token = "s3cr3t-token"  # must never reach the journal

    def prepare(self, plan: UploadPlan) -> None:
        self._call("prepare", [])

    def item_key(self, prediction: Prediction) -> str:
        return f"image:{prediction.name}"

    def deliver(self, batch: Sequence[Prediction]) -> DeliveryResult:
        keys = [self.item_key(p) for p in batch]
        existing = set(self._call("exists", keys)["existing"])
        todo = [(k, p) for k, p in zip(keys, batch) if k not in existing]
        failed: dict[str, str] = {}
        if todo:
            answer = self._call("create", [k for k, _ in todo], [p.to_dict() for _, p in todo])
            failed = answer["failed"]
        return DeliveryResult(delivered=[k for k in keys if k not in failed], failed=failed)

    def _call(self, op: str, keys: list[str], payloads: list[dict] | None = None) -> dict:
        with self.gate.request():
            answer = ray.get(self.server.request.remote(op, keys, payloads))
        if answer.get("lost"):
            raise DeliveryError("connection reset before the answer", retryable=True)
        status = answer["status"]
        if status == 429:
            raise DeliveryError(
                "too many requests", retryable=True, retry_after=answer["retry_after"], status=429
            )
        if status >= 400:
            raise DeliveryError(answer["error"], retryable=status >= 500, status=status)
        return answer


def make_predictions(
    names: Sequence[str], errors: Sequence[str] = (), url: str | None = None
) -> list[Prediction]:
    """One small prediction per name; names in ``errors`` carry an error instead."""
    out = []
    for i, name in enumerate(names):
        failed = name in errors
        n = 0 if failed else 1 + i % 3
        detections = Detections(
            xyxy=np.array([[i, i, i + 10.5, i + 20.25]] * n, np.float32).reshape(-1, 4),
            scores=np.linspace(0.5, 0.9, n, dtype=np.float32),
            class_idxs=np.arange(n) % 2,
        )
        out.append(
            Prediction(
                detections=detections,
                class_names=["cat", "dog"],
                source="file",
                name=name,
                path=f"/data/{name}",
                url=url,
                height=64,
                width=80,
                index=i,
                error="decode failed: truncated file" if failed else None,
            )
        )
    return out
