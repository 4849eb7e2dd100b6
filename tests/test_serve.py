"""The online-prediction server: HTTP contract, batching, security, monitoring, sessions.

Pure parts (URL checks, multipart, JSON schema, batching helper) are tested without Serve;
the rest runs one Serve application per module over the session's Ray.
"""

from __future__ import annotations

import argparse
import base64
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from scenes import draw_scene, random_boxes
from serve_helpers import can_bind, free_port, image_server, png_bytes, poll

from engine.detections import Detections
from engine.models.reference import ColorBoxDetector
from engine.prediction import Prediction
from engine.prediction_json import prediction_from_json
from engine.settings import ModelInfo, validate_settings
from serve.multipart import MultipartError, parse_multipart
from serve.predictor import predict_batch
from serve.schema import ApiError, prediction_to_json, settings_from_query
from serve.security import (
    UnsafeURLError,
    URLPolicy,
    check_token,
    check_url,
    fetch_url_safely,
)

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BYTES = 1_000_000
MAX_PIXELS = 500_000
ALLOWED_HOST = "127.0.0.2"  # loopback, but on the server's allow list
H, W = 120, 160
ROOT = Path(__file__).resolve().parents[1]

needs_second_loopback = pytest.mark.skipif(
    not can_bind(ALLOWED_HOST), reason=f"cannot listen on {ALLOWED_HOST}"
)


