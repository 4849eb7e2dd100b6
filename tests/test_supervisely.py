from __future__ import annotations

import contextlib
import logging
import pickle
import threading
import time
from collections import Counter

import numpy as np
import pytest
from sly_standin import SuperviselyStandin, make_png

from connectors.base import DeliveryError, RequestGate, UnsupportedModeError, UploadPlan
from connectors.retry import RetryPolicy, call_with_retries
from connectors.supervisely import (
    JOB_TAG,
    SuperviselyClient,
    SuperviselyConfigError,
    SuperviselyConnector,
    image_url,
    parse_sly_url,
    resolve_credentials,
    video_url,
)
from engine import masks as mask_utils
from engine.detections import Detections
from engine.prediction import Prediction

CLASSES = ["__background__", "car", "person"]
W, H = 64, 48
FAST = RetryPolicy(max_attempts=8, base_delay_s=0.005, max_delay_s=0.05, jitter=0.5)
CAR_META = {"classes": [{"title": "car", "shape": "rectangle", "color": "#FF0000"}], "tags": []}


@pytest.fixture
def server():
    with SuperviselyStandin() as standin:
        yield standin


def make_client(server, **kwargs) -> SuperviselyClient:
    kwargs.setdefault("retry", FAST)
    kwargs.setdefault("timeout", 5)
    kwargs.setdefault("token", server.token)
    return SuperviselyClient(server_address=server.url, **kwargs)


def make_connector(server, **kwargs) -> SuperviselyConnector:
    return SuperviselyConnector(client=make_client(server, **kwargs))


def rect(left, top, right, bottom, title="car", tags=None):
    return {
        "classTitle": title,
        "geometryType": "rectangle",
        "tags": tags or [],
        "points": {"exterior": [[left, top], [right, bottom]], "interior": []},
    }


def annotation(objects, width=W, height=H):
    return {
        "description": "",
        "size": {"height": height, "width": width},
        "tags": [],
        "objects": objects,
    }


def pred(image_id, boxes, classes, scores=None, width=W, height=H, masks=None, **kwargs):
    n = len(boxes)
    detections = Detections(
        xyxy=np.asarray(boxes, np.float32).reshape(-1, 4),
        scores=np.linspace(0.9, 0.5, n) if scores is None else np.asarray(scores),
        class_idxs=np.asarray([CLASSES.index(c) for c in classes], np.int64),
        masks_rle=None if masks is None else mask_utils.encode_masks(masks),
    )
    fields = dict(
        source="supervisely",
        name=f"{image_id}.png",
        url=image_url(image_id),
        dataset="ds",
        height=height,
        width=width,
    )
    fields.update(kwargs)
    return Prediction(detections=detections, class_names=CLASSES, **fields)


def two_objects(image_id):
    return pred(image_id, [[30, 20, 50, 40], [5, 5, 20, 20]], ["car", "person"])


def ours(objects, job="job-1"):
    return [
        o for o in objects if any(t["name"] == JOB_TAG and t["value"] == job for t in o["tags"])
    ]


def plan(mode, job="job-1", task="detection", **sources_and_options):
    options = sources_and_options.pop("options", {})
    return UploadPlan(job, mode, CLASSES, task=task, options=options, sources=sources_and_options)


# ---------------------------------------------------------------------- ids and credentials
def test_url_convention():
    assert image_url(42) == "sly://images/42"
    assert parse_sly_url("sly://images/42") == ("images", 42)
    assert parse_sly_url(video_url(7)) == ("videos", 7)
    assert parse_sly_url("sly://images/x") is None
    assert parse_sly_url("/data/a.png") is None
    connector = SuperviselyConnector(client=object())
    assert connector.item_key(pred(5, [], [])) == "image:5"
    frame = pred(9, [], [], url=video_url(9), frame_index=12)
    assert connector.item_key(frame) == "video:9:frame:12"
    assert connector.item_key(pred(1, [], [], url=None, source="file")).startswith("unresolved:")


