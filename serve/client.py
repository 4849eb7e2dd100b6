"""The `engine.client.ModelClient`s behind `engine.connect`: over HTTP, or by Serve handle.

``engine.connect("http://host:8000", token=...)`` gives a `RemoteModel`, which speaks the
server's HTTP API (serve/app.py): each image goes to ``POST /predict`` (several at once, so
the server batches them), a video or a detached job goes through ``/sessions``.

``engine.connect("tessera")`` (an application's name, from inside the Ray cluster) gives
a `HandleModel`, which calls the application's `Predictor` deployment through a Serve
DeploymentHandle: images are decoded here and each is one handle call, which Serve
batches with the others.

Both resolve inputs here exactly as `ModelAPI.predict` resolves them (paths, folders,
URLs, PIL images, arrays) and answer with `Prediction` objects with the same origin
fields, made by `engine.item_prediction.item_prediction`. `serve.plugins` registers the
two with `engine.plugins`.
"""

from __future__ import annotations

import base64
import io
import json
import queue
import threading
import time
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
from PIL import Image

from engine import plugins
from engine.inference import ImageResult
from engine.item_prediction import decode_items, item_prediction, predict_decoded
from engine.outputs import OutputSpec, output_spec
from engine.prediction import Prediction
from engine.prediction_json import prediction_from_json
from engine.results import PredictionResults
from engine.settings import ModelInfo, PredictSettings, validate_settings
from engine.sources.items import Item
from engine.sources.resolve import resolve_input

__all__ = ["HandleModel", "HandleSession", "RemoteError", "RemoteModel", "RemoteSession"]

#: Options of `predict` that only concern this process (not sent to a server).
_LOCAL_OPTIONS = ("progress", "recursive")


#: `ModelAPI.predict` keywords a remote model cannot honour: refused before any request.
_REFUSED_OPTIONS = ("upload", "to", "upload_options", "job_id", "journal_dir", "stream")
#: The keywords of a local export, which a remote model writes in this process.
_EXPORT_OPTIONS = ("out", "format", "exist_ok")


class RemoteError(RuntimeError):
    """The server refused a request or could not be reached (the message says why)."""


def _checked_options(
    options: dict[str, Any], info: ModelInfo, detached: bool
) -> tuple[dict[str, Any], OutputSpec | None]:
    """Check a remote call's keywords here, as a local model checks them.

    Returns:
        ``(settings, export)``: the settings (validated by `validate_settings` against
        the served model's classes, and sent as given), and the local export asked for
        with ``out=``/``format=`` (None without one).

    Raises:
        TypeError: An unknown keyword (as a local model raises it).
        ValueError: A bad setting (the same errors as a local model), a keyword a
            remote model cannot honour, or an export from a detached call.
    """
    refused = sorted(k for k in _REFUSED_OPTIONS if options.get(k) not in (None, False))
    if refused:
        raise ValueError(
            f"{', '.join(refused)}: not supported by a remote model (engine.connect); "
            "deploy the model locally (engine.deploy) for uploads and resumable jobs"
        )
    export = {k: options.pop(k) for k in _EXPORT_OPTIONS if k in options}
    for key in _REFUSED_OPTIONS:
        options.pop(key, None)
    validate_settings(dict(options), info)  # raises as a local model does
    if not export or (export.get("out") is None and export.get("format") is None):
        return options, None
    if detached:
        raise ValueError(
            "out=/format=: a remote model's detached session does not export; use "
            "predict(..., out=...), or write the session's predictions yourself"
        )
    spec = output_spec(
        out=export.get("out"), format=export.get("format"), exist_ok=export.get("exist_ok", False)
    )
    return options, spec


def _export(spec: OutputSpec | None, predictions: list[Prediction], info: ModelInfo) -> dict:
    """Write ``predictions`` into the export ``spec`` names; return ``{name: summary}``."""
    if spec is None:
        return {}
    exporter = plugins.exporter(spec.format)(Path(spec.out), list(info.classes), info.task)
    with exporter:
        for prediction in predictions:
            exporter.write(prediction)
    return {f"export:{spec.format}": exporter.close()}


