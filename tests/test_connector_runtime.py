"""The connector runtime: rate limits, retries, dead letters, journal, resume.

The Ray tests run a real local Ray (the session's) against `FakeServer`, an in-memory
platform that injects 429s, lost answers, poison batches and missing images.
"""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest
from fake_connector import FakeConnector, FakeServer, make_predictions

from connectors.base import DeliveryError, DeliveryResult, UnsupportedModeError, UploadPlan
from connectors.journal import (
    Journal,
    iter_dead_letter,
    job_dir,
    prediction_from_payload,
    prediction_payload,
    redact_url,
)
from connectors.retry import RetryPolicy
from connectors.runtime import PREDICTION_FAILED, RateLimiter, Uploader, UploadJob
from engine import masks as mask_utils
from engine.detections import Detections
from engine.prediction import Prediction

FAST_RETRY = RetryPolicy(max_attempts=10, base_delay_s=0.01, max_delay_s=0.05)


def names(n: int, prefix: str = "img") -> list[str]:
    return [f"{prefix}_{i:03d}.jpg" for i in range(n)]


def key(name: str) -> str:
    return f"image:{name}"


@pytest.fixture(scope="module")
def server(ray_session):
    """One fake platform for the module; each test resets it."""
    handle = FakeServer.remote()
    yield handle
    ray_session.kill(handle)


def reset(ray, server, **config):
    ray.get(server.reset.remote(**config))


def server_log(ray, server) -> dict:
    return ray.get(server.log.remote())


# ---------------------------------------------------------------------- without Ray
def test_payload_rebuilds_the_prediction_exactly():
    masks = np.zeros((2, 30, 40), bool)
    masks[0, 2:9, 3:15] = True
    masks[1, 10:25, 20:38] = True
    prediction = Prediction(
        detections=Detections(
            xyxy=np.array([[3.3, 2.1, 15.7, 9.9], [20, 10, 38, 25]], np.float32),
            scores=np.array([0.91234567, 0.5], np.float32),
            class_idxs=np.array([1, 0]),
            masks_rle=mask_utils.encode_masks(masks),
            keypoints=np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3) / 7,
            track_ids=np.array([4, 9]),
        ),
        class_names=["cat", "dog"],
        source="url",
        name="frame.jpg",
        url="https://user:pw@example.com/v.mp4?token=abc&w=640",
        frame_index=12,
        timestamp=0.48,
        height=30,
        width=40,
        index=7,
        task="instance_segmentation",
    )
    payload = json.loads(json.dumps(prediction_payload(prediction)))
    rebuilt = prediction_from_payload(payload)

    np.testing.assert_array_equal(rebuilt.boxes, prediction.boxes)
    np.testing.assert_array_equal(rebuilt.scores, prediction.scores)
    np.testing.assert_array_equal(rebuilt.masks, masks)
    np.testing.assert_array_equal(rebuilt.keypoints, prediction.keypoints)
    np.testing.assert_array_equal(rebuilt.track_ids, [4, 9])
    assert rebuilt.classes == ["dog", "cat"]
    assert (rebuilt.frame_index, rebuilt.timestamp, rebuilt.index) == (12, 0.48, 7)
    assert (rebuilt.height, rebuilt.width, rebuilt.task) == (30, 40, "instance_segmentation")
    # credentials in the URL do not reach the payload
    assert rebuilt.url == "https://example.com/v.mp4?token=REDACTED&w=640"
    assert "pw" not in json.dumps(payload) and "abc" not in json.dumps(payload)
    assert redact_url("s3://bucket/a.jpg") == "s3://bucket/a.jpg"