def test_credentials_from_env_then_config_file(monkeypatch, tmp_path):
    monkeypatch.delenv("SERVER_ADDRESS", raising=False)
    monkeypatch.delenv("API_TOKEN", raising=False)
    monkeypatch.setenv("SUPERVISELY_CONFIG", str(tmp_path / "missing.env"))
    with pytest.raises(SuperviselyConfigError) as info:
        SuperviselyClient()
    assert "SERVER_ADDRESS" in str(info.value) and "API_TOKEN" in str(info.value)

    config = tmp_path / "sly.env"
    config.write_text('# comment\nSERVER_ADDRESS="sly.example.com/"\nexport API_TOKEN=filetok\n')
    monkeypatch.setenv("SUPERVISELY_CONFIG", str(config))
    assert resolve_credentials() == ("https://sly.example.com", "filetok")

    monkeypatch.setenv("SERVER_ADDRESS", "http://env:1")
    monkeypatch.setenv("API_TOKEN", "envtok")
    assert resolve_credentials() == ("http://env:1", "envtok")
    assert resolve_credentials("http://arg:2", "argtok") == ("http://arg:2", "argtok")


def test_token_never_shown(server, caplog):
    caplog.set_level(logging.DEBUG)
    # an earlier test's logging.config (Ray's) may have disabled the loggers that exist then
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("connectors"):
            logging.getLogger(name).disabled = False
    server.echo_key = True  # a server that quotes the key back in its errors
    client = make_client(server)
    connector = SuperviselyConnector(client=client)
    errors = []
    with pytest.raises(DeliveryError) as info:
        client.project_info(123456)  # 404
    errors.append(info.value)
    server.fail_next("500", "500", "500", "500", "500", "500", "500", "500")
    with pytest.raises(DeliveryError) as info:
        client.project_info(1)  # retried (and logged) until the attempts are spent
    errors.append(info.value)
    dead = SuperviselyStandin()
    url, token = dead.url, dead.token
    dead._server.server_close()  # nothing listens there any more
    dead_client = SuperviselyClient(url, token, retry=FAST, timeout=1)
    with pytest.raises(DeliveryError) as info:
        dead_client.image_info(1)
    errors.append(info.value)
    assert errors[2].retryable and errors[2].status is None
    for error in errors:
        for text in (str(error), repr(error), repr(error.args)):
            assert server.token not in text and token not in text
        assert error.__context__ is None and error.__cause__ is None
    assert "***" in str(errors[0])  # the echoed key was scrubbed
    for text in (repr(client), str(client), repr(connector), repr(client.__dict__)):
        assert server.token not in text
    assert server.token not in caplog.text
    assert "retrying" in caplog.text


def test_wrong_token_is_401_not_retried(server):
    client = make_client(server, token="not-the-token")
    with pytest.raises(DeliveryError) as info:
        client.project_info(1)
    error = info.value
    assert error.status == 401 and not error.retryable
    assert "API_TOKEN" in str(error) and "Unauthorized" in str(error)
    assert server.count() == 1


# ---------------------------------------------------------------------- input side
def test_list_images_downloads_and_pagination(tmp_path):
    with SuperviselyStandin(per_page_max=3) as server:
        seeded = server.seed_project({"a": 4, "b": 3})
        child = server.add_dataset(seeded["project_id"], "child", parent_id=seeded["datasets"]["a"])
        png = make_png(20, 10)
        child_images = [server.add_image(child, f"c{i}.png", png) for i in range(2)]
        client = make_client(server)

        images = client.list_images(project_id=seeded["project_id"])
        assert len(images) == 9
        assert Counter(i["dataset"] for i in images) == {"a": 4, "b": 3, "a/child": 2}
        by_id = {i["id"]: i for i in images}
        assert by_id[child_images[0]]["width"] == 20 and by_id[child_images[0]]["height"] == 10
        assert by_id[child_images[0]]["url"] == image_url(child_images[0])
        assert server.count("images.list") > 3  # several pages per dataset

        only_b = client.list_images(dataset_id=seeded["datasets"]["b"])
        assert [i["dataset"] for i in only_b] == ["b"] * 3
        wanted = [child_images[1], *list(seeded["images"])[:5]]
        picked = client.list_images(image_ids=wanted)
        assert [i["id"] for i in picked] == wanted
        with pytest.raises(ValueError):
            client.list_images()

        assert client.download_image(child_images[0]) == png
        video = server.add_video(seeded["datasets"]["b"], "clip.mp4", b"\x00video" * 1000)
        assert client.video_info(video)["name"] == "clip.mp4"
        out = client.download_video(video, tmp_path / "clip.mp4")
        assert out.read_bytes() == b"\x00video" * 1000


