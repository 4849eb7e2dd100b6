"""The `Ingress` deployment: Tessera's HTTP API, in front of the `Predictor` deployment.

The FastAPI app is built per replica (``__serve_build_asgi_app__``), so its middleware
sees the server's configuration: the bearer token (every path but ``/healthz``), the
request size limit (``Content-Length`` first, then the body as it is read), and the
monitoring sink that gets one line per ``/predict`` request. Errors answer
``{"error": "..."}`` with a 4xx status; an unexpected failure answers a 500 with a short
message (the traceback goes to the replica's log, never to the client).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.detections import Detections
from engine.inference import ImageResult
from engine.item_prediction import item_prediction
from engine.prediction import Prediction
from engine.settings import SETTINGS, ModelInfo, PredictSettings, validate_settings
from engine.sources.decode import DEFAULT_MAX_PIXELS
from engine.sources.items import Item
from engine.worker import root_cause
from serve.inputs import (
    ImageInput,
    InputFailure,
    decode_inputs,
    fetch_inputs,
    parse_predict_request,
    parse_session_request,
    raise_failures,
)
from serve.monitoring import DEFAULT_MONITORING_PATH, MonitoringSink, image_summaries
from serve.platform_monitor import PlatformMonitor
from serve.schema import SERVE_SETTINGS, ApiError, prediction_to_json
from serve.security import URLPolicy, check_token
from serve.sessions import SessionInput, SessionRegistry

logger = logging.getLogger(__name__)

#: Most images one ``/predict`` request may carry.
DEFAULT_MAX_IMAGES = 64
#: Most inputs one session may be started with (URLs are downloaded by the ingress).
DEFAULT_MAX_SESSION_INPUTS = 1000
#: Longest ``url_timeout`` a request may ask for.
MAX_URL_TIMEOUT_S = 60.0
#: Most predictions one ``GET /sessions/{id}/results`` returns.
MAX_RESULTS_PER_CALL = 1000


@dataclass(frozen=True)
class ServerConfig:
    """What the ingress needs to know besides its handles (see `serve.app.build_app`).

    Attributes:
        model: The model spec, deployed again (lazily) for detached sessions.
        device: The model's device, for sessions.
        model_options: `resolve_model` options.
        token: Bearer token every endpoint but ``/healthz`` asks for; None for none.
        max_request_bytes: Largest request body (413 above).
        max_pixels: Largest image (width * height); requests may only lower it.
        allow_private_urls: True, or networks allowed for URL inputs (see `URLPolicy`).
        monitoring_path: The JSONL file of the monitoring sink.
        monitor: A platform that monitors the deployment (``--monitor NAME``), or None.
        monitor_options: Its options (`serve.platform_monitor.PlatformMonitor`).
        max_images: Most images per ``/predict`` request.
        max_batch_size: The Predictor's batch size (reported by ``/info``).
        batch_wait_timeout_s: The Predictor's batch wait (reported by ``/info``).
    """

    model: Any
    device: str = "cpu"
    model_options: dict[str, Any] | None = None
    token: str | None = None
    max_request_bytes: int = 50 * 2**20
    max_pixels: int = DEFAULT_MAX_PIXELS
    allow_private_urls: bool | tuple[str, ...] = False
    monitoring_path: str = DEFAULT_MONITORING_PATH
    monitor: str | None = None
    monitor_options: dict[str, Any] | None = None
    max_images: int = DEFAULT_MAX_IMAGES
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.01


@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
@serve.ingress()
class Ingress:
    """Parse and check HTTP requests, and predict through the Predictor's handle.

    Args:
        predictor: Handle of the `serve.predictor.Predictor` deployment.
        config: The server's configuration.
        shadow: Handle of a second Predictor (the shadow model), or None.
    """

    def __init__(self, predictor: Any, config: ServerConfig, shadow: Any = None) -> None:
        self.predictor = predictor
        self.shadow = shadow
        self.config = config
        self.policy = URLPolicy.from_option(config.allow_private_urls)
        self.sink = MonitoringSink(config.monitoring_path)
        self.platform_monitor = (
            PlatformMonitor(config.monitor, config.monitor_options) if config.monitor else None
        )
        self.sessions = SessionRegistry(self._deploy_for_sessions)
        self._infos: dict[str, ModelInfo] = {}
        self._background: set[asyncio.Task] = set()

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Build this replica's FastAPI app (Serve calls it once the replica is up)."""
        return build_api(self)

    def __del__(self) -> None:
        self.sessions.close()
        if self.platform_monitor is not None:
            self.platform_monitor.close(timeout=5.0)

    # ------------------------------------------------------------------ model
    async def model_info(self, which: str = "main") -> ModelInfo:
        """The main (or ``"shadow"``) model's description, asked of its replicas once."""
        if which not in self._infos:
            handle = self.predictor if which == "main" else self.shadow
            self._infos[which] = ModelInfo.from_json(await handle.info.remote())
        return self._infos[which]

    def validate(self, options: dict[str, Any], info: ModelInfo) -> PredictSettings:
        """Validate a request's settings against the model and the server's limits.

        Raises:
            ApiError: 400 naming the bad setting.
        """
        options = {"max_pixels": self.config.max_pixels, **options, "progress": False}
        try:
            settings = validate_settings(options, info)
        except (TypeError, ValueError) as exc:
            raise ApiError(400, f"bad setting: {exc}") from exc
        if settings.general.max_pixels > self.config.max_pixels:
            raise ApiError(
                400, f"max_pixels cannot be above the server's limit of {self.config.max_pixels}"
            )
        if settings.general.url_timeout > MAX_URL_TIMEOUT_S:
            raise ApiError(400, f"url_timeout cannot be above {MAX_URL_TIMEOUT_S} s")
        return settings

    def _deploy_for_sessions(self) -> Any:
        import engine

        options = dict(self.config.model_options or {})
        return engine.deploy(self.config.model, device=self.config.device, **options)

    # ------------------------------------------------------------------ /predict
    async def predict(self, request: Request) -> dict[str, Any]:
        """Answer ``POST /predict`` (see `serve.app` for the contract)."""
        # 1) body and what it asks for
        body = await read_body(request, self.config.max_request_bytes)
        parsed = parse_predict_request(
            body, request.headers.get("content-type"), request.query_params.multi_items()
        )
        if len(parsed.inputs) > self.config.max_images:
            raise ApiError(
                400,
                f"{len(parsed.inputs)} images in one request; at most {self.config.max_images}",
            )
        # 2) settings, checked before anything is fetched or decoded
        info = await self.model_info()
        settings = self.validate(parsed.options, info)
        # 3) inputs -> images; an input that gives none is that image's error alone
        data = await fetch_inputs(
            parsed.inputs, self.policy, settings.general.url_timeout, self.config.max_request_bytes
        )
        decoded = await decode_inputs(parsed.inputs, data, settings.general.max_pixels)
        good = [i for i, image in enumerate(decoded) if not isinstance(image, InputFailure)]
        if not good:  # nothing to predict: the request itself is bad
            raise_failures(decoded)
        images = [decoded[i] for i in good]
        # 4) one Predictor call per image: Serve batches them with other requests' images
        try:
            results = await asyncio.gather(
                *(self.predictor.predict.remote(image, settings) for image in images)
            )
        except Exception as exc:
            raise ApiError(503, f"the model is unavailable, retry: {root_cause(exc)}") from exc
        answered = dict(zip(good, results))
        predictions = [
            _prediction(item, outcome, answered[index], index, info)
            if index in answered
            else _failed_prediction(item, outcome, index, info)
            for index, (item, outcome) in enumerate(zip(parsed.inputs, decoded))
        ]
        request.state.images = image_summaries(predictions)
        # 5) the shadow model gets the same images, off the request path; the platform
        #    monitor gets them (with the shadow's predictions, once they are known) queued
        request_id = request.state.request_id
        predicted = [predictions[i] for i in good]
        predicted_data = [data[i] for i in good]
        if self.platform_monitor is not None:
            await self._start_monitor(info)
        if self.shadow is not None:
            self._in_background(
                self._shadow(request_id, images, parsed.options, predicted, predicted_data)
            )
        elif self.platform_monitor is not None:
            self.platform_monitor.submit(request_id, predicted, predicted_data)
        return {
            "model": info.name,
            "task": info.task,
            "class_names": list(info.classes),
            "request_id": request.state.request_id,
            "predictions": [prediction_to_json(p, parsed.annotation) for p in predictions],
        }

    async def _start_monitor(self, info: ModelInfo) -> None:
        monitor = self.platform_monitor
        if monitor is None or monitor.started:
            return
        shadow = list((await self.model_info("shadow")).classes) if self.shadow else None
        await asyncio.to_thread(monitor.start, list(info.classes), info.task, shadow)

    async def _shadow(
        self,
        request_id: str,
        images: list[Any],
        options: dict[str, Any],
        predictions: list[Prediction] | None = None,
        data: list[bytes] | None = None,
    ) -> None:
        started = time.perf_counter()
        shadow_predictions: list[Prediction] | None = None
        record: dict[str, Any] = {"kind": "shadow", "request_id": request_id}
        try:
            info = await self.model_info("shadow")
            record["model"] = info.name
            try:
                settings = self.validate(options, info)
            except ApiError as exc:  # e.g. a class the shadow does not know
                record["settings_note"] = f"default settings used: {exc.message}"
                settings = self.validate({}, info)
            results = await asyncio.gather(
                *(self.shadow.predict.remote(image, settings) for image in images)
            )
            shadow_predictions = [
                _prediction(ImageInput(f"image_{i}"), image, result, i, info)
                for i, (image, result) in enumerate(zip(images, results))
            ]
            record.update(status="ok", images=image_summaries(shadow_predictions))
        except Exception as exc:
            record.update(status="error", error=root_cause(exc))
        record["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
        self.sink.write(record)
        if self.platform_monitor is not None and predictions is not None:
            self.platform_monitor.submit(request_id, predictions, data or [], shadow_predictions)

    def _in_background(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def log_request(self, request: Request, status: int, latency_ms: float) -> None:
        """Write the monitoring line of a ``/predict`` request."""
        state = request.state
        self.sink.write(
            {
                "kind": "predict",
                "request_id": getattr(state, "request_id", None),
                "model": self._model_name(),
                "status": status,
                "latency_ms": round(latency_ms, 2),
                "images": getattr(state, "images", []),
                "error": getattr(state, "error", None),
            }
        )

    def _model_name(self) -> str | None:
        if "main" in self._infos:
            return self._infos["main"].name
        return self.config.model if isinstance(self.config.model, str) else None

    # ------------------------------------------------------------------ /sessions
    async def start_session(self, request: Request) -> dict[str, Any]:
        """Answer ``POST /sessions``."""
        body = await read_body(request, self.config.max_request_bytes)
        parsed = parse_session_request(
            body, request.headers.get("content-type"), request.query_params.multi_items()
        )
        if len(parsed.inputs) > DEFAULT_MAX_SESSION_INPUTS:
            raise ApiError(400, f"at most {DEFAULT_MAX_SESSION_INPUTS} inputs per session")
        info = await self.model_info()
        settings = self.validate(parsed.options, info)
        data = await fetch_inputs(
            parsed.inputs, self.policy, settings.general.url_timeout, self.config.max_request_bytes
        )
        raise_failures(data)  # a session starts with every input it names, or not at all
        inputs = [SessionInput(i.name, d, i.url) for i, d in zip(parsed.inputs, data)]
        options = {"max_pixels": settings.general.max_pixels, **parsed.options}
        try:
            session_id = await self.sessions.start(inputs, {**options, "ordered": parsed.ordered})
        except (TypeError, ValueError) as exc:
            raise ApiError(400, f"bad setting: {exc}") from exc
        return {"id": session_id}

    def known_session(self, session_id: str) -> None:
        """Raise a 404 `ApiError` unless this replica holds the session."""
        if session_id not in self.sessions:
            raise ApiError(404, f"no session {session_id!r}")

    async def session_results(self, session_id: str, max_results: int, wait: float) -> dict:
        """Answer ``GET /sessions/{id}/results``."""
        self.known_session(session_id)
        if not 1 <= max_results <= MAX_RESULTS_PER_CALL:
            raise ApiError(400, f"max must be between 1 and {MAX_RESULTS_PER_CALL}")
        if not 0 <= wait <= 30:
            raise ApiError(400, "wait must be between 0 and 30 seconds")
        info = await self.model_info()
        predictions, done, error = await self.sessions.results(session_id, max_results, wait)
        return {
            "id": session_id,
            "model": info.name,
            "task": info.task,
            "class_names": list(info.classes),
            "predictions": [prediction_to_json(p) for p in predictions],
            "done": done,
            "error": error,
        }


def _prediction(
    item: ImageInput, image: Any, result: ImageResult, index: int, info: ModelInfo
) -> Prediction:
    origin = Item(index=index, source=item.source, name=item.name, url=item.url)
    return item_prediction(origin, result, image.shape[:2], info.classes, info.task)


def _failed_prediction(
    item: ImageInput, failure: InputFailure, index: int, info: ModelInfo
) -> Prediction:
    """The answer for an input that gave no image: no objects, and why in ``error``."""
    return Prediction(
        Detections.empty(),
        list(info.classes),
        source=item.source,
        name=item.name,
        url=item.url,
        index=index,
        error=failure.message,
        task=info.task,
    )


async def read_body(request: Request, limit: int) -> bytes:
    """Read the request body, refusing it (413) as soon as it grows above ``limit`` bytes."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"the request body is above the limit of {limit} bytes")
    return bytes(body)


def error_response(status: int, message: str, headers: dict[str, str] | None = None):
    """The server's error answer: ``{"error": message}`` with ``status``."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


# --------------------------------------------------------------------------- the app
#: Paths answered without the bearer token: liveness, and the API's documentation (the
#: docs page and its schema hold no data; every endpoint they describe needs the token).
OPEN_PATHS = frozenset({"/healthz", "/docs", "/docs/oauth2-redirect", "/openapi.json"})


def _document_the_token(app: FastAPI) -> None:
    """Declare the bearer token in the OpenAPI schema.

    The docs page's "Authorize" then asks for it and sends it with the requests tried
    from the page.
    """
    from fastapi.openapi.utils import get_openapi

    def schema() -> dict[str, Any]:
        if app.openapi_schema is None:
            built = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            built.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"}
            }
            built["security"] = [{"bearer": []}]
            app.openapi_schema = built
        return app.openapi_schema

    app.openapi = schema  # type: ignore[method-assign]


def build_api(server: Ingress) -> FastAPI:
    """Build the FastAPI app of one ingress replica (routes, guards, error handlers)."""
    config = server.config
    app = FastAPI(
        title="Tessera prediction server",
        description="Online predictions of a Tessera model (see serve/app.py for the contract).",
        version="1",
    )
    if config.token is not None:
        _document_the_token(app)

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        started = time.perf_counter()
        request.state.request_id = _request_id(request)
        length = request.headers.get("content-length")
        if request.url.path not in OPEN_PATHS and not check_token(
            request.headers.get("authorization"), config.token
        ):
            request.state.error = "missing or wrong bearer token"
            response = error_response(
                401, request.state.error, headers={"WWW-Authenticate": "Bearer"}
            )
        elif length is not None and not length.strip().isdigit():
            request.state.error = f"bad Content-Length {length!r}"
            response = error_response(400, request.state.error)
        elif length is not None and int(length) > config.max_request_bytes:
            request.state.error = (
                f"the request body ({length} bytes) is above the limit of "
                f"{config.max_request_bytes} bytes"
            )
            response = error_response(413, request.state.error)
        else:
            try:
                response = await call_next(request)
            except Exception as exc:  # answered without a traceback; logged with one
                logger.exception("request %s failed", request.state.request_id)
                request.state.error = f"internal server error: {type(exc).__name__}"
                response = error_response(500, f"{request.state.error} (see the server log)")
        if request.url.path == "/predict" and request.method == "POST":
            server.log_request(request, response.status_code, _ms_since(started))
        return response

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        request.state.error = exc.message
        return error_response(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        request.state.error = str(exc.detail)
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        )
        request.state.error = problems
        return error_response(400, problems or "invalid request")

    @app.post("/predict", summary="Predict images", openapi_extra=_PREDICT_DOCS)
    async def predict(request: Request) -> dict[str, Any]:
        return await server.predict(request)

    @app.get("/info", summary="The model and the server's limits")
    async def info() -> dict[str, Any]:
        model = await server.model_info()
        defaults = validate_settings({}, model).describe(model.classes)
        return {
            "model": model.name,
            **model.to_json(),
            "settings": {k: v for k, v in defaults.items() if k in SERVE_SETTINGS},
            "limits": {
                "max_request_bytes": config.max_request_bytes,
                "max_pixels": config.max_pixels,
                "max_images": config.max_images,
            },
            "batching": {
                "max_batch_size": config.max_batch_size,
                "batch_wait_timeout_s": config.batch_wait_timeout_s,
            },
            "shadow_model": (await server.model_info("shadow")).name if server.shadow else None,
            "monitor": server.platform_monitor.stats() if server.platform_monitor else None,
        }

    @app.get("/healthz", summary="Liveness (no token needed)")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post(
        "/sessions", status_code=201, summary="Start a detached job", openapi_extra=_SESSION_DOCS
    )
    async def start_session(request: Request) -> dict[str, Any]:
        return await server.start_session(request)

    @app.get("/sessions/{session_id}", summary="A job's state and progress")
    async def session_status(session_id: str) -> dict[str, Any]:
        server.known_session(session_id)
        return await server.sessions.status(session_id)

    @app.get("/sessions/{session_id}/results", summary="Pull a job's next predictions")
    async def session_results(session_id: str, max: int = 100, wait: float = 1.0) -> dict:
        return await server.session_results(session_id, max, wait)

    @app.delete("/sessions/{session_id}", summary="Stop a job and forget it")
    async def delete_session(session_id: str) -> dict[str, Any]:
        server.known_session(session_id)
        await server.sessions.delete(session_id)
        return {"id": session_id, "deleted": True}

    return app


def _request_id(request: Request) -> str:
    """Serve's request id (the client's ``X-Request-ID`` when it sent one)."""
    return request.headers.get("x-request-id", "")[:200] or uuid.uuid4().hex


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


# --------------------------------------------------------------------------- OpenAPI
_SETTING_PARAMETERS = [
    {
        "name": spec.name,
        "in": "query",
        "required": False,
        "description": spec.help,
        "schema": {"type": "string"},
    }
    for spec in SETTINGS
    if spec.name in SERVE_SETTINGS
]

_IMAGE_ITEM = {
    "type": "object",
    "properties": {
        "url": {"type": "string", "format": "uri"},
        "image_base64": {"type": "string"},
        "name": {"type": "string"},
    },
}

_PREDICT_DOCS = {
    "parameters": [
        *_SETTING_PARAMETERS,
        {
            "name": "annotation",
            "in": "query",
            "schema": {"type": "boolean"},
            "description": "add each prediction's annotation (default platform format)",
        },
        {
            "name": "name",
            "in": "query",
            "schema": {"type": "string"},
            "description": "name of a raw-body image",
        },
    ],
    "requestBody": {
        "required": True,
        "content": {
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "settings": {"type": "string", "description": "JSON settings object"},
                    },
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        **_IMAGE_ITEM["properties"],
                        "images": {"type": "array", "items": _IMAGE_ITEM},
                        "settings": {"type": "object"},
                        "annotation": {"type": "boolean"},
                    },
                }
            },
        },
    },
}

_SESSION_DOCS = {
    "parameters": [
        *_SETTING_PARAMETERS,
        {"name": "ordered", "in": "query", "schema": {"type": "boolean"}},
    ],
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": _PREDICT_DOCS["requestBody"]["content"]["multipart/form-data"],
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "inputs": {"type": "array", "items": {}},
                        "settings": {"type": "object"},
                        "ordered": {"type": "boolean"},
                    },
                }
            },
        },
    },
}