def test_journal_records_states_and_reopens(tmp_path):
    plan = {"job_id": "j1", "options": {"project_name": "p", "api_key": "k-123"}}
    payloads = {key(n): prediction_payload(p) for n, p in zip(names(4), make_predictions(names(4)))}
    with Journal.open("j1", tmp_path, connector="fake", mode="create", plan=plan) as journal:
        journal.record_pending(payloads.items())
        journal.mark_delivered([key("img_000.jpg")], {key("img_000.jpg"): 2})
        journal.mark_dead({key("img_002.jpg"): "HTTP 404: gone"}, {key("img_002.jpg"): 1})
        assert journal.counts() == {"pending": 2, "delivered": 1, "dead": 1}
        assert journal.delivered_keys() == {key("img_000.jpg")}
        dead_letter = journal.write_dead_letter()

    journal = Journal.load("j1", tmp_path)
    assert journal.meta["plan"]["options"] == {"project_name": "p", "api_key": "REDACTED"}
    assert (journal.meta["connector"], journal.meta["mode"]) == ("fake", "create")
    assert [i.key for i in journal.pending()] == [key("img_001.jpg"), key("img_003.jpg")]
    assert [i.key for i in journal.undelivered()] == [
        key("img_001.jpg"),
        key("img_002.jpg"),
        key("img_003.jpg"),
    ]
    (line,) = list(iter_dead_letter(dead_letter))
    assert line["key"] == key("img_002.jpg")
    assert (line["reason"], line["attempts"]) == ("HTTP 404: gone", 1)
    assert prediction_from_payload(line["payload"]).name == "img_002.jpg"
    # a dead item recorded again (a resume) is pending once more, its attempts kept
    journal.record_pending([(key("img_002.jpg"), payloads[key("img_002.jpg")])])
    assert journal.counts() == {"pending": 3, "delivered": 1, "dead": 0}
    assert journal.write_dead_letter().read_text() == ""
    journal.close()
    assert "k-123" not in (tmp_path / "j1" / "journal.sqlite").read_bytes().decode("latin-1")

    with pytest.raises(ValueError, match="mode='create'"):
        Journal.open("j1", tmp_path, connector="fake", mode="replace", plan=plan)
    with pytest.raises(FileNotFoundError):
        Journal.load("nope", tmp_path)
    with pytest.raises(ValueError, match="job_id"):
        job_dir("../escape", tmp_path)


class _ScriptedConnector(FakeConnector):
    """Delivers locally: rejects batches holding ``poison``, with 503s while ``down``."""

    def __init__(self, poison=(), down=False):
        super().__init__(server=None)
        self.poison, self.down, self.calls = set(poison), down, []

    def deliver(self, batch):
        keys = [self.item_key(p) for p in batch]
        self.calls.append(keys)
        if self.down:
            raise DeliveryError("service unavailable", retryable=True, status=503)
        if self.poison.intersection(keys):
            raise DeliveryError("invalid annotation", retryable=False, status=400)
        return DeliveryResult(delivered=keys[:-1] if len(keys) == 3 else keys)


def test_uploader_splits_a_rejected_batch_to_isolate_the_poison_item():
    connector = _ScriptedConnector(poison=[key("img_001.jpg")])
    uploader = Uploader(connector, connector.gate, FAST_RETRY)
    outcome = uploader.deliver(make_predictions(names(4)))
    assert sorted(outcome.delivered) == [key(n) for n in names(4) if n != "img_001.jpg"]
    assert outcome.dead == {key("img_001.jpg"): "HTTP 400: invalid annotation (not retryable)"}
    assert outcome.attempts == dict.fromkeys(map(key, names(4)), 2)

    # an item the connector says nothing about is dead, not dropped
    outcome = uploader.deliver(make_predictions(["a.jpg", "b.jpg", "c.jpg"]))
    assert outcome.dead == {key("c.jpg"): "the connector reported no outcome for this item"}

    # a server that stays down: retries spent on the batch, then one solo try per item
    connector = _ScriptedConnector(down=True)
    policy = RetryPolicy(max_attempts=3, base_delay_s=0.0, jitter=0.0)
    outcome = Uploader(connector, connector.gate, policy).deliver(make_predictions(names(2)))
    assert len(connector.calls) == 3 + 2
    assert set(outcome.dead.values()) == {
        "HTTP 503: service unavailable (gave up after 4 attempts)"
    }


def test_rate_limiter_spaces_starts_and_caps_requests_in_flight():
    async def scenario():
        limiter = RateLimiter(requests_per_second=40.0, max_in_flight=2)
        granted: list[float] = []

        async def one():
            await limiter.acquire()
            granted.append(time.monotonic())

        tasks = [asyncio.ensure_future(one()) for _ in range(3)]
        await asyncio.sleep(0.2)
        assert len(granted) == 2  # the third waits for a slot, however long
        await limiter.release()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        for _ in range(3):
            await limiter.release()
        more = [asyncio.ensure_future(one()) for _ in range(8)]
        await asyncio.wait_for(asyncio.gather(*more[:2]), 5)
        for i in range(2, 8):  # release as they come, so only the rate binds
            await limiter.release()
            await asyncio.wait_for(more[i], 5)
        gaps = np.diff(granted[3:])
        assert gaps.min() >= 1 / 40 - 1e-3  # burst 1: consecutive starts >= 1/rps apart
        return await limiter.stats()

    stats = asyncio.run(scenario())
    assert stats["granted"] == 11 and stats["peak_in_flight"] == 2