# ---------------------------------------------------------------------- modes
def seed_with_ground_truth(server, counts, gt=True, meta=CAR_META):
    seeded = server.seed_project(counts, size=(W, H), meta=meta)
    if gt:
        for image_id in seeded["images"]:
            server.annotations[image_id] = server._stored(annotation([rect(0, 0, 9, 9)]))
    return seeded


@pytest.mark.parametrize("mode", ["append", "replace", "iou_merge"])
def test_deliver_each_mode(server, mode):
    seeded = seed_with_ground_truth(server, {"a": 55, "b": 5})
    car_class_id = server.metas[seeded["project_id"]]["classes"][0]["id"]
    connector = make_connector(server)
    connector.prepare(plan(mode, project_id=seeded["project_id"]))
    batch = [two_objects(i) for i in seeded["images"]]
    result = connector.deliver(batch)
    assert sorted(result.delivered) == sorted(f"image:{i}" for i in seeded["images"])
    assert result.failed == {}
    assert server.count("annotations.bulk.add") == 3  # 50 + 5 for "a", 5 for "b"

    meta = server.metas[seeded["project_id"]]
    assert [c["title"] for c in meta["classes"]] == ["car", "person"]
    assert meta["classes"][0]["id"] == car_class_id  # existing class kept as it was
    assert {t["name"] for t in meta["tags"]} == {"confidence", JOB_TAG}

    for image_id in seeded["images"]:
        objects = server.objects(image_id)
        mine = ours(objects)
        assert sorted(o["classTitle"] for o in mine) == ["car", "person"]
        car = next(o for o in mine if o["classTitle"] == "car")
        assert car["points"]["exterior"] == [[30, 20], [49, 39]]
        assert {t["name"] for t in car["tags"]} == {"confidence", JOB_TAG}
        others = [o for o in objects if o not in mine]
        assert len(others) == (0 if mode == "replace" else 1)

    # Delivering the same batch again (a runtime retry) changes nothing.
    before = {i: len(server.objects(i)) for i in seeded["images"]}
    writes = server.count("annotations.bulk.add")
    again = connector.deliver(batch)
    assert sorted(again.delivered) == sorted(result.delivered)
    assert {i: len(server.objects(i)) for i in seeded["images"]} == before
    if mode != "replace":
        assert server.count("annotations.bulk.add") == writes  # seen as already there