class RemoteModel:
    """A model served over HTTP: an `engine.client.ModelClient`.

    Args:
        url: The server's base URL (``http://127.0.0.1:8000``).
        token: The bearer token, if the server requires one.
        timeout: Seconds to wait for one answer.
        max_concurrency: Requests in flight at once (the server batches them).

    Attributes:
        info: The served model (`engine.settings.ModelInfo`).
        server_info: The server's whole ``GET /info`` answer (settings, limits, batching).

    Raises:
        RemoteError: The server cannot be reached, or refuses the token.

    Example:
        >>> with engine.connect("http://127.0.0.1:8000", token="secret") as model:  # doctest: +SKIP
        ...     model.predict("street.jpg")[0].boxes
    """

    def __init__(
        self, url: str, token: str | None = None, timeout: float = 120.0, max_concurrency: int = 8
    ) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = timeout
        self._concurrency = max(1, int(max_concurrency))
        self._http = requests.Session()
        self.server_info: dict[str, Any] = self._call("GET", "/info")
        self.info = ModelInfo.from_json(self.server_info)

    @property
    def classes(self) -> list[str]:
        """The model's class names."""
        return list(self.info.classes)

    @property
    def task(self) -> str:
        """The model's task."""
        return self.info.task

    def __repr__(self) -> str:
        return f"RemoteModel(url={self.url!r}, model={self.info.name!r})"

    # ------------------------------------------------------------------ HTTP
    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(
                method,
                self.url + path,
                headers={**self._headers, **kwargs.pop("headers", {})},
                timeout=self._timeout,
                **kwargs,
            )
        except requests.RequestException as e:
            raise RemoteError(f"{self.url}{path}: {type(e).__name__}: {e}") from None
        if response.status_code >= 400:
            try:
                reason = response.json().get("error") or response.json().get("detail")
            except ValueError:
                reason = response.text[:300]
            raise RemoteError(f"{self.url}{path}: HTTP {response.status_code}: {reason}")
        return response.json()

    # ------------------------------------------------------------------ predict
    def predict(self, input: Any = None, **options: Any) -> PredictionResults:  # noqa: A002
        """Predict over images and videos on the server, as `engine.api.ModelAPI.predict`.

        The settings go to the server, which validates them.

        Returns:
            One Prediction per image or video frame, in input order.
        """
        options, export = _checked_options(dict(options), self.info, detached=False)
        settings = {k: v for k, v in options.items() if k not in _LOCAL_OPTIONS}
        resolved = resolve_input(input, recursive=bool(options.get("recursive", False)))
        images = [item for item in resolved.items if item.source != "video" or item.error]
        with ThreadPoolExecutor(self._concurrency) as pool:
            answers = dict(
                zip(
                    [item.index for item in images],
                    pool.map(lambda item: self._predict_item(item, settings), images),
                )
            )
        predictions: list[Prediction] = []
        for item in resolved.items:
            if item.index in answers:
                predictions.append(answers[item.index])
            else:  # a video: frames come through a session
                with self.predict_detached(item.path, **options) as session:
                    predictions.extend(session)
        for index, prediction in enumerate(predictions):
            prediction.index = index
        outputs = _export(export, predictions, self.info)
        return PredictionResults(predictions, resolved.skipped, outputs)

    def _predict_item(self, item: Item, settings: dict[str, Any]) -> Prediction:
        result, size = ImageResult(None, item.error), (0, 0)
        if item.error is None:
            if item.url is not None and item.source == "url":
                body: dict[str, Any] = {"url": item.url}
            else:
                body = {"image_base64": base64.b64encode(_encoded(item)).decode()}
            try:
                answer = self._call("POST", "/predict", json={**body, "settings": settings})
                (row,) = answer["predictions"]
                remote = prediction_from_json(row, self.classes, self.task)
                latency = None if remote.latency_ms is None else remote.latency_ms / 1000.0
                result = ImageResult(remote.detections, remote.error, latency)
                size = (remote.height, remote.width)
            except RemoteError as e:
                result = ImageResult(None, str(e))
        return item_prediction(item, result, size, self.classes, self.task)

    # ------------------------------------------------------------------ sessions
    def predict_detached(self, input: Any = None, **options: Any) -> RemoteSession:  # noqa: A002
        """Start a job on the server (``POST /sessions``) and return its session.

        URLs are sent as such; local files (images or videos) are uploaded.
        """
        options, _ = _checked_options(dict(options), self.info, detached=True)
        settings = {k: v for k, v in options.items() if k not in _LOCAL_OPTIONS}
        resolved = resolve_input(input, recursive=bool(options.get("recursive", False)))
        urls = [item.url for item in resolved.items if item.source == "url" and not item.error]
        files = [item for item in resolved.items if item.source != "url" and not item.error]
        if files:
            uploads = [("files", (item.name, _encoded(item))) for item in files]
            if urls:
                raise ValueError("predict_detached over HTTP takes URLs or files, not both")
            answer = self._call(
                "POST", "/sessions", files=uploads, data={"settings": json.dumps(settings)}
            )
        else:
            answer = self._call("POST", "/sessions", json={"inputs": urls, "settings": settings})
        return RemoteSession(self, answer["id"])

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Close the HTTP connections (a later call opens new ones)."""
        self._http.close()

    def __enter__(self) -> RemoteModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RemoteSession:
    """A job running on the server: an `engine.client.SessionClient`.

    Args:
        model: The client that started it.
        session_id: The server's id of the job.
        page: Most predictions pulled per request.
    """

    def __init__(self, model: RemoteModel, session_id: str, page: int = 64) -> None:
        self.id = session_id
        self._model = model
        self._page = page
        self._pending: list[Prediction] = []
        self._done = False
        self._count = 0

    def __iter__(self) -> Iterator[Prediction]:
        return self

    def __next__(self) -> Prediction:
        while not self._pending:
            if self._done:
                raise StopIteration
            answer = self._model._call("GET", f"/sessions/{self.id}/results?max={self._page}")
            for row in answer["predictions"]:
                prediction = prediction_from_json(row, self._model.classes, self._model.task)
                prediction.index = self._count
                self._count += 1
                self._pending.append(prediction)
            self._done = bool(answer["done"]) and not answer["predictions"]
            if not self._pending and not self._done:
                time.sleep(0.1)
        return self._pending.pop(0)

    def status(self) -> dict[str, Any]:
        """The job's state, progress, message, error and failed items."""
        return self._model._call("GET", f"/sessions/{self.id}")

    def progress(self) -> dict[str, int]:
        """``{"done": ..., "total": ...}``."""
        return dict(self.status()["progress"])

    def stop(self) -> None:
        """Stop the job and forget it on the server."""
        try:
            self._model._call("DELETE", f"/sessions/{self.id}")
        except RemoteError:
            pass
        self._done = True

    close = stop

    def __enter__(self) -> RemoteSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _encoded(item: Item) -> bytes:
    """The bytes to upload for an item: the file itself, or in-memory pixels as PNG."""
    if item.path is not None:
        return Path(item.path).read_bytes()
    buffer = io.BytesIO()
    Image.fromarray(item.image_array()).save(buffer, format="PNG")
    return buffer.getvalue()


