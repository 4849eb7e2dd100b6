"""Supervisely: an HTTP client for its public API, and the connector that uploads to it.

The client speaks ``POST {server}/public/api/v3/<method>`` with a JSON body and the
``x-api-key`` header, as the official SDK does, with only ``requests``. Every request
goes through the connector's gate (``with gate.request():``) and is retried on its own
through `connectors.retry.call_with_retries`, so a 429 on one request never redoes the
others. Requests that create something (a project, a dataset, images) look for what a
lost answer may already have created before trying again.

Item ids: a prediction made from a Supervisely image carries
``url == "sly://images/<image_id>"`` (see `image_url`) and its dataset name in
``dataset``; frames of a Supervisely video carry ``"sly://videos/<video_id>"`` and their
``frame_index``. `SuperviselyConnector.item_key` gives ``"image:<image_id>"`` for the
first (the id of the *source* image, also in ``create`` mode).

Idempotency: every object the connector writes carries the tag
``{"name": "tessera_job", "value": <job id>}``. An ``append`` or ``iou_merge`` write reads
the image's annotation, drops the objects of this job found there, and writes the rest
plus this job's objects (``annotations.bulk.add`` replaces an image's annotation), so a
write repeated after a lost answer, or a batch delivered twice, never duplicates objects.
"""

from __future__ import annotations

import base64
import copy
import email.utils
import io
import json
import logging
import math
import os
import tempfile
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import requests
from PIL import Image

from connectors.base import (
    UPLOAD_MODES,
    Connector,
    DeliveryError,
    DeliveryResult,
    RequestGate,
    UploadPlan,
)
from connectors.retry import RetryPolicy, call_with_retries
from engine.annotation import mask_to_bitmap, prediction_to_supervisely, supervisely_meta
from engine.prediction import Prediction