def test_iou_merge_keeps_and_drops_the_right_objects(server):
    seeded = server.seed_project({"d": 2}, size=(128, 96), meta=CAR_META)
    first, second = seeded["images"]
    existing = annotation([rect(10, 10, 49, 49)], width=128, height=96)
    server.annotations[first] = server._stored(existing)
    server.annotations[second] = server._stored(existing)
    boxes = [
        [10, 10, 50, 50],  # same box, same class: IoU 1 -> dropped
        [12, 10, 52, 50],  # IoU 38/42 = 0.905 -> dropped at 0.9
        [15, 10, 55, 50],  # IoU 35/45 = 0.78 -> kept
        [10, 10, 50, 50],  # other class -> kept
    ]
    classes = ["car", "car", "car", "person"]
    kwargs = dict(width=128, height=96)

    connector = make_connector(server)
    connector.prepare(plan("iou_merge", project_id=seeded["project_id"]))
    connector.deliver([pred(first, boxes, classes, **kwargs)])
    kept = [(o["classTitle"], o["points"]["exterior"]) for o in ours(server.objects(first))]
    assert sorted(kept) == [("car", [[15, 10], [54, 49]]), ("person", [[10, 10], [49, 49]])]
    assert len(server.objects(first)) == 3

    strict = make_connector(server)
    strict.prepare(
        plan(
            "iou_merge",
            job="job-2",
            project_id=seeded["project_id"],
            options={"iou_threshold": 0.95},
        )
    )
    strict.deliver([pred(second, boxes, classes, **kwargs)])
    assert len(ours(server.objects(second), "job-2")) == 3  # only the identical box dropped


def test_create_mirrors_datasets_and_copies_images(server):
    seeded = server.seed_project({"train": 3, "val": 2}, meta=CAR_META)
    child = server.add_dataset(seeded["project_id"], "hard", parent_id=seeded["datasets"]["train"])
    child_image = server.add_image(child, "hard_0.png", make_png(W, H, (1, 2, 3)))
    sources = list(seeded["images"]) + [child_image]

    connector = make_connector(server)
    connector.prepare(
        plan("create", project_id=seeded["project_id"], options={"project_name": "preds"})
    )
    result = connector.deliver([two_objects(i) for i in sources])
    assert sorted(result.delivered) == sorted(f"image:{i}" for i in sources)

    new = server.project_by_name("preds")
    assert new is not None and new["workspaceId"] == seeded["workspace_id"]
    datasets = {d["name"]: d for d in server.datasets_of(new["id"])}
    assert set(datasets) == {"train", "val", "hard"}
    assert datasets["hard"]["parentId"] == datasets["train"]["id"]
    for source_ds in server.datasets_of(seeded["project_id"]):
        source_images = {i["name"]: i for i in server.images_of(source_ds["id"])}
        copies = {i["name"]: i for i in server.images_of(datasets[source_ds["name"]]["id"])}
        assert set(copies) == set(source_images)
        for name, image in copies.items():
            assert image["hash"] == source_images[name]["hash"]
            assert len(ours(server.objects(image["id"]))) == 2
            assert server.objects(source_images[name]["id"]) == []  # the source is untouched
    assert {c["title"] for c in server.metas[new["id"]]["classes"]} == {"car", "person"}

    # A resumed job finds its project again and copies nothing twice.
    images_before, projects_before = len(server.images), len(server.projects)
    again = make_connector(server)
    again.prepare(
        plan("create", project_id=seeded["project_id"], options={"project_name": "preds"})
    )
    assert again.project_id == new["id"]
    assert (len(server.images), len(server.projects)) == (images_before, projects_before)

    # Another job with the same name gets a free name; dataset_ids limits the copy.
    other = make_connector(server)
    val = seeded["datasets"]["val"]
    other.prepare(
        plan(
            "create",
            job="job-2",
            project_id=seeded["project_id"],
            dataset_ids=[val],
            options={"project_name": "preds"},
        )
    )
    second = server.project_by_name("preds (2)")
    assert second is not None and other.project_id == second["id"]
    assert [d["name"] for d in server.datasets_of(second["id"])] == ["val"]
    outside = other.deliver([two_objects(child_image)])
    assert list(outside.failed) == [f"image:{child_image}"]


def test_default_project_name(server):
    seeded = server.seed_project({"d": 1}, name="streets")
    connector = make_connector(server)
    connector.prepare(plan("create", project_id=seeded["project_id"]))
    assert server.projects[connector.project_id]["name"] == "streets predictions"