# ---------------------------------------------------------------------- with Ray
def test_every_item_is_delivered_exactly_once_under_faults(ray_session, server, tmp_path):
    ray = ray_session
    reset(
        ray,
        server,
        throttle_every=5,
        retry_after=0.01,
        lose_every=3,
        poison=[key("img_013.jpg")],
        missing=[key("img_040.jpg")],
    )
    errors = ["img_021.jpg", "img_055.jpg"]
    predictions = make_predictions(names(60), errors=errors)
    plan = UploadPlan(
        job_id="faults", mode="create", class_names=["cat", "dog"], options={"api_key": "x9z"}
    )
    job = UploadJob.start(
        FakeConnector(server),
        plan,
        num_uploaders=3,
        requests_per_second=None,
        max_in_flight=4,
        batch_size=8,
        retry=FAST_RETRY,
        root=tmp_path,
    )
    for start in range(0, 60, 7):  # predictions stream in
        job.submit(predictions[start : start + 7])
    summary = job.finish(timeout=60)

    log = server_log(ray, server)
    dead_keys = {key("img_013.jpg"), key("img_040.jpg"), *map(key, errors)}
    good = {key(n) for n in names(60)} - dead_keys
    assert log["throttled"] > 0 and log["lost"] > 0  # the faults happened
    assert set(log["items"]) == good
    assert log["creates"] == dict.fromkeys(good, 1)  # no duplicates, despite lost answers
    assert not log["requested_keys"].intersection(map(key, errors))  # failed: never sent
    assert summary["delivered"] == 56 and summary["dead"] == 4 and summary["pending"] == 0
    assert summary["totals"] == {"pending": 0, "delivered": 56, "dead": 4}
    assert summary["requests"] == len(log["starts"])  # every request went through the gate

    lines = {line["key"]: line for line in iter_dead_letter(summary["dead_letter"])}
    assert set(lines) == dead_keys
    assert "HTTP 400: invalid annotation" in lines[key("img_013.jpg")]["reason"]
    assert "404" in lines[key("img_040.jpg")]["reason"]
    for name in errors:
        assert lines[key(name)]["reason"] == PREDICTION_FAILED + "decode failed: truncated file"
        assert lines[key(name)]["attempts"] == 0
    rebuilt = prediction_from_payload(lines[key("img_013.jpg")]["payload"])
    np.testing.assert_array_equal(rebuilt.boxes, predictions[13].boxes)
    journal_bytes = (tmp_path / "faults" / "journal.sqlite").read_bytes()
    assert b"x9z" not in journal_bytes and b"s3cr3t" not in journal_bytes
    # the actors are gone
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(job.limiter.stats.remote(), timeout=30)


def test_rate_and_in_flight_limits_hold_across_uploaders(ray_session, server, tmp_path):
    ray = ray_session
    reset(ray, server, latency_s=0.15)
    rps, max_in_flight = 10.0, 2
    job = UploadJob.start(
        FakeConnector(server),
        UploadPlan(job_id="limits", mode="append", class_names=["cat", "dog"]),
        num_uploaders=4,
        requests_per_second=rps,
        max_in_flight=max_in_flight,
        batch_size=1,
        root=tmp_path,
    )
    job.submit(make_predictions(names(16)))
    stats = ray.get(job.limiter.stats.remote())
    summary = job.finish(timeout=60)

    log = server_log(ray, server)
    starts = sorted(log["starts"])
    assert len(starts) == 1 + 2 * 16 == summary["requests"]  # prepare + exists/create each
    # token bucket, burst 1: at most rps + 1 starts in any 1 s window; the server sees each
    # start a few ms after the limiter granted it, so its windows allow 50 ms of transit jitter
    busiest = max(sum(1 for t in starts[i:] if t < s + 0.95) for i, s in enumerate(starts))
    assert busiest <= rps + 1
    assert log["peak_in_flight"] <= max_in_flight
    assert stats["peak_in_flight"] <= max_in_flight
    assert summary["delivered"] == 16


