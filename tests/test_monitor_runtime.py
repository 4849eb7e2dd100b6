"""The deployment-monitor runtime: a bounded queue that never blocks, senders, a dead letter.

The platform here is an in-memory Ray actor (`MonitorStore`) holding what it was sent;
the target talks to it as a platform's target does (every call through its gate, "already
held" counting as delivered), so the runtime's retries, isolation and overflow are what is
under test. The real platform (Picsellia, through its own stand-in server) is tested in
tests/test_picsellia_monitor.py.
"""

from __future__ import annotations

import collections
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import ray
from ray import cloudpickle

from connectors.base import DeliveryError, DeliveryResult
from connectors.runtime import MonitorTarget
from engine.detections import Detections
from engine.plugins import MonitoredImage
from engine.prediction import Prediction

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@ray.remote(num_cpus=0, max_concurrency=64)
class MonitorStore:
    """Holds posted records; fails on purpose: refused keys, transient errors, lost answers."""

    def __init__(
        self, refuse: Sequence[str] = (), transient: int = 0, lose: int = 0, slow_s: float = 0.0
    ) -> None:
        self.held: collections.Counter[str] = collections.Counter()
        self.refuse, self.transient, self.lose, self.slow_s = set(refuse), transient, lose, slow_s

    def post(self, key: str) -> str:
        time.sleep(self.slow_s)
        if key in self.refuse:
            return "refused"
        if self.transient > 0:
            self.transient -= 1
            return "unavailable"
        if self.held[key]:
            return "already"
        self.held[key] += 1
        if self.lose > 0:
            self.lose -= 1
            return "lost"
        return "created"

    def counts(self) -> dict[str, int]:
        return dict(self.held)


class StoreTarget(MonitorTarget):
    """Sends each record's key to the store, one call per record, through the gate."""

    name = "store"

    def __init__(self, store: Any) -> None:
        super().__init__()
        self.store = store
        self.classes: list[str] = []

    def prepare_monitor(self, class_names, task, shadow_class_names, options) -> None:
        if options:
            raise ValueError(f"unknown store options {sorted(options)}")
        self.classes = class_names

    def deliver_monitored(self, records: Sequence[MonitoredImage]) -> DeliveryResult:
        result = DeliveryResult()
        for record in records:
            with self.gate.request():
                answer = ray.get(self.store.post.remote(record.key))
            if answer == "refused":
                result.failed[record.key] = "HTTP 400: refused"
            elif answer in ("unavailable", "lost"):
                raise DeliveryError(f"HTTP 503 ({answer})", retryable=True, retry_after=0.01)
            else:
                result.delivered.append(record.key)
        return result

    def dead_letter_line(self, record: MonitoredImage) -> dict[str, Any]:
        return {"filename": record.prediction.name, "classes": record.prediction.classes}


def record(index: int) -> MonitoredImage:
    detections = Detections(np.array([[1, 2, 5, 6]], np.float32), np.array([0.9]), np.array([0]))
    prediction = Prediction(detections, ["car"], name=f"img_{index}.png", width=8, height=8)
    return MonitoredImage(f"req:{index}", prediction, 0.01, 1700000000.0 + index)


def dead_letter(path) -> dict[str, str]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    keys = [line["key"] for line in lines]
    assert len(keys) == len(set(keys)), "a record was dead-lettered twice"
    return {line["key"]: line["reason"] for line in lines}


def test_every_record_is_delivered_once_or_dead_lettered_with_its_reason(ray_session, tmp_path):
    store = MonitorStore.remote(refuse=["req:3"], transient=3, lose=2)
    target = StoreTarget(store)
    job = target.start_monitor(
        ["car"], "detection", None, {"dead_letter": str(tmp_path / "dead.jsonl"), "batch_size": 4}
    )
    accepted = [job.submit(record(i)) for i in range(20)]
    summary = job.close(timeout=60)

    assert all(accepted)
    held = ray.get(store.counts.remote())
    assert sorted(held) == sorted(f"req:{i}" for i in range(20) if i != 3)
    assert set(held.values()) == {1}, "a record was sent twice"
    dead = dead_letter(tmp_path / "dead.jsonl")
    assert list(dead) == ["req:3"] and "refused" in dead["req:3"]
    assert summary["delivered"] == 19 and summary["dead"] == 1 and summary["overflow"] == 0
    assert summary["pending"] == 0


def test_a_full_queue_overflows_into_the_dead_letter_and_never_blocks(ray_session, tmp_path):
    store = MonitorStore.remote(slow_s=0.3)
    path = tmp_path / "dead.jsonl"
    job = StoreTarget(store).start_monitor(
        ["car"],
        "detection",
        None,
        {"dead_letter": str(path), "queue_size": 2, "num_senders": 1, "batch_size": 1},
    )
    accepted = [job.submit(record(i)) for i in range(30)]
    summary = job.close(timeout=60)

    overflowed = accepted.count(False)
    assert overflowed > 0 and summary["overflow"] == overflowed
    held = set(ray.get(store.counts.remote()))
    dead = dead_letter(path)
    assert all("queue was full" in reason for reason in dead.values())
    assert held | set(dead) == {f"req:{i}" for i in range(30)} and not held & set(dead)
    line = json.loads(path.read_text().splitlines()[0])["record"]
    assert line["name"].startswith("img_") and line["prediction"]["classes"] == ["car"]


def test_bad_monitor_options_are_refused_before_anything_starts(ray_session, tmp_path):
    target = StoreTarget(MonitorStore.remote())
    with pytest.raises(ValueError, match="unknown store options"):
        target.start_monitor(["car"], "detection", None, {"colour": "red"})
    with pytest.raises(ValueError, match="queue_size"):
        target.start_monitor(["car"], "detection", None, {"queue_size": 0})