# ---------------------------------------------------------------------- meta
def test_meta_is_merged_before_any_annotation(server):
    seeded = server.seed_project({"d": 3})
    client = make_client(server)
    image = next(iter(seeded["images"]))
    with pytest.raises(DeliveryError) as info:  # the stand-in refuses unknown classes
        client.add_annotations(seeded["datasets"]["d"], [(image, annotation([rect(1, 1, 5, 5)]))])
    assert info.value.status == 400 and not info.value.retryable
    assert "not in the project meta" in str(info.value)

    server.records.clear()
    connector = SuperviselyConnector(client=client)
    connector.prepare(plan("append", project_id=seeded["project_id"]))
    connector.deliver([two_objects(i) for i in seeded["images"]])
    methods = [r.method for r in server.records]
    assert methods.index("projects.meta.update") < methods.index("annotations.bulk.add")


def test_incompatible_existing_class_or_tag_is_a_clear_error(server):
    point = {"classes": [{"title": "car", "shape": "point", "color": "#00FF00"}], "tags": []}
    seeded = server.seed_project({"d": 1}, meta=point)
    with pytest.raises(ValueError, match="'car'.*'point'"):
        make_connector(server).prepare(plan("append", project_id=seeded["project_id"]))

    text_conf = {"classes": [], "tags": [{"name": "confidence", "value_type": "any_string"}]}
    seeded = server.seed_project({"d": 1}, meta=text_conf)
    with pytest.raises(ValueError, match="confidence"):
        make_connector(server).prepare(plan("append", project_id=seeded["project_id"]))

    seeded = server.seed_project({"d": 1}, meta=CAR_META)  # rectangle class, masks to write
    with pytest.raises(ValueError, match="'car'.*'rectangle'"):
        make_connector(server).prepare(
            plan("append", task="instance_segmentation", project_id=seeded["project_id"])
        )
    assert all(r.method != "annotations.bulk.add" for r in server.records)


def test_segmentation_with_an_empty_mask_fits_a_bitmap_class(server):
    seeded = server.seed_project({"d": 1})
    image = next(iter(seeded["images"]))
    masks = np.zeros((2, H, W), bool)
    masks[0, 10:20, 5:25] = True  # the second mask is empty: it falls back to its box
    prediction = pred(image, [[5, 10, 25, 20], [30, 5, 40, 15]], ["car", "person"], masks=masks)
    connector = make_connector(server)
    connector.prepare(
        plan("replace", task="instance_segmentation", project_id=seeded["project_id"])
    )
    shapes = {c["title"]: c["shape"] for c in server.metas[seeded["project_id"]]["classes"]}
    assert shapes == {"car": "bitmap", "person": "bitmap"}
    assert connector.deliver([prediction]).delivered == [f"image:{image}"]
    objects = server.objects(image)
    assert [o["geometryType"] for o in objects] == ["bitmap", "bitmap"]
    assert objects[1]["bitmap"]["origin"] == [30, 5]


def test_rectangles_into_an_existing_polygon_class(server):
    poly = {"classes": [{"title": "car", "shape": "polygon", "color": "#00FF00"}], "tags": []}
    seeded = server.seed_project({"d": 1}, meta=poly)
    image = next(iter(seeded["images"]))
    connector = make_connector(server)
    connector.prepare(plan("append", project_id=seeded["project_id"]))
    connector.deliver([pred(image, [[2, 3, 12, 8]], ["car"])])
    (obj,) = server.objects(image)
    assert obj["geometryType"] == "polygon"
    assert obj["points"]["exterior"] == [[2, 3], [11, 3], [11, 7], [2, 7]]


def test_unsupported_mode(server):
    connector = make_connector(server)
    with pytest.raises(UnsupportedModeError, match="supports: create, append, replace, iou_merge"):
        connector.prepare(plan("merge", project_id=1))
    assert server.count() == 0