__all__ = [
    "JOB_TAG",
    "MAX_ANNOTATIONS_PER_CALL",
    "SuperviselyClient",
    "SuperviselyConfigError",
    "SuperviselyConnector",
    "image_url",
    "parse_sly_url",
    "resolve_credentials",
    "video_url",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Path of the public API under the server address.
API_PATH = "/public/api/v3/"
#: Images per ``annotations.bulk.add`` (and ``images.bulk.add``) call.
MAX_ANNOTATIONS_PER_CALL = 50
#: Entities asked for per page of a ``*.list`` method.
PAGE_SIZE = 500
#: Name of the object tag that marks the objects a job wrote.
JOB_TAG = "tessera_job"
#: Its tag meta.
JOB_TAG_META: dict[str, str] = {"name": JOB_TAG, "value_type": "any_string", "color": "#4A90E2"}
#: Default config files read when the environment lacks the credentials.
DEFAULT_CONFIG_FILES = ("~/supervisely.env", "~/.supervisely.env")

_URL_PREFIX = "sly://"
_SERVER_FIELDS = {"id", "classId", "labelerLogin", "createdAt", "updatedAt", "tagId"}


class SuperviselyConfigError(ValueError):
    """The Supervisely server address or API token could not be found."""


# ---------------------------------------------------------------------- ids in URLs
def image_url(image_id: int) -> str:
    """Return the ``url`` a prediction of Supervisely image ``image_id`` carries.

    Example:
        >>> image_url(42)
        'sly://images/42'
    """
    return f"{_URL_PREFIX}images/{int(image_id)}"


def video_url(video_id: int) -> str:
    """Return the ``url`` the frames of Supervisely video ``video_id`` carry.

    Example:
        >>> video_url(7)
        'sly://videos/7'
    """
    return f"{_URL_PREFIX}videos/{int(video_id)}"


def parse_sly_url(url: str | None) -> tuple[str, int] | None:
    """Read ``("images", id)`` or ``("videos", id)`` from a ``sly://`` URL; None otherwise.

    Example:
        >>> parse_sly_url("sly://images/42")
        ('images', 42)
        >>> parse_sly_url("https://example.com/a.jpg") is None
        True
    """
    if not url or not url.startswith(_URL_PREFIX):
        return None
    kind, _, ident = url[len(_URL_PREFIX) :].partition("/")
    if kind not in ("images", "videos") or not ident.isdigit():
        return None
    return kind, int(ident)


# ---------------------------------------------------------------------- credentials
class _Secret:
    """Holds the token; its repr and str never show it."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__

    def __getstate__(self) -> str:
        return self.value

    def __setstate__(self, state: str) -> None:
        self.value = state


def _read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        values[key.strip()] = value.strip().strip("'\"")
    return values


def resolve_credentials(
    server_address: str | None = None, token: str | None = None
) -> tuple[str, str]:
    """Find the server address and API token.

    Arguments win; then the ``SERVER_ADDRESS`` and ``API_TOKEN`` environment variables;
    then a ``KEY=VALUE`` file: ``$SUPERVISELY_CONFIG``, else ``~/supervisely.env`` or
    ``~/.supervisely.env``. An address without a scheme gets ``https://``.

    Args:
        server_address: The server, e.g. ``"https://app.supervisely.com"``.
        token: The API token.

    Returns:
        (server address without a trailing slash, token).

    Raises:
        SuperviselyConfigError: If either is missing (the message names the variables,
            never a token).
    """
    server_address = server_address or os.environ.get("SERVER_ADDRESS") or None
    token = token or os.environ.get("API_TOKEN") or None
    if not (server_address and token):
        override = os.environ.get("SUPERVISELY_CONFIG")
        candidates = [override] if override else list(DEFAULT_CONFIG_FILES)
        for candidate in candidates:
            path = Path(candidate).expanduser()
            if path.is_file():
                values = _read_env_file(path)
                server_address = server_address or values.get("SERVER_ADDRESS") or None
                token = token or values.get("API_TOKEN") or None
                break
    missing = [n for n, v in (("SERVER_ADDRESS", server_address), ("API_TOKEN", token)) if not v]
    if missing:
        raise SuperviselyConfigError(
            f"Supervisely credentials not found: {' and '.join(missing)} missing. Set the "
            "SERVER_ADDRESS and API_TOKEN environment variables, or write them as "
            "KEY=VALUE lines in ~/supervisely.env (or the file SUPERVISELY_CONFIG names)."
        )
    assert server_address is not None and token is not None
    if "://" not in server_address:
        server_address = "https://" + server_address
    return server_address.rstrip("/"), token


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def _server_message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason or "no message"
    if isinstance(body, dict):
        parts = [str(body[k]) for k in ("error", "message") if body.get(k)]
        if body.get("details"):
            parts.append(json.dumps(body["details"])[:500])
        if parts:
            return "; ".join(parts)
    return json.dumps(body)[:500]


# ---------------------------------------------------------------------- client
class SuperviselyClient:
    """A small client of Supervisely's public HTTP API (v3), with retries and a gate.

    Args:
        server_address: Server URL; default ``SERVER_ADDRESS`` (see `resolve_credentials`).
        token: API token; default ``API_TOKEN``. It never appears in messages or reprs.
        session: The `requests.Session` to use (one is made when None).
        gate: Where each request waits its turn (default: lets all through).
        retry: How each request is retried on 429, 5xx, timeouts and dropped connections.
        timeout: Seconds to wait for an answer.
        sleep: How to wait between retries (tests pass a recorder).

    Example:
        >>> client = SuperviselyClient()                              # doctest: +SKIP
        >>> images = client.list_images(dataset_id=254737)            # doctest: +SKIP
    """

    def __init__(
        self,
        server_address: str | None = None,
        token: str | None = None,
        session: requests.Session | None = None,
        gate: RequestGate | None = None,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 (frozen dataclass)
        timeout: float = 30,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.server_address, token = resolve_credentials(server_address, token)
        self._token = _Secret(token)
        self.session = session if session is not None else requests.Session()
        self.gate = gate if gate is not None else RequestGate()
        self.retry = retry
        self.timeout = timeout
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"SuperviselyClient(server_address={self.server_address!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["session"] = None  # a fresh session (and connection pool) in the new process
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.session = requests.Session()

    # ------------------------------------------------------------------ transport
    def _scrub(self, text: str) -> str:
        token = self._token.value
        return text.replace(token, "***") if token else text

    def request(self, method: str, payload: dict[str, Any], stream: bool = False) -> Any:
        """Send one request, once, through the gate.

        Args:
            method: API method, e.g. ``"images.list"``.
            payload: The JSON body.
            stream: Leave the body unread (for large downloads).

        Returns:
            The `requests.Response` (status below 400).

        Raises:
            DeliveryError: Retryable for 408, 429 (with ``retry_after``), 5xx, timeouts
                and dropped connections; not retryable for other 4xx, with the server's
                message.
        """
        url = f"{self.server_address}{API_PATH}{method}"
        error: DeliveryError | None = None
        response: requests.Response | None = None
        try:
            with self.gate.request():
                response = self.session.post(
                    url,
                    json=payload,
                    headers={"x-api-key": self._token.value},
                    timeout=self.timeout,
                    stream=stream,
                )
        except requests.Timeout:
            error = DeliveryError(
                f"Supervisely {method}: no answer within {self.timeout} s", retryable=True
            )
        except requests.ConnectionError as e:
            # The exception holds the request (and so the token header): keep only its kind.
            error = DeliveryError(
                f"Supervisely {method}: connection to {self.server_address} failed "
                f"({type(e).__name__})",
                retryable=True,
            )
        except requests.RequestException as e:
            error = DeliveryError(
                f"Supervisely {method}: request failed ({type(e).__name__})", retryable=False
            )
        if error is not None:  # raised here, outside the except block: no chained context
            raise error
        assert response is not None
        if response.status_code >= 400:
            raise self._http_error(method, response)
        return response

    def _http_error(self, method: str, response: requests.Response) -> DeliveryError:
        status = response.status_code
        retryable = status in (408, 429) or status >= 500
        message = f"Supervisely {method} failed: HTTP {status}: {_server_message(response)}"
        if status == 401:
            message += " (check API_TOKEN)"
        retry_after = _parse_retry_after(response.headers.get("Retry-After"))
        return DeliveryError(
            self._scrub(message),
            retryable=retryable,
            retry_after=retry_after if retryable else None,
            status=status,
        )

    def with_retries(self, call: Callable[[], T], what: str = "request") -> T:
        """Run ``call`` (which sends requests through `request`) under the retry policy."""

        def log(error: DeliveryError, wait: float) -> None:
            logger.info("%s: %s; retrying in %.2f s", what, error, wait)

        return call_with_retries(call, self.retry, on_retry=log, sleep=self._sleep)

    def call(self, method: str, payload: dict[str, Any]) -> Any:
        """Send one request with retries and return its JSON answer."""

        def attempt() -> Any:
            response = self.request(method, payload)
            try:
                return response.json()
            except ValueError:
                raise DeliveryError(
                    f"Supervisely {method}: the answer is not JSON", retryable=True
                ) from None

        return self.with_retries(attempt, f"Supervisely {method}")

    def _download(self, method: str, payload: dict[str, Any]) -> bytes:
        def attempt() -> bytes:
            response = self.request(method, payload, stream=True)
            try:
                return response.content
            except requests.RequestException as e:
                raise DeliveryError(
                    f"Supervisely {method}: download broke off ({type(e).__name__})",
                    retryable=True,
                ) from None

        return self.with_retries(attempt, f"Supervisely {method}")

    def list_all(self, method: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
        """Read every page of a ``*.list`` method (each page retried on its own)."""
        payload = {"sort": "id", "sort_order": "asc", **payload}
        entities: list[dict[str, Any]] = []
        page = 1
        while True:
            answer = self.call(method, {**payload, "page": page, "per_page": PAGE_SIZE})
            batch = answer.get("entities", [])
            entities.extend(batch)
            pages = int(answer.get("pagesCount") or 1)
            if page >= pages or not batch:
                break
            page += 1
        return entities

    def create_once(self, create: Callable[[], T], find: Callable[[], T | None], what: str) -> T:
        """Create something, retrying; a retry first looks for what a lost answer made.

        Args:
            create: Sends the creating request once (through `request`).
            find: Returns what an earlier attempt created, or None.
            what: Names the operation in logs.

        Returns:
            What ``create`` (or ``find``) returned.
        """
        first = True

        def attempt() -> T:
            nonlocal first
            if not first:
                found = find()
                if found is not None:
                    return found
            first = False
            return create()

        return self.with_retries(attempt, what)

    # ------------------------------------------------------------------ projects
    def project_info(self, project_id: int) -> dict[str, Any]:
        """Return ``projects.info`` of a project (id, name, workspaceId, description...)."""
        return self.call("projects.info", {"id": int(project_id)})

    def list_projects(self, workspace_id: int) -> list[dict[str, Any]]:
        """Return the projects of a workspace (``projects.list``)."""
        return self.list_all("projects.list", {"workspaceId": int(workspace_id)})

    def create_project(self, workspace_id: int, name: str, description: str = "") -> dict[str, Any]:
        """Create an images project (``projects.create``); a retry never makes two.

        A retry looks for a project of that name and description made by a lost answer.
        """

        def create() -> dict[str, Any]:
            payload = {
                "workspaceId": int(workspace_id),
                "name": name,
                "description": description,
                "type": "images",
            }
            return self.request("projects.create", payload).json()

        def find() -> dict[str, Any] | None:
            for project in self.list_projects(workspace_id):
                if project["name"] == name and project.get("description", "") == description:
                    return project
            return None

        return self.create_once(create, find, "Supervisely projects.create")

    def get_project_meta(self, project_id: int) -> dict[str, Any]:
        """Return a project's meta: ``{"classes": [...], "tags": [...]}``."""
        return self.call("projects.meta", {"id": int(project_id)})

    def update_project_meta(self, project_id: int, meta: dict[str, Any]) -> None:
        """Replace a project's meta (``projects.meta.update``)."""
        self.call("projects.meta.update", {"id": int(project_id), "meta": meta})

    # ------------------------------------------------------------------ datasets
    def list_datasets(self, project_id: int) -> list[dict[str, Any]]:
        """Return every dataset of a project, nested ones included (``parentId``)."""
        return self.list_all("datasets.list", {"projectId": int(project_id)})

    def dataset_info(self, dataset_id: int) -> dict[str, Any]:
        """Return ``datasets.info`` of a dataset (id, name, projectId, parentId...)."""
        return self.call("datasets.info", {"id": int(dataset_id)})

    def create_dataset(
        self, project_id: int, name: str, parent_id: int | None = None
    ) -> dict[str, Any]:
        """Create a dataset (``datasets.create``); a retry never makes two."""

        def create() -> dict[str, Any]:
            payload: dict[str, Any] = {"projectId": int(project_id), "name": name}
            if parent_id is not None:
                payload["parentId"] = int(parent_id)
            return self.request("datasets.create", payload).json()

        def find() -> dict[str, Any] | None:
            for dataset in self.list_datasets(project_id):
                if dataset["name"] == name and dataset.get("parentId") == parent_id:
                    return dataset
            return None

        return self.create_once(create, find, "Supervisely datasets.create")

    # ------------------------------------------------------------------ images
    def list_image_infos(
        self, dataset_id: int, image_ids: Sequence[int] | None = None
    ) -> list[dict[str, Any]]:
        """Return the image infos of a dataset (``images.list``), optionally some ids only."""
        payload: dict[str, Any] = {"datasetId": int(dataset_id)}
        if image_ids is not None:
            payload["filter"] = [
                {"field": "id", "operator": "in", "value": [int(i) for i in image_ids]}
            ]
        return self.list_all("images.list", payload)

    def image_info(self, image_id: int) -> dict[str, Any]:
        """Return ``images.info`` of an image (id, name, datasetId, width, height, hash)."""
        return self.call("images.info", {"id": int(image_id)})

    def download_image(self, image_id: int) -> bytes:
        """Return an image's file bytes (``images.download``)."""
        return self._download("images.download", {"id": int(image_id)})

    def add_images(self, dataset_id: int, images: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Add images that the server already holds to a dataset (``images.bulk.add``).

        Each image is ``{"name": ..., "hash": ...}`` (or ``"link"``). Calls hold at most
        `MAX_ANNOTATIONS_PER_CALL` images; a retry first lists the dataset and adds only
        the names still missing, so a lost answer never adds an image twice.

        Returns:
            The new images' infos, in the order given.
        """
        out: list[dict[str, Any]] = []
        for start in range(0, len(images), MAX_ANNOTATIONS_PER_CALL):
            chunk = list(images[start : start + MAX_ANNOTATIONS_PER_CALL])
            out.extend(self._add_image_chunk(int(dataset_id), chunk))
        return out

    def _add_image_chunk(
        self, dataset_id: int, chunk: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        first = True

        def attempt() -> list[dict[str, Any]]:
            nonlocal first
            present: dict[str, dict[str, Any]] = {}
            if not first:
                names = {image["name"] for image in chunk}
                present = {
                    info["name"]: info
                    for info in self.list_image_infos(dataset_id)
                    if info["name"] in names
                }
            first = False
            missing = [image for image in chunk if image["name"] not in present]
            if missing:
                payload = {"datasetId": dataset_id, "images": missing}
                for info in self.request("images.bulk.add", payload).json():
                    present[info["name"]] = info
            return [present[image["name"]] for image in chunk]

        return self.with_retries(attempt, "Supervisely images.bulk.add")

    def list_images(
        self,
        project_id: int | None = None,
        dataset_id: int | None = None,
        image_ids: Sequence[int] | None = None,
    ) -> list[dict[str, Any]]:
        """List images to predict: a project's, a dataset's, or given ids.

        Args:
            project_id: Every image of this project (nested datasets included).
            dataset_id: Every image of this dataset.
            image_ids: These images (each looked up once; images of one dataset are
                listed together).

        Returns:
            One dict per image: ``id``, ``name``, ``dataset`` (name; nested ones as
            "parent/child"), ``dataset_id``, ``project_id``, ``width``, ``height``, and
            ``url`` (`image_url`: what the prediction's ``url`` must be).

        Raises:
            ValueError: If not exactly one of the arguments is given.
            DeliveryError: A request failed.
        """
        given = sum(x is not None for x in (project_id, dataset_id, image_ids))
        if given != 1:
            raise ValueError("list_images takes exactly one of project_id, dataset_id, image_ids")
        infos: list[dict[str, Any]] = []
        if project_id is not None:
            for dataset in self.list_datasets(project_id):
                infos.extend(self.list_image_infos(dataset["id"]))
        elif dataset_id is not None:
            infos = self.list_image_infos(dataset_id)
        else:
            assert image_ids is not None
            wanted = [int(i) for i in image_ids]
            found: dict[int, dict[str, Any]] = {}
            for image_id in wanted:
                if image_id in found:
                    continue
                info = self.image_info(image_id)
                found[image_id] = info
                rest = [i for i in wanted if i not in found]
                if rest:
                    for other in self.list_image_infos(info["datasetId"], rest):
                        found[int(other["id"])] = other
            infos = [found[i] for i in wanted]
        names = self._dataset_names({info["datasetId"] for info in infos}, infos)
        return [
            {
                "id": int(info["id"]),
                "name": info["name"],
                "dataset": names.get(info["datasetId"], str(info["datasetId"])),
                "dataset_id": int(info["datasetId"]),
                "project_id": info.get("projectId"),
                "width": int(info.get("width") or 0),
                "height": int(info.get("height") or 0),
                "url": image_url(info["id"]),
            }
            for info in infos
        ]

    def _dataset_names(self, dataset_ids: set[int], infos: list[dict[str, Any]]) -> dict[int, str]:
        projects = {info.get("projectId") for info in infos if info.get("projectId") is not None}
        if any(info.get("projectId") is None for info in infos):  # older servers: ask
            projects |= {self.dataset_info(i)["projectId"] for i in dataset_ids}
        datasets: dict[int, dict[str, Any]] = {}
        for project in projects:
            datasets.update({d["id"]: d for d in self.list_datasets(project)})
        return {i: _dataset_path(i, datasets) for i in dataset_ids if i in datasets}

    # ------------------------------------------------------------------ annotations
    def annotation_info(self, image_id: int) -> dict[str, Any]:
        """Return the annotation JSON of one image (``annotations.info``)."""
        return self.call("annotations.info", {"imageId": int(image_id)})["annotation"]

    def annotations_info(
        self, dataset_id: int, image_ids: Sequence[int]
    ) -> dict[int, dict[str, Any]]:
        """Return image id -> annotation JSON of images of a dataset (``annotations.bulk.info``)."""
        out: dict[int, dict[str, Any]] = {}
        ids = [int(i) for i in image_ids]
        for start in range(0, len(ids), MAX_ANNOTATIONS_PER_CALL):
            payload = {
                "datasetId": int(dataset_id),
                "imageIds": ids[start : start + MAX_ANNOTATIONS_PER_CALL],
            }
            for info in self.call("annotations.bulk.info", payload):
                out[int(info["imageId"])] = info["annotation"]
        return out

    def add_annotations(
        self, dataset_id: int, annotations: Sequence[tuple[int, dict[str, Any]]]
    ) -> None:
        """Set the annotations of images of one dataset (``annotations.bulk.add``).

        Each call holds at most `MAX_ANNOTATIONS_PER_CALL` images; each call is retried on
        its own (the call replaces the images' annotations, so repeating it is harmless).

        Args:
            dataset_id: The dataset all the images belong to.
            annotations: (image id, annotation JSON) pairs.
        """
        items = [{"imageId": int(i), "annotation": a} for i, a in annotations]
        for start in range(0, len(items), MAX_ANNOTATIONS_PER_CALL):
            payload = {
                "datasetId": int(dataset_id),
                "annotations": items[start : start + MAX_ANNOTATIONS_PER_CALL],
            }
            self.call("annotations.bulk.add", payload)

    # ------------------------------------------------------------------ videos
    def video_info(self, video_id: int) -> dict[str, Any]:
        """Return ``videos.info`` of a video (id, name, datasetId, frames count...)."""
        return self.call("videos.info", {"id": int(video_id)})

    def download_video(self, video_id: int, path: str | Path) -> Path:
        """Download a video to ``path`` (``videos.download``), streamed in chunks.

        The file appears under its final name only once complete.

        Returns:
            The path written.
        """
        path = Path(path)
        partial = path.with_name(path.name + ".part")
        method = "videos.download"

        def attempt() -> Path:
            response = self.request(method, {"id": int(video_id)}, stream=True)
            try:
                with partial.open("wb") as out:
                    for chunk in response.iter_content(chunk_size=1 << 20):
                        out.write(chunk)
            except requests.RequestException as e:
                raise DeliveryError(
                    f"Supervisely {method}: download broke off ({type(e).__name__})",
                    retryable=True,
                ) from None
            finally:
                response.close()
            partial.replace(path)
            return path

        return self.with_retries(attempt, f"Supervisely {method}")


def _dataset_path(dataset_id: int, datasets: dict[int, dict[str, Any]]) -> str:
    parts: list[str] = []
    seen: set[int] = set()
    current: int | None = dataset_id
    while current is not None and current in datasets and current not in seen:
        seen.add(current)
        parts.append(datasets[current]["name"])
        current = datasets[current].get("parentId")
    return "/".join(reversed(parts))


# ---------------------------------------------------------------------- geometry helpers
def _object_box(obj: dict[str, Any]) -> tuple[float, float, float, float] | None:
    """Exclusive xyxy box of a rectangle, bitmap or polygon object; None for others."""
    geometry = obj.get("geometryType")
    try:
        if geometry == "rectangle":
            (ax, ay), (bx, by) = obj["points"]["exterior"][:2]
            return min(ax, bx), min(ay, by), max(ax, bx) + 1, max(ay, by) + 1
        if geometry == "polygon":
            xs = [p[0] for p in obj["points"]["exterior"]]
            ys = [p[1] for p in obj["points"]["exterior"]]
            return min(xs), min(ys), max(xs) + 1, max(ys) + 1
        if geometry == "bitmap":
            data = zlib.decompress(base64.b64decode(obj["bitmap"]["data"]))
            with Image.open(io.BytesIO(data)) as png:
                width, height = png.size
            x, y = obj["bitmap"]["origin"]
            return x, y, x + width, y + height
    except (KeyError, TypeError, ValueError, OSError):
        return None
    return None


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _signature(obj: dict[str, Any]) -> str:
    """What an object is, without the fields the server adds (ids, dates, logins)."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in _SERVER_FIELDS}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(obj), sort_keys=True)


def _rectangle_as(obj: dict[str, Any], shape: str) -> dict[str, Any]:
    """Turn a rectangle object into the same area as a ``bitmap`` or ``polygon``."""
    (left, top), (right, bottom) = obj["points"]["exterior"][:2]
    out = {k: v for k, v in obj.items() if k != "points"}
    out["geometryType"] = shape
    if shape == "polygon":
        corners = [[left, top], [right, top], [right, bottom], [left, bottom]]
        out["points"] = {"exterior": corners, "interior": []}
    else:
        bitmap = mask_to_bitmap(np.ones((bottom - top + 1, right - left + 1), bool))
        bitmap["origin"] = [left, top]
        out["bitmap"] = bitmap
    return out


# ---------------------------------------------------------------------- connector
@dataclass
class _Target:
    key: str
    dataset_id: int
    image_id: int
    annotation: dict[str, Any]


class SuperviselyConnector(Connector):
    """Upload predictions to a Supervisely instance.

    Modes:
        create: a new project in the source project's workspace (or
            ``options["workspace_id"]``), named ``options["project_name"]`` or
            ``"<source> predictions"`` (a free variant when taken), mirroring the source
            datasets (nested ones too) with the images copied by hash; predictions are
            the copies' annotations. A resumed job finds its project again (its
            description is ``"tessera job <job id>"``).
        append: objects are added to each image's annotation in the source project.
        replace: each image's annotation is overwritten with the prediction.
        iou_merge: a predicted object whose box IoU with an existing object of the same
            class is at least ``options["iou_threshold"]`` (default 0.9) is dropped; the
            rest are appended.

    ``plan.sources`` keys: ``project_id`` (the source project), ``dataset_ids`` (optional:
    the datasets the items come from; default every dataset of the project) and
    ``image_ids`` (optional: in ``create`` only these images are copied). For modes other
    than ``create``, ``options["project_id"]`` may name the project instead.

    Before any annotation, the project meta gets the model's classes, the ``confidence``
    tag and the ``tessera_job`` tag (existing classes are kept). A class that exists with
    another shape is an error, except that rectangles are written as filled bitmaps or
    4-corner polygons into a class declared "bitmap" or "polygon" (so a segmentation
    object whose mask came out empty still fits a bitmap class).

    Args:
        client: The client to use; by default one is made from ``client_options``
            (``server_address``, ``token``, ``retry``, ``timeout``...) when first needed.
        **client_options: Passed to `SuperviselyClient`.

    Example:
        >>> connector = SuperviselyConnector()                        # doctest: +SKIP
        >>> connector.prepare(UploadPlan("job1", "append", ["car"],
        ...                              sources={"project_id": 12}))  # doctest: +SKIP
        >>> connector.deliver(predictions).delivered                  # doctest: +SKIP
        ['image:101', 'image:102']
    """

    name = "supervisely"
    modes = UPLOAD_MODES

    def __init__(self, client: SuperviselyClient | None = None, **client_options: Any) -> None:
        super().__init__()
        self._client = client
        self._client_options = client_options
        self.project_id: int | None = None
        self.job_id: str = ""
        self.mode: str = ""
        self.task: str = "detection"
        self.iou_threshold: float = 0.9
        self.keypoint_names: list[str] | None = None
        self._class_shapes: dict[str, str] = {}
        self._image_datasets: dict[int, int] = {}
        self._copies: dict[int, tuple[int, int]] = {}

    @property
    def client(self) -> SuperviselyClient:
        """The HTTP client, made on first use; its requests go through this connector's gate."""
        if self._client is None:
            self._client = SuperviselyClient(**self._client_options)
        self._client.gate = self.gate
        return self._client

    def validate(self) -> None:
        """Find the server address and token now (a missing one is a clear error)."""
        _ = self.client

    def bind(self, gate: RequestGate) -> None:
        """Route this connector's requests through ``gate`` (the runtime calls this)."""
        super().bind(gate)
        if self._client is not None:
            self._client.gate = gate

    def __repr__(self) -> str:
        return f"SuperviselyConnector(project_id={self.project_id!r}, mode={self.mode!r})"

    # ------------------------------------------------------------------ prepare
    def prepare(self, plan: UploadPlan) -> None:
        """Find or create the project, merge the meta, copy images (``create``).

        Raises:
            UnsupportedModeError: If ``plan.mode`` is not one of `modes`.
            ValueError: If the project is not known, a class exists with an incompatible
                shape, or a tag exists with another value type.
            DeliveryError: A request failed.
        """
        self.check_mode(plan.mode)
        self.job_id, self.mode, self.task = plan.job_id, plan.mode, plan.task
        self.iou_threshold = float(plan.options.get("iou_threshold", 0.9))
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {self.iou_threshold}")
        self.keypoint_names = plan.options.get("keypoint_names")
        if plan.task == "keypoints" and self.keypoint_names is None:
            raise ValueError(
                "the supervisely connector needs options['keypoint_names'] for a keypoints "
                "model (graph classes are declared with their nodes)"
            )
        source_project = plan.sources.get("project_id")
        dataset_ids = plan.sources.get("dataset_ids")
        if plan.mode == "create":
            if source_project is None:
                raise ValueError("upload='create' needs the source project: sources['project_id']")
            self.project_id = self._create_project(plan, int(source_project))
            self._merge_meta(plan)
            self._copy_images(int(source_project), dataset_ids, plan.sources.get("image_ids"))
        else:
            project = plan.options.get("project_id", source_project)
            if project is None:
                raise ValueError(
                    f"upload={plan.mode!r} needs a project: options['project_id'] or "
                    "sources['project_id']"
                )
            self.project_id = int(project)
            self._merge_meta(plan)
            self._map_images(self.project_id, dataset_ids)

    def _create_project(self, plan: UploadPlan, source_project: int) -> int:
        client = self.client
        source = client.project_info(source_project)
        workspace = int(plan.options.get("workspace_id") or source["workspaceId"])
        marker = f"tessera job {plan.job_id}"
        existing = client.list_projects(workspace)
        for project in existing:
            if project.get("description") == marker:
                logger.info("resuming into project %s (%s)", project["id"], project["name"])
                return int(project["id"])
        name = plan.options.get("project_name") or f"{source['name']} predictions"
        taken = {p["name"] for p in existing}
        free, n = name, 1
        while free in taken:
            n += 1
            free = f"{name} ({n})"
        if free != name:
            logger.info("project name %r is taken; creating %r", name, free)
        return int(client.create_project(workspace, free, marker)["id"])

    def _copy_images(
        self,
        source_project: int,
        dataset_ids: Iterable[int] | None,
        image_ids: Iterable[int] | None,
    ) -> None:
        client = self.client
        assert self.project_id is not None
        sources = {d["id"]: d for d in client.list_datasets(source_project)}
        scope = set(sources) if dataset_ids is None else {int(i) for i in dataset_ids}
        unknown = scope - set(sources)
        if unknown:
            raise ValueError(f"datasets {sorted(unknown)} are not in project {source_project}")
        wanted_images = None if image_ids is None else {int(i) for i in image_ids}
        # Parents of datasets in scope are mirrored too (empty), to keep the tree.
        mirror: set[int] = set()
        for dataset_id in scope:
            current: int | None = dataset_id
            while current is not None and current in sources and current not in mirror:
                mirror.add(current)
                current = sources[current].get("parentId")
        targets = {(d["name"], d.get("parentId")): d for d in client.list_datasets(self.project_id)}
        created: dict[int, int] = {}
        for dataset_id in sorted(mirror, key=lambda i: _depth(i, sources)):
            source = sources[dataset_id]
            parent = source.get("parentId")
            parent_copy = created.get(parent) if parent is not None else None
            found = targets.get((source["name"], parent_copy))
            if found is None:
                found = client.create_dataset(self.project_id, source["name"], parent_copy)
            created[dataset_id] = int(found["id"])
        for dataset_id in sorted(scope):
            copy_id = created[dataset_id]
            images = client.list_image_infos(dataset_id)
            if wanted_images is not None:
                images = [i for i in images if int(i["id"]) in wanted_images]
            present = {info["name"]: info for info in client.list_image_infos(copy_id)}
            missing = [i for i in images if i["name"] not in present]
            added = client.add_images(copy_id, [_image_ref(i) for i in missing])
            present.update({info["name"]: info for info in added})
            for image in images:
                self._copies[int(image["id"])] = (copy_id, int(present[image["name"]]["id"]))

    def _map_images(self, project_id: int, dataset_ids: Iterable[int] | None) -> None:
        client = self.client
        if dataset_ids is None:
            dataset_ids = [d["id"] for d in client.list_datasets(project_id)]
        for dataset_id in dataset_ids:
            for info in client.list_image_infos(int(dataset_id)):
                self._image_datasets[int(info["id"])] = int(dataset_id)

    def _merge_meta(self, plan: UploadPlan) -> None:
        assert self.project_id is not None
        wanted = supervisely_meta(plan.class_names, plan.task, keypoint_names=self.keypoint_names)
        wanted["tags"].append(dict(JOB_TAG_META))
        current = self.client.get_project_meta(self.project_id)
        merged = copy.deepcopy(current)
        merged.setdefault("classes", [])
        merged.setdefault("tags", [])
        classes = {c["title"]: c for c in merged["classes"]}
        changed = False
        for cls in wanted["classes"]:
            title = cls["title"]
            written = _written_shapes(cls["shape"], plan.task)
            existing = classes.get(title)
            if existing is None:
                merged["classes"].append(cls)
                classes[title] = cls
                changed = True
            elif not _shape_accepts(existing["shape"], written):
                raise ValueError(
                    f"class {title!r} exists in Supervisely project {self.project_id} with "
                    f"shape {existing['shape']!r}, but this {plan.task} model writes "
                    f"{' and '.join(sorted(written))} objects; rename the class in the "
                    "project or upload to another project"
                )
        tags = {t["name"]: t for t in merged["tags"]}
        for tag in wanted["tags"]:
            existing = tags.get(tag["name"])
            if existing is None:
                merged["tags"].append(tag)
                tags[tag["name"]] = tag
                changed = True
            elif existing.get("value_type") != tag["value_type"]:
                raise ValueError(
                    f"tag {tag['name']!r} exists in Supervisely project {self.project_id} "
                    f"with value_type {existing.get('value_type')!r}, but Tessera writes "
                    f"{tag['value_type']!r} values"
                )
        if changed:
            self.client.update_project_meta(self.project_id, merged)
        self._class_shapes = {c["title"]: c["shape"] for c in merged["classes"]}

    # ------------------------------------------------------------------ deliver
    def item_key(self, prediction: Prediction) -> str:
        """``"image:<id>"`` for ``url == "sly://images/<id>"``.

        Frames of a Supervisely video give ``"video:<id>:frame:<n>"``; any other
        prediction gives ``"unresolved:<source>:<name or index>"`` (and fails in
        `deliver`).
        """
        parsed = parse_sly_url(prediction.url)
        if parsed is None:
            return f"unresolved:{prediction.source}:{prediction.name or prediction.index}"
        kind, ident = parsed
        if kind == "videos":
            return f"video:{ident}:frame:{prediction.frame_index}"
        return f"image:{ident}"

    def deliver(self, batch: Sequence[Prediction]) -> DeliveryResult:
        """Write a batch of predictions, in bulk per dataset (at most 50 images a call).

        Idempotent: objects carry this job's tag, and a write first removes the objects
        of this job already on the image, so a repeat never duplicates.

        Raises:
            DeliveryError: A retryable request failed after its retries (the runtime
                may deliver the batch again).
        """
        if self.project_id is None:
            raise RuntimeError("SuperviselyConnector.deliver called before prepare")
        result = DeliveryResult()
        targets: dict[str, _Target] = {}
        for prediction in batch:
            key = self.item_key(prediction)
            reason = self._target(prediction, key, targets)
            if reason is not None:
                result.failed[key] = reason
        by_dataset: dict[int, list[_Target]] = defaultdict(list)
        for target in targets.values():
            if target.key not in result.failed:
                by_dataset[target.dataset_id].append(target)
        for dataset_id, items in by_dataset.items():
            for start in range(0, len(items), MAX_ANNOTATIONS_PER_CALL):
                chunk = items[start : start + MAX_ANNOTATIONS_PER_CALL]
                self._write(dataset_id, chunk, result)
        return result

    def _target(self, prediction: Prediction, key: str, targets: dict[str, _Target]) -> str | None:
        """Add the prediction to ``targets``; return why it cannot be delivered, or None."""
        parsed = parse_sly_url(prediction.url)
        if parsed is None:
            return (
                f"not a Supervisely image: url {prediction.url!r} is not 'sly://images/<image_id>'"
            )
        if parsed[0] == "videos":
            return "uploading predictions on Supervisely videos is not supported yet"
        if prediction.error is not None:
            return f"prediction failed: {prediction.error}"
        image_id = parsed[1]
        if self.mode == "create":
            if image_id not in self._copies:
                return f"image {image_id} was not copied into project {self.project_id}"
            dataset_id, target_id = self._copies[image_id]
        else:
            dataset_id = self._image_datasets.get(image_id)
            if dataset_id is None:
                try:
                    info = self.client.image_info(image_id)
                except DeliveryError as e:
                    if e.retryable:
                        raise
                    return str(e)
                dataset_id = self._image_datasets[image_id] = int(info["datasetId"])
            target_id = image_id
        try:
            annotation = self._annotation(prediction)
        except ValueError as e:
            return str(e)
        previous = targets.get(key)
        if previous is not None:  # the same image twice in a batch: write both
            previous.annotation["objects"].extend(annotation["objects"])
            previous.annotation["tags"].extend(annotation["tags"])
        else:
            targets[key] = _Target(key, dataset_id, target_id, annotation)
        return None

    def _annotation(self, prediction: Prediction) -> dict[str, Any]:
        if prediction.height <= 0 or prediction.width <= 0:
            raise ValueError("prediction has no image size (height/width 0)")
        annotation = prediction_to_supervisely(
            prediction, task=self.task, keypoint_names=self.keypoint_names
        )
        objects = []
        for obj in annotation["objects"]:
            obj["tags"].append({"name": JOB_TAG, "value": self.job_id})
            shape = self._class_shapes.get(obj["classTitle"])
            if shape is None:
                raise ValueError(f"class {obj['classTitle']!r} is not in the project meta")
            if obj["geometryType"] == "rectangle" and shape in ("bitmap", "polygon"):
                obj = _rectangle_as(obj, shape)
            objects.append(obj)
        annotation["objects"] = objects
        return annotation

    def _is_ours(self, obj: dict[str, Any]) -> bool:
        return any(
            t.get("name") == JOB_TAG and t.get("value") == self.job_id for t in obj.get("tags", [])
        )

    def _merged(self, current: dict[str, Any] | None, ours: dict[str, Any]) -> dict[str, Any]:
        if current is None:
            current = {"description": "", "size": ours["size"], "tags": [], "objects": []}
        base = [o for o in current.get("objects", []) if not self._is_ours(o)]
        new = ours["objects"]
        if self.mode == "iou_merge":
            boxes = [(o.get("classTitle"), _object_box(o)) for o in base]
            kept = []
            for obj in new:
                box = _object_box(obj)
                duplicate = box is not None and any(
                    title == obj["classTitle"]
                    and other is not None
                    and _iou(box, other) >= self.iou_threshold
                    for title, other in boxes
                )
                if not duplicate:
                    kept.append(obj)
            new = kept
        tags = list(current.get("tags", []))
        signatures = {_signature(t) for t in tags}
        tags += [t for t in ours["tags"] if _signature(t) not in signatures]
        return {**current, "tags": tags, "objects": base + new}

    def _write(self, dataset_id: int, chunk: list[_Target], result: DeliveryResult) -> None:
        pairs: list[tuple[_Target, dict[str, Any]]] = []
        if self.mode in ("append", "iou_merge"):
            current = self.client.annotations_info(dataset_id, [t.image_id for t in chunk])
            for target in chunk:
                existing = current.get(target.image_id)
                merged = self._merged(existing, target.annotation)
                if existing is not None and _same_content(existing, merged):
                    result.delivered.append(target.key)  # already there (a repeat)
                else:
                    pairs.append((target, merged))
        else:
            pairs = [(target, target.annotation) for target in chunk]
        if not pairs:
            return
        try:
            self.client.add_annotations(dataset_id, [(t.image_id, a) for t, a in pairs])
            result.delivered.extend(t.key for t, _ in pairs)
            return
        except DeliveryError as e:
            if e.retryable:
                raise
            if len(pairs) == 1:
                result.failed[pairs[0][0].key] = str(e)
                return
        # A call was refused: write image by image to find which ones the server rejects.
        for target, annotation in pairs:
            try:
                self.client.add_annotations(dataset_id, [(target.image_id, annotation)])
                result.delivered.append(target.key)
            except DeliveryError as e:
                if e.retryable:
                    raise
                result.failed[target.key] = str(e)


def _same_content(a: dict[str, Any], b: dict[str, Any]) -> bool:
    def signatures(ann: dict[str, Any], field: str) -> list[str]:
        return sorted(_signature(x) for x in ann.get(field, []))

    return signatures(a, "objects") == signatures(b, "objects") and signatures(
        a, "tags"
    ) == signatures(b, "tags")


def _image_ref(info: dict[str, Any]) -> dict[str, Any]:
    if info.get("hash"):
        return {"name": info["name"], "hash": info["hash"]}
    if info.get("link"):
        return {"name": info["name"], "link": info["link"]}
    raise ValueError(f"image {info['id']} ({info['name']}) has neither a hash nor a link")


def _depth(dataset_id: int, datasets: dict[int, dict[str, Any]]) -> int:
    depth, current, seen = 0, datasets[dataset_id].get("parentId"), {dataset_id}
    while current is not None and current in datasets and current not in seen:
        seen.add(current)
        depth += 1
        current = datasets[current].get("parentId")
    return depth


def _written_shapes(declared: str, task: str) -> set[str]:
    """Geometry types the connector writes for a class `supervisely_meta` declares so."""
    if declared == "graph":
        return {"graph"}
    if task == "instance_segmentation":
        return {"bitmap", "rectangle"}  # an empty mask falls back to its rectangle
    return {"rectangle"}


def _shape_accepts(shape: str, written: set[str]) -> bool:
    if shape == "any" or written == {shape}:
        return True
    # Rectangles are converted into a bitmap or polygon class's shape.
    return shape in ("bitmap", "polygon") and written <= {"rectangle", shape}


# ---------------------------------------------------------------------- inputs
class SuperviselyFetcher:
    """Downloads Supervisely images named by ``sly://images/<id>`` URLs (picklable).

    The engine's decode tasks call it, each holding its own copy; every download goes
    through the client's gate, so a job's downloads share its rate limit.

    Args:
        client: The client to download with; None builds one from the environment.

    Example:
        >>> fetch = SuperviselyFetcher()                    # doctest: +SKIP
        >>> len(fetch("sly://images/42"))                   # doctest: +SKIP
        48213
    """

    def __init__(self, client: SuperviselyClient | None = None) -> None:
        self.client = client if client is not None else SuperviselyClient()

    def open(
        self, requests_per_second: float | None = 10.0, max_in_flight: int | None = 8
    ) -> SuperviselyFetcher:
        """A copy whose downloads share a new rate limiter (a Ray actor); see `close`.

        Args:
            requests_per_second: Download requests started per second, across every
                decode task of the job.
            max_in_flight: Downloads running at once.
        """
        from connectors.runtime import LimiterGate, new_rate_limiter

        limiter = new_rate_limiter(requests_per_second, max_in_flight)
        client = copy.copy(self.client)
        client.gate = LimiterGate(limiter)
        opened = SuperviselyFetcher(client)
        opened._limiter = limiter
        return opened

    def close(self) -> None:
        """Stop the rate limiter that `open` started, if any."""
        limiter = getattr(self, "_limiter", None)
        if limiter is not None:
            import ray

            ray.kill(limiter)
            self._limiter = None

    def __call__(self, url: str) -> bytes:
        """Return the encoded image a ``sly://images/<id>`` URL names."""
        parsed = parse_sly_url(url)
        if parsed is None or parsed[0] != "images":
            raise ValueError(f"{url}: not a Supervisely image URL (sly://images/<id>)")
        return self.client.download_image(parsed[1])

    def __repr__(self) -> str:
        return f"SuperviselyFetcher(server={self.client.server_address!r})"


@dataclass
class SuperviselyInputs:
    """Supervisely images and videos resolved for prediction.

    Attributes:
        images: One dict per image (see `SuperviselyClient.list_images`).
        videos: One dict per video: ``id``, ``name``, ``path`` (the local copy), ``url``,
            ``dataset``.
        sources: What an upload needs to know about where the inputs came from
            (``project_id``, ``dataset_ids``, ``image_ids``).
        fetcher: Downloads the images (see `SuperviselyFetcher`).
    """

    images: list[dict[str, Any]]
    videos: list[dict[str, Any]]
    sources: dict[str, Any]
    fetcher: SuperviselyFetcher


def resolve_supervisely_inputs(
    project_ids: Sequence[int] = (),
    dataset_ids: Sequence[int] = (),
    image_ids: Sequence[int] = (),
    video_ids: Sequence[int] = (),
    video_dir: str | Path | None = None,
    client: SuperviselyClient | None = None,
) -> SuperviselyInputs:
    """List the images of projects, datasets and ids, and fetch each video once.

    Args:
        project_ids: Every image of these projects.
        dataset_ids: Every image of these datasets.
        image_ids: These images.
        video_ids: These videos; each is downloaded once into ``video_dir`` and then
            predicted like a local video (frame options apply).
        video_dir: Where videos are kept (default: a new temporary folder).
        client: The client; None builds one from the environment.

    Returns:
        The images (in project, dataset, id order), the videos and the sources.
    """
    client = client if client is not None else SuperviselyClient()
    images: list[dict[str, Any]] = []
    for project_id in project_ids:
        images.extend(client.list_images(project_id=int(project_id)))
    for dataset_id in dataset_ids:
        images.extend(client.list_images(dataset_id=int(dataset_id)))
    if image_ids:
        images.extend(client.list_images(image_ids=[int(i) for i in image_ids]))
    videos: list[dict[str, Any]] = []
    if video_ids:
        folder = Path(video_dir) if video_dir else Path(tempfile.mkdtemp(prefix="tessera-sly-"))
        folder.mkdir(parents=True, exist_ok=True)
        for video_id in video_ids:
            info = client.video_info(int(video_id))
            name = str(info.get("name") or f"video_{video_id}.mp4")
            path = client.download_video(int(video_id), folder / f"{int(video_id)}_{name}")
            videos.append(
                {"id": int(video_id), "name": name, "path": str(path), "url": video_url(video_id)}
            )
    projects = {image["project_id"] for image in images if image.get("project_id") is not None}
    sources: dict[str, Any] = {
        "dataset_ids": sorted({image["dataset_id"] for image in images}),
        "image_ids": [image["id"] for image in images],
    }
    if len(projects) == 1:
        sources["project_id"] = int(next(iter(projects)))
    return SuperviselyInputs(images, videos, sources, SuperviselyFetcher(client))
