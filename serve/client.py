"""`engine.connect`: the same `predict` API as `engine.deploy`, over a running Tessera server.

``connect("tessera")`` (an application's name, from inside the Ray cluster) calls the
application's `Predictor` deployment through a Serve DeploymentHandle: images are
decoded here and each is one handle call, which Serve batches with the others.

``connect("http://host:8000", token=...)`` speaks the server's HTTP API (serve/app.py):
each image goes to ``POST /predict`` (several at once, so the server batches them), a
video or a detached job goes through ``/sessions``. Inputs are resolved here exactly as
`ModelAPI.predict` resolves them (paths, folders, URLs, PIL images, arrays); the answers
come back as `Prediction` objects with the same origin fields.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
from PIL import Image

from engine.api import PredictionResults
from engine.detections import Detections
from engine.prediction import Prediction
from engine.sources.items import Item
from engine.sources.resolve import resolve_input
from serve.schema import prediction_from_json

__all__ = ["HandleModel", "HandleSession", "RemoteError", "RemoteModel", "RemoteSession", "connect"]


class RemoteError(RuntimeError):
    """The server refused a request or could not be reached (the message says why)."""


def connect(
    url: str,
    token: str | None = None,
    timeout: float = 120.0,
    max_concurrency: int = 8,
) -> RemoteModel | HandleModel:
    """Connect to a Tessera server and return a model with `predict` and `predict_detached`.

    Args:
        url: The server's base URL (``http://127.0.0.1:8000``), or the name of a Serve
            application on the Ray cluster this process is connected to (``"tessera"``).
        token: The bearer token, when the server requires one.
        timeout: Seconds to wait for one answer.
        max_concurrency: Requests in flight at once (the server batches them).

    Returns:
        A `RemoteModel` (HTTP) or a `HandleModel` (DeploymentHandle).

    Raises:
        RemoteError: The server cannot be reached, or refuses the token.

    Example:
        >>> model = engine.connect("http://127.0.0.1:8000", token="secret")  # doctest: +SKIP
        >>> model.predict("street.jpg")[0].boxes                           # doctest: +SKIP
    """
    if "://" not in url:
        return HandleModel(url, timeout)
    return RemoteModel(url, token, timeout, max_concurrency)


class RemoteModel:
    """A model served over HTTP, with the `ModelAPI` prediction methods.

    Args:
        url: The server's base URL.
        token: The bearer token, if any.
        timeout: Seconds to wait for one answer.
        max_concurrency: Requests in flight at once.
    """

    def __init__(
        self, url: str, token: str | None = None, timeout: float = 120.0, max_concurrency: int = 8
    ) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = timeout
        self._concurrency = max(1, int(max_concurrency))
        self._http = requests.Session()
        self.info = self._call("GET", "/info")

    @property
    def classes(self) -> list[str]:
        """The model's class names."""
        return list(self.info["classes"])

    @property
    def task(self) -> str:
        """The model's task."""
        return str(self.info["task"])

    def __repr__(self) -> str:
        return f"RemoteModel(url={self.url!r}, model={self.info.get('model')!r})"

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
        recursive = bool(options.get("recursive", False))
        settings = {k: v for k, v in options.items() if k not in ("progress", "recursive")}
        resolved = resolve_input(input, recursive=recursive)
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
        return PredictionResults(predictions, resolved.skipped)

    def _predict_item(self, item: Item, settings: dict[str, Any]) -> Prediction:
        if item.error is not None:
            return _origin(Prediction(Detections.empty(), self.classes, error=item.error), item)
        try:
            if item.url is not None and item.source == "url":
                body = {"url": item.url, "settings": settings}
                answer = self._call("POST", "/predict", json=body)
            else:
                data = _encoded(item)
                body = {"image_base64": base64.b64encode(data).decode(), "settings": settings}
                answer = self._call("POST", "/predict", json=body)
            (row,) = answer["predictions"]
            prediction = prediction_from_json(row, self.classes, self.task)
        except RemoteError as e:
            prediction = Prediction(Detections.empty(), self.classes, error=str(e))
        return _origin(prediction, item)

    # ------------------------------------------------------------------ sessions
    def predict_detached(self, input: Any = None, **options: Any) -> RemoteSession:  # noqa: A002
        """Start a job on the server (``POST /sessions``) and return its session.

        URLs are sent as such; local files (images or videos) are uploaded.
        """
        settings = {k: v for k, v in options.items() if k not in ("progress", "recursive")}
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


class RemoteSession:
    """A job running on the server: iterate it for Predictions, as `PredictionSession`."""

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
        """The job's state, progress, message and error."""
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


def _origin(prediction: Prediction, item: Item) -> Prediction:
    prediction.source, prediction.name = item.source, item.name
    prediction.path, prediction.url, prediction.dataset = item.path, item.url, item.dataset
    if item.in_memory and item.pixels is not None:
        prediction.image = item.image_array()
    return prediction