def test_items_that_cannot_be_delivered_fail_with_a_reason(server):
    seeded = seed_with_ground_truth(server, {"d": 2})
    good, other = seeded["images"]
    connector = make_connector(server)
    connector.prepare(
        plan("append", dataset_ids=[seeded["datasets"]["d"]], project_id=seeded["project_id"])
    )
    batch = [
        two_objects(good),
        pred(other, [], [], error="decode failed"),
        pred(0, [], [], url="/data/x.png", source="file", name="x.png"),
        pred(999999, [[1, 1, 5, 5]], ["car"]),
        pred(5, [], [], url=video_url(5), frame_index=3),
    ]
    result = connector.deliver(batch)
    assert result.delivered == [f"image:{good}"]
    assert "decode failed" in result.failed[f"image:{other}"]
    assert "sly://images/<image_id>" in result.failed["unresolved:file:x.png"]
    assert "404" in result.failed["image:999999"]
    assert "video" in result.failed["video:5:frame:3"]
    assert len(server.objects(other)) == 1  # untouched


def test_pickled_connector_delivers_through_its_new_gate(server):
    seeded = seed_with_ground_truth(server, {"d": 4})
    connector = make_connector(server)
    connector.prepare(plan("append", project_id=seeded["project_id"]))
    copy = pickle.loads(pickle.dumps(connector))
    gate = CountingGate()
    copy.bind(gate)
    before = server.count()
    result = copy.deliver([two_objects(i) for i in seeded["images"]])
    assert len(result.delivered) == 4
    assert gate.entered == server.count() - before > 0
    assert server.token not in repr(copy)


# ---------------------------------------------------------------------- faults
class CountingGate(RequestGate):
    """Counts requests and, with ``rate``, spaces them at most ``rate`` per second."""

    def __init__(self, rate: float | None = None) -> None:
        self.rate = rate
        self.entered = 0
        self._lock = threading.Lock()
        self._next = 0.0

    @contextlib.contextmanager
    def request(self):
        with self._lock:
            self.entered += 1
            if self.rate is not None:
                now = time.monotonic()
                wait = self._next - now
                self._next = max(now, self._next) + 1.0 / self.rate
                if wait > 0:
                    time.sleep(wait)
        yield


def deliver_like_the_runtime(connector, predictions, batch_size=16):
    delivered = []
    runtime_policy = RetryPolicy(max_attempts=6, base_delay_s=0.01, max_delay_s=0.05)
    for start in range(0, len(predictions), batch_size):
        batch = predictions[start : start + batch_size]
        result = call_with_retries(lambda b=batch: connector.deliver(b), runtime_policy)
        assert result.failed == {}
        delivered += result.delivered
    return delivered


@pytest.mark.parametrize("mode", ["append", "iou_merge", "replace"])
def test_every_prediction_is_delivered_exactly_once_under_faults(server, mode):
    seeded = seed_with_ground_truth(server, {"a": 40, "b": 20})
    server.fault_rates = {"429": 0.08, "500": 0.08, "drop": 0.1, "slow": 0.04}
    server.slow_s = 0.4
    connector = make_connector(server, timeout=0.25)
    connector.prepare(plan(mode, project_id=seeded["project_id"]))
    predictions = [two_objects(i) for i in seeded["images"]]
    # Besides the random faults, one of each for sure where it hurts most.
    server.fail_next("drop", "slow", "500", "429", method="annotations.bulk.add")
    server.fail_next("429", "drop", method="annotations.bulk.info")
    delivered = deliver_like_the_runtime(connector, predictions, batch_size=8)
    assert sorted(delivered) == sorted(f"image:{i}" for i in seeded["images"])
    # A second pass (as after a crash without journal) duplicates nothing either.
    deliver_like_the_runtime(connector, predictions[::3])
    time.sleep(server.slow_s)  # let slow answers that the client gave up on finish
    for image_id in seeded["images"]:
        objects = server.objects(image_id)
        assert sorted(o["classTitle"] for o in ours(objects)) == ["car", "person"]
        assert len(objects) == (2 if mode == "replace" else 3)
    faults = Counter(r.fault for r in server.records)
    assert faults["429"] and faults["500"] and faults["drop"] and faults["slow"]