def scene(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return draw_scene(H, W, random_boxes(rng, H, W, 5))


IMAGES = [scene(seed) for seed in range(3)]


def assert_same(payload: dict, expected: Prediction) -> None:
    """A prediction of the server equals the engine's batch prediction of the same image."""
    assert payload["error"] is None
    assert (payload["height"], payload["width"]) == (expected.height, expected.width)
    np.testing.assert_allclose(payload["boxes"], np.round(expected.boxes, 2).reshape(-1, 4))
    np.testing.assert_allclose(payload["scores"], np.round(expected.scores, 4), atol=1e-6)
    assert payload["classes"] == expected.classes
    assert payload["class_idxs"] == expected.class_idxs.tolist()


# --------------------------------------------------------------------------- pure parts
def test_bearer_token_check():
    assert check_token(None, None)
    assert check_token(f"Bearer {TOKEN}", TOKEN)
    assert check_token(f"bearer  {TOKEN} ", TOKEN)
    assert not check_token(None, TOKEN)
    assert not check_token("Bearer wrong", TOKEN)
    assert not check_token(TOKEN, TOKEN)
    assert not check_token(f"Basic {TOKEN}", TOKEN)


def test_urls_to_non_public_addresses_are_refused():
    def resolver(table):
        return lambda host, port: table[host]

    public = resolver({"example.com": ["93.184.216.34"], "mixed.test": ["8.8.8.8", "10.0.0.1"]})
    assert check_url("https://example.com/a.png?x=1", resolve=public).target == "/a.png?x=1"
    assert check_url("http://example.com:8080/", resolve=public).port == 8080
    with pytest.raises(UnsafeURLError, match="private"):  # every address must be public
        check_url("http://mixed.test/a.png", resolve=public)
    refused = {
        "http://127.0.0.1/a.png": "loopback",
        "http://localhost/a.png": "loopback",
        "http://[::1]/a.png": "loopback",
        "http://[::ffff:127.0.0.1]/a.png": "loopback",
        "http://0x7f000001/a.png": "loopback",
        "http://10.1.2.3/a.png": "private",
        "http://192.168.0.10/a.png": "private",
        "http://172.16.5.4/a.png": "private",
        "http://169.254.169.254/latest/meta-data": "link-local",
        "http://[fe80::1]/a.png": "link-local",
        "http://0.0.0.0/a.png": "unspecified",
        "http://100.64.0.1/a.png": "non-public",
        "ftp://example.com/a.png": "http and https",
        "file:///etc/passwd": "http and https",
        "gopher://example.com/": "http and https",
        "http:///a.png": "no host",
    }
    for url, why in refused.items():
        with pytest.raises(UnsafeURLError, match=why):
            check_url(url)
    allowed = URLPolicy.from_option(["127.0.0.2/32", "10.0.0.0/8"])
    assert check_url("http://127.0.0.2/a.png", allowed).address == "127.0.0.2"
    assert check_url("http://10.9.9.9/a.png", allowed).address == "10.9.9.9"
    with pytest.raises(UnsafeURLError, match="loopback"):
        check_url("http://127.0.0.1/a.png", allowed)
    assert check_url("http://127.0.0.1/a.png", URLPolicy.from_option(True)).address
    with pytest.raises(ValueError, match="allow_private_urls"):
        URLPolicy.from_option(["not-a-network"])


@needs_second_loopback
def test_fetch_checks_every_redirect_hop_and_connects_to_the_checked_address():
    data = png_bytes(IMAGES[0])
    policy = URLPolicy.from_option([f"{ALLOWED_HOST}/32"])
    with image_server(ALLOWED_HOST, {"a.png": data}) as allowed:
        with image_server("127.0.0.1", {"a.png": data}) as refused:
            assert fetch_url_safely(allowed.url("a.png"), 5, 10**6, policy) == data
            hop = allowed.redirect(allowed.url("a.png"))
            assert fetch_url_safely(hop, 5, 10**6, policy) == data
            with pytest.raises(UnsafeURLError, match="loopback"):
                fetch_url_safely(allowed.redirect(refused.url("a.png")), 5, 10**6, policy)
            assert refused.hosts == []  # the refused server was never contacted
        with pytest.raises(ValueError, match="above"):
            fetch_url_safely(allowed.url("a.png"), 5, 100, policy)
        with pytest.raises(ValueError, match="HTTP 404"):
            fetch_url_safely(allowed.url("missing.png"), 5, 10**6, policy)
        with pytest.raises(ValueError, match="redirects"):
            fetch_url_safely(hop, 5, 10**6, policy, max_redirects=0)
        # the host name is resolved once, checked, and that very address is connected to
        pinned = fetch_url_safely(
            f"http://images.test:{allowed.port}/a.png",
            5,
            10**6,
            policy,
            resolve=lambda host, port: [ALLOWED_HOST],
        )
        assert pinned == data
        assert allowed.hosts[-1] == f"images.test:{allowed.port}"


def test_multipart_parser_reads_what_requests_sends():
    prepared = requests.Request(
        "POST",
        "http://x/predict",
        files=[
            ("files", ("a.png", b"\x89PNG\r\n--not-a-boundary\r\n", "image/png")),
            ("files", ("b c.jpg", b"", "image/jpeg")),
            ("settings", (None, '{"conf": 0.2}')),
        ],
    ).prepare()
    parts = parse_multipart(prepared.body, prepared.headers["Content-Type"])
    assert [(p.name, p.filename) for p in parts] == [
        ("files", "a.png"),
        ("files", "b c.jpg"),
        ("settings", None),
    ]
    assert parts[0].data == b"\x89PNG\r\n--not-a-boundary\r\n" and parts[1].data == b""
    assert json.loads(parts[2].text) == {"conf": 0.2}
    for body, content_type in [
        (prepared.body, "multipart/form-data"),
        (b"garbage", prepared.headers["Content-Type"]),
        (prepared.body[:-20], prepared.headers["Content-Type"]),
    ]:
        with pytest.raises(MultipartError):
            parse_multipart(body, content_type)


def test_query_settings_are_typed_like_the_cli_and_unknown_names_refused():
    settings, others = settings_from_query(
        [
            ("conf", "0.25"),
            ("classes", "red,blue"),
            ("classes", "green"),
            ("img_size", "60,80"),
            ("sliding_window", "true"),
            ("overlap", "0.3"),
            ("annotation", "1"),
        ],
        extra=["annotation"],
    )
    assert settings == {
        "conf": 0.25,
        "classes": ["red", "blue", "green"],
        "img_size": (60, 80),
        "sliding_window": True,
        "overlap": 0.3,
    }
    assert others == {"annotation": "1"}
    for bad, word in [
        ([("confidence", "1")], "unknown query parameter"),
        ([("conf", "x")], "conf"),
        ([("conf", "0.1"), ("conf", "0.2")], "more than once"),
        ([("sliding_window", "maybe")], "sliding_window"),
        ([("progress", "true")], "unknown query parameter"),
    ]:
        with pytest.raises(ApiError, match=word):
            settings_from_query(bad)


def test_prediction_json_round_trip_keeps_masks_and_keypoints():
    detector = ColorBoxDetector(with_masks=True)
    detector.load("cpu")
    detections = detector.infer([IMAGES[0]], 0.5)[0]
    detections.keypoints = np.arange(len(detections) * 2 * 3, dtype=np.float32).reshape(-1, 2, 3)
    prediction = Prediction(
        detections, list(detector.classes), name="a.png", height=H, width=W, task=detector.task
    )
    payload = json.loads(json.dumps(prediction_to_json(prediction, annotation=True)))
    assert payload["annotation"]["size"] == {"height": H, "width": W}
    rebuilt = prediction_from_json(payload, list(detector.classes), detector.task)
    assert rebuilt.class_names == list(detector.classes) and rebuilt.name == "a.png"
    np.testing.assert_allclose(rebuilt.boxes, prediction.boxes)
    np.testing.assert_array_equal(rebuilt.masks, prediction.masks)
    np.testing.assert_allclose(rebuilt.keypoints, prediction.keypoints)
    empty = Prediction(Detections.empty(), ["a"], error="broken", height=0, width=0)
    assert prediction_to_json(empty, annotation=True)["annotation"] is None
    assert len(prediction_from_json(prediction_to_json(empty), ["a"])) == 0


def test_predict_batch_runs_each_settings_group_like_batch_prediction():
    from engine.inference import predict_images

    adapter = ColorBoxDetector()
    adapter.load("cpu")
    info = ModelInfo("m", "detection", adapter.classes, 0.5, (512, 512))
    plain = validate_settings({}, info)
    tiled = validate_settings({"sliding_window": True, "window_size": 64, "classes": "red"}, info)
    mixed = [plain, tiled, plain]
    results = predict_batch(adapter, IMAGES, mixed)
    for image, setting, result in zip(IMAGES, mixed, results):
        (alone,) = predict_images(adapter, [image], setting)
        np.testing.assert_array_equal(result.detections.xyxy, alone.detections.xyxy)
    assert set(results[1].detections.class_idxs.tolist()) <= {0}


def test_serve_yaml_builds_the_application():
    from ray.serve import Application
    from ray.serve.schema import ServeDeploySchema

    from serve.app import app_builder

    config = ServeDeploySchema(**yaml.safe_load((ROOT / "serve.yaml").read_text()))
    (application,) = config.applications
    assert application.import_path == "serve.app:app_builder" and application.route_prefix == "/"
    assert isinstance(app_builder(dict(application.args)), Application)
    with pytest.raises(ValueError, match="model"):
        app_builder({})
    with pytest.raises(ValueError, match="device"):
        app_builder({"model": "reference/color-boxes", "device": "tpu"})


def test_cli_options_map_onto_build_app():
    from engine import plugins
    from serve.cli import SERVE_COMMAND, serve_options

    parser = argparse.ArgumentParser(prog="tessera")
    commands = parser.add_subparsers(dest="command")
    SERVE_COMMAND.add_arguments(commands.add_parser(SERVE_COMMAND.name, help=SERVE_COMMAND.help))
    args = parser.parse_args(
        "serve --model reference/color-boxes --replicas 2 --max-batch-size 16 "
        "--batch-wait-ms 5 --token t --shadow reference/color-masks "
        "--allow-network 10.0.0.0/8 --monitoring /tmp/m.jsonl".split()
    )
    assert isinstance(SERVE_COMMAND, plugins.Command)
    assert plugins.commands()["serve"] is SERVE_COMMAND
    options = serve_options(args)
    assert options["num_replicas"] == 2 and options["max_batch_size"] == 16
    assert options["batch_wait_timeout_s"] == pytest.approx(0.005)
    assert options["token"] == "t" and options["shadow_model"] == "reference/color-masks"
    assert options["allow_private_urls"] == ("10.0.0.0/8",)
    assert options["monitoring_path"] == "/tmp/m.jsonl"


def test_client_plugins_take_urls_and_application_names():
    from engine import plugins
    from serve.plugins import HANDLE_CLIENT, HTTP_CLIENT

    assert isinstance(HTTP_CLIENT, plugins.ClientFactory)
    assert isinstance(HANDLE_CLIENT, plugins.ClientFactory)
    for url in ("http://127.0.0.1:8000", "https://models.example.com/", "HTTPS://host"):
        assert plugins.client_for(url) is HTTP_CLIENT, url
    assert plugins.client_for("tessera") is HANDLE_CLIENT
    with pytest.raises(plugins.PluginError, match="no installed client connects to 'ftp://h'"):
        plugins.client_for("ftp://h")


# --------------------------------------------------------------------------- the server
@dataclass
class Server:
    url: str
    monitoring: Path

    def post(self, path: str, headers: dict | None = None, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 60)
        return requests.post(self.url + path, headers={**AUTH, **(headers or {})}, **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, headers=AUTH, timeout=60, **kwargs)

    def lines(self) -> list[dict]:
        if not self.monitoring.exists():
            return []
        return [json.loads(line) for line in self.monitoring.read_text().splitlines()]


@pytest.fixture(scope="module")
def server(ray_session, tmp_path_factory):
    from ray import serve

    from serve.app import run

    port = free_port()
    monitoring = tmp_path_factory.mktemp("serve") / "monitoring.jsonl"
    run(
        "reference/color-boxes",
        host="127.0.0.1",
        port=port,
        token=TOKEN,
        max_request_bytes=MAX_BYTES,
        max_pixels=MAX_PIXELS,
        allow_private_urls=[f"{ALLOWED_HOST}/32"],
        monitoring_path=str(monitoring),
        shadow_model="reference/color-masks",
        max_batch_size=8,
        batch_wait_timeout_s=0.05,
    )
    yield Server(f"http://127.0.0.1:{port}", monitoring)
    serve.shutdown()


@pytest.fixture(scope="module")
def expected(reference_model):
    return reference_model.predict(IMAGES, progress=False)


def raw(server: Server, image: np.ndarray, **params) -> requests.Response:
    return server.post(
        "/predict", data=png_bytes(image), headers={"Content-Type": "image/png"}, params=params
    )


def test_raw_multipart_and_base64_predictions_equal_batch_prediction(server, expected):
    one = raw(server, IMAGES[0], name="first.png")
    assert one.status_code == 200, one.text
    body = one.json()
    assert (
        body["model"] == "reference/color-boxes" and body["class_names"] == expected[0].class_names
    )
    assert body["predictions"][0]["name"] == "first.png"
    assert_same(body["predictions"][0], expected[0])

    files = [("files", (f"s{i}.png", png_bytes(im), "image/png")) for i, im in enumerate(IMAGES)]
    many = server.post("/predict", files=files)
    assert many.status_code == 200, many.text
    assert [p["name"] for p in many.json()["predictions"]] == ["s0.png", "s1.png", "s2.png"]
    for payload, want in zip(many.json()["predictions"], expected):
        assert_same(payload, want)

    encoded = [base64.b64encode(png_bytes(im)).decode() for im in IMAGES]
    as_json = server.post(
        "/predict", json={"images": [{"image_base64": e, "name": "x.png"} for e in encoded]}
    )
    assert as_json.status_code == 200, as_json.text
    body = as_json.json()
    for payload, want in zip(body["predictions"], expected):
        assert_same(payload, want)
        rebuilt = prediction_from_json(payload, body["class_names"], body["task"])
        np.testing.assert_allclose(rebuilt.boxes, want.boxes)
        assert rebuilt.classes == want.classes
    single = server.post("/predict", json={"image_base64": encoded[1]})
    assert_same(single.json()["predictions"][0], expected[1])


def test_settings_reach_the_model_as_in_batch_prediction(server, reference_model):
    tiled = {"classes": ["red", "blue"], "sliding_window": True, "window_size": 64, "overlap": 0.25}
    want = reference_model.predict(IMAGES[:2], progress=False, **tiled)
    query = {**tiled, "classes": "red,blue", "sliding_window": "true"}
    files = [("file", (f"{i}.png", png_bytes(im), "image/png")) for i, im in enumerate(IMAGES[:2])]
    got = server.post("/predict", files=files, params=query)
    assert got.status_code == 200, got.text
    for payload, expected in zip(got.json()["predictions"], want):
        assert_same(payload, expected)

    resized = reference_model.predict(IMAGES[2], progress=False, img_size=(60, 80), conf=0.9)
    encoded = base64.b64encode(png_bytes(IMAGES[2])).decode()
    got = server.post(
        "/predict",
        json={"image_base64": encoded, "settings": {"img_size": [60, 80], "conf": 0.9}},
        params={"annotation": "true"},
    )
    payload = got.json()["predictions"][0]
    assert_same(payload, resized[0])
    assert len(payload["annotation"]["objects"]) == len(resized[0])


@needs_second_loopback
def test_url_inputs_are_fetched_only_where_allowed(server, expected):
    data = png_bytes(IMAGES[0])
    with image_server(ALLOWED_HOST, {"a.png": data}) as allowed:
        with image_server("127.0.0.1", {"a.png": data}) as refused:
            ok = server.post("/predict", json={"url": allowed.url("a.png")})
            assert ok.status_code == 200, ok.text
            payload = ok.json()["predictions"][0]
            assert payload["name"] == "a.png" and payload["url"] == allowed.url("a.png")
            assert_same(payload, expected[0])
            bad = {
                refused.url("a.png"): "loopback",
                f"http://localhost:{refused.port}/a.png": "loopback",
                allowed.redirect(refused.url("a.png")): "loopback",
                "http://10.1.2.3/a.png": "private",
                "http://169.254.169.254/latest/meta-data/": "link-local",
                "ftp://example.com/a.png": "http and https",
                "file:///etc/passwd": "http and https",
                allowed.url("missing.png"): "HTTP 404",
            }
            for url, why in bad.items():
                answer = server.post("/predict", json={"images": [{"url": url}]})
                assert answer.status_code == 400, (url, answer.text)
                assert why in answer.json()["error"], (url, answer.text)
            # one bad URL among good images is that image's error alone (issue 17: the
            # whole request answered 400 and the good image's result was lost)
            mixed = server.post(
                "/predict",
                json={"images": [{"url": allowed.url("a.png")}, {"url": refused.url("a.png")}]},
            )
            assert mixed.status_code == 200, mixed.text
            good, lost = mixed.json()["predictions"]
            assert_same(good, expected[0])
            assert "loopback" in lost["error"] and lost["boxes"] == [], lost
            assert lost["url"] == refused.url("a.png")
            assert refused.hosts == []


def test_concurrent_requests_are_batched(server, expected):
    from ray import serve

    def one(i: int) -> requests.Response:
        return raw(server, IMAGES[i % 3])

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(32)))
    for i, answer in enumerate(answers):
        assert answer.status_code == 200, answer.text
        assert_same(answer.json()["predictions"][0], expected[i % 3])
    handle = serve.get_deployment_handle("Predictor", app_name="tessera")
    stats = handle.stats.remote().result()
    assert 1 < max(stats["batch_sizes"]) <= 8, stats
    assert stats["max_batch_size"] == 8