def test_resume_after_fixing_the_server_delivers_exactly_the_rest(ray_session, server, tmp_path):
    ray = ray_session
    broken = [key("img_003.jpg"), key("img_007.jpg")]
    reset(ray, server, poison=[key("img_005.jpg")], missing=broken)
    predictions = make_predictions(names(12))
    plan = UploadPlan(job_id="resume", mode="create", class_names=["cat", "dog"])
    options = dict(num_uploaders=2, requests_per_second=None, batch_size=4, retry=FAST_RETRY)
    job = UploadJob.start(FakeConnector(server), plan, root=tmp_path, **options)
    job.submit(predictions)
    first = job.finish(timeout=60)
    assert (first["delivered"], first["dead"]) == (9, 3)

    ray.get(server.fix.remote())
    ray.get(server.clear_log.remote())
    job = UploadJob.resume("resume", FakeConnector(server), root=tmp_path, **options)
    second = job.finish(timeout=60)

    log = server_log(ray, server)
    assert (second["delivered"], second["dead"], second["pending"]) == (3, 0, 0)
    assert log["requested_keys"] == {*broken, key("img_005.jpg")}  # exactly the rest
    assert log["creates"] == dict.fromkeys(map(key, names(12)), 1)
    assert second["totals"] == {"pending": 0, "delivered": 12, "dead": 0}
    assert (tmp_path / "resume" / "dead_letter.jsonl").read_text() == ""


def test_an_interrupted_job_resumes_its_pending_items(ray_session, server, tmp_path):
    ray = ray_session
    reset(ray, server, latency_s=0.05)
    plan = UploadPlan(job_id="cancelled", mode="create", class_names=["cat", "dog"])
    job = UploadJob.start(
        FakeConnector(server),
        plan,
        num_uploaders=2,
        requests_per_second=8.0,
        batch_size=2,
        root=tmp_path,
    )
    job.submit(make_predictions(names(20)))
    interrupted = job.cancel()
    assert interrupted["pending"] > 0

    job = UploadJob.resume(
        "cancelled", FakeConnector(server), root=tmp_path, requests_per_second=None
    )
    resumed = job.finish(timeout=60)
    log = server_log(ray, server)
    assert resumed["delivered"] == interrupted["pending"]
    assert resumed["totals"] == {"pending": 0, "delivered": 20, "dead": 0}
    # items whose create landed just before the kill were found, not created again
    assert log["creates"] == dict.fromkeys(map(key, names(20)), 1)


def test_a_rerun_skips_what_was_delivered(ray_session, server, tmp_path):
    ray = ray_session
    reset(ray, server)
    plan = UploadPlan(job_id="rerun", mode="append", class_names=["cat", "dog"])
    options = dict(num_uploaders=1, requests_per_second=None, batch_size=5, root=tmp_path)
    job = UploadJob.start(FakeConnector(server), plan, **options)
    job.submit(make_predictions(names(6)))
    assert job.finish(timeout=60)["delivered"] == 6

    ray.get(server.clear_log.remote())
    job = UploadJob.start(FakeConnector(server), plan, **options)
    job.submit(make_predictions(names(9)))
    job.submit(make_predictions(["img_007.jpg"]))  # the same item again in this run
    summary = job.finish(timeout=60)
    log = server_log(ray, server)
    assert summary["skipped_already_delivered"] == 6
    assert summary["skipped_duplicates"] == 1
    assert summary["delivered"] == 3
    assert log["requested_keys"] == {key(n) for n in names(9)[6:]}
    assert log["creates"] == dict.fromkeys(map(key, names(9)), 1)


def test_an_unsupported_mode_fails_before_any_request(ray_session, server, tmp_path):
    ray = ray_session
    reset(ray, server)
    plan = UploadPlan(job_id="badmode", mode="replace", class_names=["cat"])
    with pytest.raises(UnsupportedModeError, match="supports: create, append"):
        UploadJob.start(FakeConnector(server), plan, root=tmp_path)
    assert server_log(ray, server)["starts"] == []
    assert not (tmp_path / "badmode").exists()