def test_lost_answers_while_creating_make_no_duplicates(server):
    seeded = server.seed_project({"train": 60, "val": 3}, meta=CAR_META)
    for method in ("projects.create", "datasets.create", "images.bulk.add", "annotations.bulk.add"):
        server.fail_next("drop", method=method)
    server.fail_next("500", method="images.bulk.add")
    connector = make_connector(server)
    connector.prepare(
        plan("create", project_id=seeded["project_id"], options={"project_name": "p"})
    )
    deliver_like_the_runtime(connector, [two_objects(i) for i in seeded["images"]], batch_size=70)
    assert [p["name"] for p in server.projects.values()].count("p") == 1
    new = server.project_by_name("p")
    datasets = server.datasets_of(new["id"])
    assert sorted(d["name"] for d in datasets) == ["train", "val"]
    copies = [i for d in datasets for i in server.images_of(d["id"])]
    assert len(copies) == 63 and len({i["name"] for i in copies}) == 63
    assert all(len(server.objects(i["id"])) == 2 for i in copies)
    assert Counter(r.fault for r in server.records)["drop"] == 4


def test_retry_after_is_obeyed_and_only_the_failed_request_is_repeated(server):
    seeded = server.seed_project({"d": 60})
    waits = []
    policy = RetryPolicy(max_attempts=4, base_delay_s=0.01, max_delay_s=5)
    connector = make_connector(server, retry=policy, sleep=waits.append)
    connector.prepare(plan("replace", project_id=seeded["project_id"]))
    server.retry_after = "2"
    server.fail_next("429", method="annotations.bulk.add")
    result = connector.deliver([two_objects(i) for i in seeded["images"]])
    assert len(result.delivered) == 60
    assert waits == [2.0]
    assert server.count("annotations.bulk.add") == 3  # 2 calls, one of them repeated once
    assert server.count("annotations.bulk.add", 429) == 1


def test_gated_requests_stay_under_the_rate_limit_and_429s_are_absorbed(server):
    seeded = seed_with_ground_truth(server, {"d": 8})
    server.rate_limit = 10
    server.records.clear()
    gate = CountingGate(rate=8)
    connector = make_connector(server)
    connector.bind(gate)
    connector.prepare(plan("append", project_id=seeded["project_id"]))
    connector.deliver([two_objects(i) for i in seeded["images"]])
    assert server.count(status=429) == 0
    assert gate.entered == server.count() > 0

    # Without a gate the server's limit answers 429; the client waits as told and retries.
    patient = make_client(server, retry=RetryPolicy(max_attempts=10, max_delay_s=2))
    image = next(iter(seeded["images"]))
    infos = [patient.image_info(image) for _ in range(25)]
    assert all(i["id"] == image for i in infos)
    assert server.count(status=429) > 0


def test_classification_writes_image_tags_once(server):
    seeded = server.seed_project({"d": 2})
    connector = make_connector(server)
    connector.prepare(plan("append", task="classification", project_id=seeded["project_id"]))
    tag_metas = {t["name"]: t["value_type"] for t in server.metas[seeded["project_id"]]["tags"]}
    assert tag_metas["car"] == tag_metas["person"] == "any_number"
    batch = [
        pred(i, [[0, 0, W, H]], ["car"], scores=[0.75], task="classification")
        for i in seeded["images"]
    ]
    for _ in range(2):
        assert len(connector.deliver(batch).delivered) == 2
    for image_id in seeded["images"]:
        assert server.annotations[image_id]["tags"] == [{"name": "car", "value": 0.75}]
        assert server.objects(image_id) == []


def test_list_images_asks_dataset_info_when_images_lack_project_id(server):
    seeded = server.seed_project({"only": 2})
    for info in server.images.values():
        del info["projectId"]
    images = make_client(server).list_images(dataset_id=seeded["datasets"]["only"])
    assert [i["dataset"] for i in images] == ["only", "only"]
    assert server.count("datasets.info") == 1