class HandleModel:
    """A served model called through its `Predictor` DeploymentHandle: a `ModelClient`.

    Inputs are resolved and decoded in this process, settings validated here as
    `ModelAPI.predict` validates them, and each image is one ``predict`` call on the
    handle; Serve batches concurrent calls. Videos go through the HTTP API's sessions.

    Args:
        app_name: The Serve application's name (``tessera serve --name``).
        timeout: Seconds to wait for one answer.

    Raises:
        RemoteError: No such application answers on the Ray cluster.
    """

    def __init__(self, app_name: str, timeout: float = 120.0) -> None:
        from ray import serve

        from engine.runtime import ensure_ray

        ensure_ray(None)
        try:
            self._handle: Any = serve.get_deployment_handle("Predictor", app_name=app_name)
            info = self._handle.info.remote().result(timeout_s=timeout)
        except Exception as e:
            raise RemoteError(f"Serve application {app_name!r}: {type(e).__name__}: {e}") from None
        self.app_name, self._timeout = app_name, timeout
        self.info = ModelInfo.from_json(info)
        self._sessions: weakref.WeakSet[HandleSession] = weakref.WeakSet()

    @property
    def classes(self) -> list[str]:
        """The model's class names."""
        return list(self.info.classes)

    @property
    def task(self) -> str:
        """The model's task."""
        return self.info.task

    def __repr__(self) -> str:
        return f"HandleModel(app={self.app_name!r}, model={self.info.name!r})"

    def predict(self, input: Any = None, **options: Any) -> PredictionResults:  # noqa: A002
        """Predict over images, as `engine.api.ModelAPI.predict` (no videos here)."""
        options, export = _checked_options(dict(options), self.info, detached=False)
        settings, items, skipped = self._plan(input, options)
        predictions = list(self._predictions(settings, items))
        return PredictionResults(predictions, skipped, _export(export, predictions, self.info))

    def predict_detached(self, input: Any = None, **options: Any) -> HandleSession:  # noqa: A002
        """Predict in a background thread of this process; iterate the session for results.

        Settings and inputs are checked before this returns.
        """
        options, _ = _checked_options(dict(options), self.info, detached=True)
        settings, items, _ = self._plan(input, options)
        session = HandleSession(self._predictions(settings, items), total=len(items))
        self._sessions.add(session)
        return session

    def _plan(
        self,
        input: Any,  # noqa: A002
        options: dict[str, Any],
    ) -> tuple[PredictSettings, list[Item], list[str]]:
        if self._handle is None:
            raise RemoteError(f"{self!r} is closed")
        settings = validate_settings(dict(options), self.info)
        resolved = resolve_input(input, recursive=settings.general.recursive)
        videos = [item.name for item in resolved.items if item.source == "video"]
        if videos:
            raise ValueError(
                f"videos go through the HTTP API's sessions, not a handle: {', '.join(videos)}"
            )
        return settings, resolved.items, resolved.skipped

    def _predictions(self, settings: PredictSettings, items: list[Item]) -> Iterator[Prediction]:
        handle, timeout = self._handle, self._timeout

        def send(images: list[Any]) -> list[ImageResult]:
            calls = [handle.predict.remote(image, settings) for image in images]  # Serve batches
            return [call.result(timeout_s=timeout) for call in calls]

        size = settings.general.batch_size
        for start in range(0, len(items), size):
            decoded = decode_items(items[start : start + size], settings)
            yield from predict_decoded(decoded, send, self.classes, self.task)

    def close(self) -> None:
        """Stop the sessions this client started and let go of the deployment handle."""
        for session in list(self._sessions):
            session.stop()
        self._handle = None

    def __enter__(self) -> HandleModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HandleSession:
    """Predictions of a `HandleModel` made by a background thread: a `SessionClient`.

    Args:
        predictions: The predictions to make, in order (consumed by the thread).
        total: How many there will be.
        buffered: Most predictions made ahead of the reader.
    """

    def __init__(self, predictions: Iterator[Prediction], total: int, buffered: int = 256) -> None:
        self._queue: queue.Queue[Prediction | None] = queue.Queue(maxsize=buffered)
        self._stop = threading.Event()
        self._total = total
        self._produced = 0
        self._failed: list[dict[str, Any]] = []
        self._error: str | None = None
        self._finished = False
        self._thread = threading.Thread(
            target=self._produce, args=(predictions,), daemon=True, name="tessera-handle"
        )
        self._thread.start()

    def _produce(self, predictions: Iterator[Prediction]) -> None:
        try:
            for prediction in predictions:
                if not self._put(prediction):
                    return
                self._produced += 1
                if prediction.error is not None:
                    self._failed.append({"name": prediction.name, "error": prediction.error})
        except Exception as e:  # the session fails as a whole; the reader sees why
            self._error = f"{type(e).__name__}: {e}"
        finally:
            self._put(None)

    def _put(self, prediction: Prediction | None) -> bool:
        """Queue a prediction, waiting for room; False once the session is stopped."""
        while not self._stop.is_set():
            try:
                self._queue.put(prediction, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[Prediction]:
        return self

    def __next__(self) -> Prediction:
        while not self._finished:
            try:
                prediction = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set():
                    self._finished = True
                continue
            if prediction is not None:
                return prediction
            self._finished = True
            if self._error is not None:
                raise RemoteError(self._error)
        raise StopIteration

    def progress(self) -> dict[str, int]:
        """``{"done": predictions made, "total": predictions to make}``."""
        return {"done": self._produced, "total": self._total}

    def status(self) -> dict[str, Any]:
        """``{"state", "progress", "error", "failed"}``.

        ``state`` is "running", "done", "stopped" or "error"; ``failed`` lists the items
        that carry an error (name and error).
        """
        if self._error is not None:
            state = "error"
        elif self._produced == self._total and not self._thread.is_alive():
            state = "done"
        else:
            state = "stopped" if self._stop.is_set() else "running"
        return {
            "state": state,
            "progress": self.progress(),
            "error": self._error,
            "failed": list(self._failed),
        }

    def stop(self) -> None:
        """Stop making predictions; those already made can still be read."""
        self._stop.set()

    close = stop

    def __enter__(self) -> HandleSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