def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(server):
    image = png_bytes(IMAGES[0])
    big = png_bytes(np.zeros((1000, 800, 3), np.uint8))  # 800k pixels > MAX_PIXELS
    as_png = {"Content-Type": "image/png"}

    def chunked():
        for _ in range(MAX_BYTES // 65536 + 2):
            yield b"\0" * 65536

    cases = [
        ("no token", "post", "/predict", {"data": image, "headers": as_png}, 401, None),
        ("wrong token", "post", "/predict", {"data": image, "headers": {"Authorization": "Bearer x"}}, 401, None),  # noqa: E501
        ("token on info", "get", "/info", {}, 401, None),
        ("body too large", "post", "/predict", {"data": b"\0" * (MAX_BYTES + 1)}, 413, "limit"),
        ("chunked too large", "post", "/predict", {"data": chunked()}, 413, "limit"),
        ("not an image", "post", "/predict", {"data": b"hello", "headers": as_png}, 400, "image"),
        ("empty body", "post", "/predict", {"data": b""}, 400, "empty"),
        ("bad base64", "post", "/predict", {"json": {"image_base64": "%%%"}}, 400, "base64"),
        ("base64 not image", "post", "/predict", {"json": {"image_base64": "aGVsbG8="}}, 400, "decode"),  # noqa: E501
        ("bad JSON", "post", "/predict", {"data": b"{oops", "headers": {"Content-Type": "application/json"}}, 400, "JSON"),  # noqa: E501
        ("unknown field", "post", "/predict", {"json": {"image_base64": "aGk=", "colour": 1}}, 400, "colour"),  # noqa: E501
        ("two sources", "post", "/predict", {"json": {"url": "http://x/a", "image_base64": "aGk="}}, 400, "exactly one"),  # noqa: E501
        ("unknown parameter", "post", "/predict", {"data": image, "params": {"confidence": 1}}, 400, "confidence"),  # noqa: E501
        ("conf out of range", "post", "/predict", {"data": image, "params": {"conf": 2}}, 400, "conf"),  # noqa: E501
        ("conf unreadable", "post", "/predict", {"data": image, "params": {"conf": "high"}}, 400, "conf"),  # noqa: E501
        ("unknown class", "post", "/predict", {"data": image, "params": {"classes": "purple"}}, 400, "purple"),  # noqa: E501
        ("bad JSON setting", "post", "/predict", {"json": {"image_base64": "aGk=", "settings": {"merge": "avg"}}}, 400, "merge"),  # noqa: E501
        ("max_pixels raised", "post", "/predict", {"data": image, "params": {"max_pixels": 10**9}}, 400, "max_pixels"),  # noqa: E501
        ("image above max_pixels", "post", "/predict", {"data": big, "headers": as_png}, 400, "max_pixels"),  # noqa: E501
        ("media type", "post", "/predict", {"data": b"x", "headers": {"Content-Type": "text/plain"}}, 415, "Content-Type"),  # noqa: E501
        ("bad form", "post", "/predict", {"data": b"junk", "headers": {"Content-Type": "multipart/form-data; boundary=b"}}, 400, "form"),  # noqa: E501
        ("form without file", "post", "/predict", {"files": {"photo": ("a.png", image)}}, 400, "photo"),  # noqa: E501
        ("empty image list", "post", "/predict", {"json": {"images": []}}, 400, "non-empty"),
        ("session without inputs", "post", "/sessions", {"json": {"inputs": []}}, 400, "inputs"),
        ("unknown session", "get", "/sessions/0123456789ab", {}, 404, "session"),
        ("unknown path", "get", "/nowhere", {}, 404, None),
    ]  # fmt: skip
    for label, method, path, kwargs, status, word in cases:
        headers = {**AUTH, **kwargs.pop("headers", {})}
        if label in ("no token", "token on info"):
            headers.pop("Authorization")
        answer = requests.request(method, server.url + path, headers=headers, timeout=60, **kwargs)
        assert answer.status_code == status, (label, answer.status_code, answer.text)
        error = answer.json()["error"]
        assert isinstance(error, str) and error, label
        assert "Traceback" not in answer.text, label
        if word is not None:
            assert word in error, (label, error)
    assert requests.get(server.url + "/healthz", timeout=10).json() == {"status": "ok"}
    assert raw(server, IMAGES[0]).status_code == 200


def test_info_and_docs(server):
    info = server.get("/info").json()
    assert info["model"] == "reference/color-boxes" and info["task"] == "detection"
    assert info["classes"][:2] == ["red", "green"] and info["input_size"] == [512, 512]
    assert info["settings"]["conf"] == 0.5 and "progress" not in info["settings"]
    assert info["limits"]["max_pixels"] == MAX_PIXELS
    assert info["shadow_model"] == "reference/color-masks"
    # the docs page and its schema open in a browser, which sends no token (issue 17);
    # the schema declares the token, so the page's "Authorize" sends it with its requests
    docs = requests.get(server.url + "/docs", timeout=30)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = requests.get(server.url + "/openapi.json", timeout=30).json()
    assert {"/predict", "/sessions", "/sessions/{session_id}/results"} <= set(spec["paths"])
    assert spec["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert spec["security"] == [{"bearer": []}]


def test_monitoring_logs_every_predict_request_and_the_shadow_beside_it(server, expected):
    good = server.post(
        "/predict",
        data=png_bytes(IMAGES[1]),
        headers={"Content-Type": "image/png", "X-Request-ID": "monitoring-check-1"},
    )
    assert good.headers["x-request-id"] == "monitoring-check-1"
    refused = requests.post(server.url + "/predict", data=b"x", timeout=30)
    broken = server.post("/predict", data=b"not an image")
    ids = {answer.headers["x-request-id"]: answer.status_code for answer in (good, refused, broken)}
    assert good.json()["request_id"] == good.headers["x-request-id"]

    def logged():
        lines = [line for line in server.lines() if line["request_id"] in ids]
        return lines if sum(line["kind"] == "shadow" for line in lines) == 1 else None

    lines = poll(logged, timeout=60)
    main = [line for line in lines if line["kind"] == "predict"]
    assert sorted((line["request_id"], line["status"]) for line in main) == sorted(ids.items())
    for line in main:
        assert line["latency_ms"] > 0 and line["model"] == "reference/color-boxes"
    by_status = {line["status"]: line for line in main}
    (image,) = by_status[200]["images"]
    assert image["objects"] == len(expected[1]) and image["error"] is None
    assert sum(image["classes"].values()) == len(expected[1])
    assert by_status[401]["error"] and by_status[400]["error"]
    (shadow,) = [line for line in lines if line["kind"] == "shadow"]
    assert shadow["request_id"] == good.headers["x-request-id"]
    assert shadow["model"] == "reference/color-masks" and shadow["status"] == "ok"
    assert shadow["latency_ms"] > 0 and shadow["images"][0]["objects"] == len(expected[1])


def test_sessions_end_to_end(server, expected):
    files = [("files", (f"s{i}.png", png_bytes(im), "image/png")) for i, im in enumerate(IMAGES)]
    started = server.post("/sessions", files=files, params={"conf": 0.5})
    assert started.status_code == 201, started.text
    session_id = started.json()["id"]
    status = server.get(f"/sessions/{session_id}").json()
    assert status["state"] in ("running", "done") and status["progress"]["total"] == 3

    predictions: list[dict] = []

    def pull():
        answer = server.get(f"/sessions/{session_id}/results", params={"max": 2, "wait": 2})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert len(body["predictions"]) <= 2 and body["error"] is None
        predictions.extend(body["predictions"])
        return body["done"]

    poll(pull, timeout=120, interval=0.1)
    assert [p["name"] for p in predictions] == ["s0.png", "s1.png", "s2.png"]
    for payload, want in zip(predictions, expected):
        assert payload["path"] is None and payload["source"] == "upload"
        assert_same(payload, want)
    assert server.get(f"/sessions/{session_id}").json()["state"] == "done"
    deleted = requests.delete(f"{server.url}/sessions/{session_id}", headers=AUTH, timeout=60)
    assert deleted.json() == {"id": session_id, "deleted": True}
    assert server.get(f"/sessions/{session_id}").status_code == 404
    assert server.get(f"/sessions/{session_id}/results").status_code == 404
    again = requests.delete(f"{server.url}/sessions/{session_id}", headers=AUTH, timeout=60)
    assert again.status_code == 404


def test_a_session_predicts_an_uploaded_video_frame_by_frame(server, reference_model, tmp_path):
    from videos import write_video

    video = tmp_path / "clip.mp4"
    write_video(video, 10, (W, H), fps=10, gop=5)
    want = reference_model.predict(str(video), stride=5, progress=False)
    files = [("file", ("clip.mp4", video.read_bytes(), "video/mp4"))]
    started = server.post("/sessions", files=files, data={"settings": '{"stride": 5}'})
    assert started.status_code == 201, started.text
    session_id = started.json()["id"]
    predictions: list[dict] = []

    def pull():
        body = server.get(f"/sessions/{session_id}/results", params={"wait": 2}).json()
        predictions.extend(body["predictions"])
        return body["done"]

    poll(pull, timeout=120, interval=0.1)
    assert [(p["name"], p["frame_index"], p["source"]) for p in predictions] == [
        ("clip.mp4", 0, "video"),
        ("clip.mp4", 5, "video"),
    ]
    for payload, expected in zip(predictions, want):
        assert_same(payload, expected)
    assert server.get(f"/sessions/{session_id}").json()["state"] == "done"
    requests.delete(f"{server.url}/sessions/{session_id}", headers=AUTH, timeout=60)


def test_a_killed_replica_is_restored(server, expected):
    import ray
    from ray import serve

    handle = serve.get_deployment_handle("Predictor", app_name="tessera")
    before = handle.stats.remote().result()
    ray.kill(ray.get_actor(before["replica"], namespace="serve"), no_restart=True)

    def answered():
        answer = raw(server, IMAGES[2])
        return answer.status_code == 200 and answer

    answer = poll(answered, timeout=90)
    assert_same(answer.json()["predictions"][0], expected[2])
    after = handle.stats.remote().result()
    assert after["replica"] != before["replica"] and after["pid"] != before["pid"]


def test_connect_gives_the_same_predictions_as_a_deployed_model(server, expected, tmp_path):
    import engine
    from engine.client import ModelClient, SessionClient
    from serve.client import RemoteError

    with pytest.raises(RemoteError, match="401"):
        engine.connect(server.url, token="wrong")
    remote = engine.connect(server.url, token=TOKEN)
    assert isinstance(remote, ModelClient) and remote.info.name == "reference/color-boxes"
    assert remote.classes == expected[0].class_names and remote.task == "detection"
    assert remote.server_info["limits"]["max_pixels"] == MAX_PIXELS
    files = []
    for i, image in enumerate(IMAGES):
        files.append(tmp_path / f"scene{i}.png")
        files[-1].write_bytes(png_bytes(image))
    for given in (IMAGES, [str(f) for f in files]):  # arrays, then files
        got = remote.predict(given)
        assert [p.index for p in got] == [0, 1, 2]
        for prediction, want in zip(got, expected):
            assert prediction.error is None
            np.testing.assert_allclose(prediction.boxes, want.boxes, atol=0.01)
            assert prediction.classes == want.classes
    assert got[1].name == "scene1.png" and got[1].path == str(files[1])
    missing = remote.predict([str(files[0]), str(tmp_path / "gone.png")])
    assert missing[0].error is None and missing[1].error.startswith("file not found")
    # settings are checked here as a local model checks them, before any request (issue
    # 17: each of these gave every Prediction an "HTTP 400" error, or was ignored)
    for bad, error, message in (
        ({"conf": 2}, ValueError, "conf must be between"),
        ({"foo": 1}, TypeError, "unknown option.* foo"),
        ({"classes": ["redd"]}, ValueError, "redd"),
        ({"upload": "create", "to": "acme"}, ValueError, "not supported by a remote model"),
    ):
        with pytest.raises(error, match=message):
            remote.predict(IMAGES, **bad)
    with pytest.raises(ValueError, match="does not export"):
        remote.predict_detached(IMAGES, out=tmp_path / "never")
    exported = remote.predict(IMAGES, out=tmp_path / "export", format="coco")
    assert exported.outputs["export:coco"]["written"] == 3
    dataset = json.loads((tmp_path / "export" / "coco_dataset.json").read_text())
    assert len(dataset["annotations"]) == sum(len(p) for p in expected)
    with pytest.raises(ValueError, match="already holds files"):
        remote.predict(IMAGES, out=tmp_path / "export")
    with remote.predict_detached([str(f) for f in files]) as session:
        assert isinstance(session, SessionClient)
        detached = list(session)
    assert len(detached) == 3
    remote.close()
    for prediction, want in zip(detached, expected):
        np.testing.assert_allclose(prediction.boxes, want.boxes, atol=0.01)


def test_connect_by_application_name_calls_the_deployment_handle(server, expected, tmp_path):
    import engine
    from engine.client import ModelClient, SessionClient
    from serve.client import HandleModel, RemoteError

    with pytest.raises(RemoteError, match="nowhere"):
        engine.connect("nowhere")
    local = engine.connect("tessera")
    assert isinstance(local, HandleModel) and local.classes == expected[0].class_names
    assert isinstance(local, ModelClient) and local.info.input_size == (512, 512)
    got = local.predict(IMAGES + [str(tmp_path / "gone.png")])
    assert [p.index for p in got] == [0, 1, 2, 3]
    for prediction, want in zip(got, expected):
        np.testing.assert_array_equal(prediction.boxes, want.boxes)
        np.testing.assert_array_equal(prediction.scores, want.scores)
        assert (prediction.height, prediction.width) == (H, W)
    assert got[3].error.startswith("file not found")
    with pytest.raises(ValueError, match="conf"):
        local.predict(IMAGES, conf=2.0)
    with local.predict_detached(IMAGES, batch_size=2) as session:
        assert isinstance(session, SessionClient)
        streamed = list(session)
    assert [len(p) for p in streamed] == [len(p) for p in expected]
    assert session.progress() == {"done": 3, "total": 3}
    assert session.status() == {"state": "done", "progress": session.progress(), "error": None,
                                "failed": []}  # fmt: skip
    local.close()
    with pytest.raises(RemoteError, match="closed"):
        local.predict(IMAGES)
