"""Tessera's online-prediction server on Ray Serve: `build_app`, `run`, `app_builder`.

Two deployments: ``Predictor`` (`serve.predictor`: the loaded model, batching calls from
concurrent requests) and ``Ingress`` (`serve.ingress`: the HTTP API), plus ``Shadow``, a
second Predictor, when a shadow model is given. Every replica reserves no CPU (the node's
CPUs stay with Ray Data and the model's own threads); a GPU replica reserves
``gpus_per_replica``.

HTTP contract (every answer is JSON; every path but ``/healthz`` needs
``Authorization: Bearer <token>`` when the server has a token):

``POST /predict``
    Body: one image (``image/*``, ``application/octet-stream`` or no type; query ``name``
    names it); or ``multipart/form-data`` with files under ``file``/``files`` (and an
    optional JSON ``settings`` field); or JSON ``{"url": ...}``, ``{"image_base64": ...}``
    (each with an optional ``"name"``) or ``{"images": [{"url"|"image_base64", "name"?},
    ...]}``, with optional ``"settings": {...}`` and ``"annotation": bool``.
    Query: any setting of `serve.schema.SERVE_SETTINGS` (conf, classes=a,b, img_size=N or
    H,W, sliding_window, window_size, overlap, merge, merge_metric, merge_threshold,
    class_agnostic, full_image, max_pixels, url_timeout, batch_size...), ``annotation``.
    JSON settings override query settings. Answer 200::

        {"model": str, "task": str, "class_names": [str], "request_id": str,
         "predictions": [<prediction>, ...]}     # one per image, in request order

    where <prediction> is described in `serve.schema` (name, width, height, boxes,
    scores, class_idxs, classes, masks, keypoints, error, ...; ``annotation`` with
    ``annotation=true``). `engine.prediction_json.prediction_from_json` rebuilds a
    `Prediction`.
``POST /sessions``
    JSON ``{"inputs": [url | {"url"|"image_base64", "name"?}, ...], "settings": {...},
    "ordered": bool}`` or form data with files (images or videos) under
    ``file``/``files``; settings also as query parameters. Answer 201 ``{"id": str}``.
``GET /sessions/{id}``
    ``{"id", "state": "running"|"done"|"stopped"|"error", "progress": {"done", "total"},
    "message", "error", "failed"}``.
``GET /sessions/{id}/results?max=100&wait=1.0``
    ``{"id", "model", "task", "class_names", "predictions": [<prediction>...],
    "done": bool, "error": str|null}``; at most ``max`` (1..1000), waiting up to ``wait``
    seconds (0..30) for the first. Pull until ``done``.
``DELETE /sessions/{id}``
    Stops and forgets the session: ``{"id", "deleted": true}``. Unknown ids answer 404.
``GET /info``
    ``{"model", "name", "task", "classes", "default_conf", "input_size", "settings",
    "limits": {"max_request_bytes", "max_pixels", "max_images"}, "batching",
    "shadow_model"}``: ``model`` is the model's name; ``name`` to ``input_size`` are
    `engine.settings.ModelInfo.to_json` (what `engine.connect` reads back).
``GET /healthz``
    ``{"status": "ok"}``, without a token. OpenAPI at ``/docs`` and ``/openapi.json``.

Errors answer ``{"error": "<message>"}``: 400 malformed input (not an image, bad base64,
bad JSON, unknown field or parameter, bad setting, image above ``max_pixels``, URL
refused or not fetchable, too many images), 401 missing or wrong token, 404 unknown
session or path, 413 body above ``max_request_bytes``, 415 unsupported Content-Type,
503 model replica unavailable (retry), 500 unexpected (no traceback). Every answer carries
Serve's ``X-Request-ID`` header (the client's own, when it sends one); it is the
``request_id`` of ``/predict`` answers and of the monitoring lines (`serve.monitoring`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ray import serve
from ray.serve import Application

from engine.sources.decode import DEFAULT_MAX_PIXELS
from serve.ingress import DEFAULT_MAX_IMAGES, Ingress, ServerConfig
from serve.monitoring import DEFAULT_MONITORING_PATH
from serve.platform_monitor import check_monitor
from serve.predictor import Predictor
from serve.security import URLPolicy

#: The application's default name on the Serve cluster.
DEFAULT_APP_NAME = "tessera"
#: Environment variable read for the bearer token when none is given.
TOKEN_ENV = "TESSERA_SERVE_TOKEN"


def build_app(
    model: Any,
    device: str = "cpu",
    num_replicas: int = 1,
    autoscaling_config: dict[str, Any] | None = None,
    gpus_per_replica: float = 0,
    max_batch_size: int = 8,
    batch_wait_timeout_s: float = 0.01,
    token: str | None = None,
    max_request_bytes: int = 50 * 2**20,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allow_private_urls: bool | list[str] | tuple[str, ...] = False,
    monitoring_path: str | None = None,
    shadow_model: Any = None,
    model_options: dict[str, Any] | None = None,
    max_images: int = DEFAULT_MAX_IMAGES,
    monitor: str | None = None,
    monitor_options: dict[str, Any] | None = None,
) -> Application:
    """Build the Serve application: Predictor (+ Shadow) replicas behind the Ingress.

    Args:
        model: A zoo name, checkpoint path, or `ModelAdapter` (instance or class).
        device: "cpu", "cuda" (a GPU per replica, placed by Ray) or "cuda:N".
        num_replicas: Predictor replicas (ignored with ``autoscaling_config``).
        autoscaling_config: Serve autoscaling of the Predictor, e.g.
            ``{"min_replicas": 1, "max_replicas": 4}``.
        gpus_per_replica: GPUs each Predictor replica reserves (fractions allowed);
            "cuda" with 0 reserves 1.
        max_batch_size: Most images the Predictor runs in one batch.
        batch_wait_timeout_s: Longest wait for a batch to fill.
        token: Bearer token every endpoint but ``/healthz`` requires; None for none.
        max_request_bytes: Largest request body (413 above).
        max_pixels: Largest image (width * height) accepted.
        allow_private_urls: Fetch URLs that point to loopback, private or link-local
            addresses (True), or only to these networks (CIDR strings).
        monitoring_path: The monitoring JSONL file (default
            ``~/.tessera/serve/monitoring.jsonl``).
        shadow_model: A second model spec that gets every image off the request path;
            its predictions and latency go to the monitoring file.
        model_options: `resolve_model` options (pretrained, weights, classes, ...).
        max_images: Most images per ``/predict`` request.
        monitor: A platform that monitors the deployment (``"picsellia"``): every
            answered image (with the shadow's prediction, when one runs) is queued for it
            and sent by sender actors, off the request path
            (`serve.platform_monitor.PlatformMonitor`). Credentials come from the
            environment (e.g. ``PICSELLIA_API_TOKEN``).
        monitor_options: The monitor's options (``deployment_id``...; runtime ones:
            ``queue_size``, ``num_senders``, ``requests_per_second``, ``max_in_flight``,
            ``dead_letter``; ``source`` and ``tags`` for every record).

    Returns:
        The application, for `run` or ``serve.run``.

    Raises:
        ValueError: A bad device, replica count, batch setting or network; an unknown
            monitor, or one without credentials.

    Example:
        >>> app = build_app("reference/color-boxes", max_batch_size=16)  # doctest: +SKIP
        >>> serve.run(app, name="tessera", route_prefix="/")              # doctest: +SKIP
    """
    _check_positive("max_batch_size", max_batch_size, integer=True)
    _check_positive("max_request_bytes", max_request_bytes, integer=True)
    _check_positive("max_pixels", max_pixels, integer=True)
    _check_positive("max_images", max_images, integer=True)
    if isinstance(batch_wait_timeout_s, bool) or not batch_wait_timeout_s >= 0:
        raise ValueError(f"batch_wait_timeout_s must be >= 0, got {batch_wait_timeout_s!r}")
    if isinstance(allow_private_urls, (list, tuple)):
        allow_private_urls = tuple(str(n) for n in allow_private_urls)
    URLPolicy.from_option(allow_private_urls)  # a bad network fails here, not in a replica
    if monitor_options is not None and not isinstance(monitor_options, Mapping):
        raise ValueError(f"monitor_options must be a mapping, got {monitor_options!r}")
    if monitor_options and monitor is None:
        raise ValueError("monitor_options were given without a monitor (e.g. monitor='picsellia')")
    check_monitor(monitor, dict(monitor_options or {}))
    replica_device, actor_options = replica_placement(device, gpus_per_replica)
    scaling: dict[str, Any] = {"autoscaling_config": autoscaling_config}
    if autoscaling_config is None:
        _check_positive("num_replicas", num_replicas, integer=True)
        scaling = {"num_replicas": num_replicas}
    predictor_options = {
        "ray_actor_options": actor_options,
        "max_ongoing_requests": max(32, 4 * max_batch_size),
        "health_check_period_s": 2.0,
        "health_check_timeout_s": 30.0,
    }
    batching = {"max_batch_size": max_batch_size, "batch_wait_timeout_s": batch_wait_timeout_s}
    predictor = Predictor.options(**predictor_options, **scaling).bind(
        model, replica_device, model_options, **batching
    )
    shadow = None
    if shadow_model is not None:
        shadow = Predictor.options(name="Shadow", **predictor_options, num_replicas=1).bind(
            shadow_model, replica_device, None, **batching
        )
    config = ServerConfig(
        model=model,
        device=device,
        model_options=model_options,
        token=token,
        max_request_bytes=max_request_bytes,
        max_pixels=max_pixels,
        allow_private_urls=allow_private_urls,
        monitoring_path=monitoring_path or DEFAULT_MONITORING_PATH,
        monitor=monitor,
        monitor_options=dict(monitor_options or {}),
        max_images=max_images,
        **batching,
    )
    return Ingress.bind(predictor, config, shadow)


def replica_placement(device: str, gpus_per_replica: float = 0) -> tuple[str, dict[str, Any]]:
    """Return the device a Predictor replica loads its model on, and its actor options.

    Example:
        >>> replica_placement("cuda")
        ('cuda:0', {'num_cpus': 0, 'num_gpus': 1})
        >>> replica_placement("cpu")
        ('cpu', {'num_cpus': 0})
    """
    if not isinstance(device, str) or not (
        device in ("cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())
    ):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if isinstance(gpus_per_replica, bool) or not gpus_per_replica >= 0:
        raise ValueError(f"gpus_per_replica must be >= 0, got {gpus_per_replica!r}")
    options: dict[str, Any] = {"num_cpus": 0}
    if device == "cpu":
        if gpus_per_replica:
            raise ValueError("gpus_per_replica needs device='cuda'")
        return "cpu", options
    if device == "cuda" or gpus_per_replica:
        options["num_gpus"] = gpus_per_replica or 1
        return "cuda:0", options
    # "cuda:N" outside Ray's GPU accounting, as engine.deploy does it
    options["runtime_env"] = {"env_vars": {"CUDA_VISIBLE_DEVICES": device[5:]}}
    return "cuda:0", options


def run(
    model: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    name: str = DEFAULT_APP_NAME,
    blocking: bool = False,
    **options: Any,
) -> Any:
    """Build the application and run it on Serve, answering HTTP on ``host:port`` at "/".

    Ray must already be connected (`engine.runtime.ensure_ray`). Serve's HTTP options are
    cluster-wide and set when Serve starts: if Serve already runs, its host and port stay.

    Args:
        model: As for `build_app`.
        host: The address the HTTP proxy listens on.
        port: Its port.
        name: The application's name on the cluster.
        blocking: Block until interrupted (as ``serve run`` does).
        **options: `build_app`'s other arguments.

    Returns:
        The handle of the Ingress deployment.

    Example:
        >>> run("reference/color-boxes", port=8000, token="s3cret")  # doctest: +SKIP
    """
    app = build_app(model, **options)
    serve.start(http_options={"host": host, "port": int(port)})
    return serve.run(app, name=name, route_prefix="/", blocking=blocking)


def app_builder(args: dict[str, Any]) -> Application:
    """Application builder for Serve config files (``import_path: serve.app:app_builder``).

    ``args`` holds `build_app`'s arguments (``model`` is required); the token, when not
    given, is read from the ``TESSERA_SERVE_TOKEN`` environment variable.

    Example:
        >>> app = app_builder({"model": "reference/color-boxes", "max_batch_size": 4})
        >>> type(app).__name__
        'Application'
    """
    if not isinstance(args, Mapping) or "model" not in args:
        raise ValueError("the application's args need a model, e.g. {model: reference/color-boxes}")
    options = dict(args)
    if options.get("token") is None and os.environ.get(TOKEN_ENV):
        options["token"] = os.environ[TOKEN_ENV]
    return build_app(**options)


def _check_positive(name: str, value: Any, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value < 1:
        raise ValueError(f"{name} must be a positive {'integer' if integer else 'number'}")
