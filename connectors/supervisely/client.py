"""Supervisely's public API over HTTP: credentials, media URLs and the client.

The client speaks ``POST {server}/public/api/v3/<method>`` with a JSON body and the
``x-api-key`` header, as the official SDK does, with only ``requests``. Every request
goes through the connector's gate (``with gate.request():``) and is retried on its own
through `connectors.retry.call_with_retries`, so a 429 on one request never redoes the
others. Requests that create something (a project, a dataset, images) look for what a
lost answer may already have created before trying again.

Item ids: a prediction made from a Supervisely image carries
``url == "sly://images/<image_id>"`` (see `image_url`) and its dataset name in
``dataset``; frames of a Supervisely video carry ``"sly://videos/<video_id>"`` and their
``frame_index``.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import requests

from connectors.base import (
    DeliveryError,
    RequestGate,
)
from connectors.retry import RetryPolicy, call_with_retries

__all__ = [
    "API_PATH",
    "URL_SCHEME",
    "SuperviselyClient",
    "SuperviselyConfigError",
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

#: The scheme of the media URLs of Supervisely items (``sly://images/<id>``).
URL_SCHEME = "sly"
_URL_PREFIX = f"{URL_SCHEME}://"


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