def _encoded(item: Item) -> bytes:
    """The bytes to upload for an item: the file itself, or in-memory pixels as PNG."""
    if item.path is not None:
        return Path(item.path).read_bytes()
    buffer = io.BytesIO()
    Image.fromarray(item.image_array()).save(buffer, format="PNG")
    return buffer.getvalue()


class HandleModel:
    """A served model called through its `Predictor` DeploymentHandle (inside the cluster).

    Inputs are resolved and decoded in this process, settings validated here as
    `ModelAPI.predict` validates them, and each image is one ``predict`` call on the
    handle; Serve batches concurrent calls.

    Args:
        app_name: The Serve application's name (``tessera serve --name``).
        timeout: Seconds to wait for one answer.
    """

    def __init__(self, app_name: str, timeout: float = 120.0) -> None:
        from ray import serve

        from engine.runtime import ensure_ray
        from engine.settings import ModelInfo

        ensure_ray(None)
        try:
            self._handle = serve.get_deployment_handle("Predictor", app_name=app_name)
            info = self._handle.info.remote().result(timeout_s=timeout)
        except Exception as e:
            raise RemoteError(f"Serve application {app_name!r}: {type(e).__name__}: {e}") from None
        self.app_name, self._timeout = app_name, timeout
        self.info = ModelInfo(
            info["name"], info["task"], list(info["classes"]), info["default_conf"],
            tuple(info["input_size"]),
        )  # fmt: skip

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
        return PredictionResults(list(self._predict_iter(input, options)), [])

    def predict_detached(self, input: Any = None, **options: Any) -> HandleSession:  # noqa: A002
        """Predict in a background thread of this process; iterate the session for results."""
        return HandleSession(self._predict_iter(input, options))

    def _predict_iter(self, input: Any, options: dict[str, Any]) -> Iterator[Prediction]:  # noqa: A002
        from engine.settings import validate_settings
        from engine.sources.decode import ImageLoadError, decode_item

        settings = validate_settings(dict(options), self.info)
        resolved = resolve_input(input, recursive=settings.recursive)
        videos = [item.name for item in resolved.items if item.source == "video"]
        if videos:
            raise ValueError(
                f"videos go through the HTTP API's sessions, not a handle: {', '.join(videos)}"
            )
        items = resolved.items
        for start in range(0, len(items), settings.batch_size):
            chunk = items[start : start + settings.batch_size]
            calls: list[tuple[Item, Any, str | None, tuple[int, ...]]] = []
            for item in chunk:  # send the chunk at once, so Serve can batch it
                try:
                    image = decode_item(item, settings.max_pixels, settings.url_timeout)
                    call = self._handle.predict.remote(image, settings)
                    calls.append((item, call, None, image.shape[:2]))
                except ImageLoadError as e:
                    calls.append((item, None, str(e), (0, 0)))
            for item, call, error, (height, width) in calls:
                detections = Detections.empty()
                if call is not None:
                    result = call.result(timeout_s=self._timeout)
                    error = result.error
                    detections = result.detections or Detections.empty()
                prediction = Prediction(
                    detections, self.classes, error=error, index=item.index, task=self.task
                )
                prediction.height, prediction.width = int(height), int(width)
                yield _origin(prediction, item)


class HandleSession:
    """Predictions of a `HandleModel` produced by a background thread, read in order."""

    def __init__(self, predictions: Iterator[Prediction]) -> None:
        import queue
        import threading

        self._queue: queue.Queue[Any] = queue.Queue(maxsize=256)
        self._stop = threading.Event()
        self._done = 0
        self._error: str | None = None
        self._finished = False

        def produce() -> None:
            try:
                for prediction in predictions:
                    if self._stop.is_set():
                        return
                    self._queue.put(prediction)
            except Exception as e:  # the session fails as a whole; the reader sees why
                self._error = f"{type(e).__name__}: {e}"
            finally:
                self._queue.put(None)

        self._thread = threading.Thread(target=produce, daemon=True, name="tessera-handle")
        self._thread.start()

    def __iter__(self) -> Iterator[Prediction]:
        return self

    def __next__(self) -> Prediction:
        if self._finished:
            raise StopIteration
        prediction = self._queue.get()
        if prediction is None:
            self._finished = True
            if self._error is not None:
                raise RemoteError(self._error)
            raise StopIteration
        self._done += 1
        return prediction

    def progress(self) -> dict[str, int]:
        """``{"done": predictions read so far}``."""
        return {"done": self._done}

    def stop(self) -> None:
        """Stop producing; what is already queued can still be read."""
        self._stop.set()

    close = stop

    def __enter__(self) -> HandleSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
