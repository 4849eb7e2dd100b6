"""A small in-memory stand-in for Supervisely's public API (v3), for the test suite.

It serves exactly the methods `connectors.supervisely.SuperviselyClient` uses, on
127.0.0.1 in a daemon thread, checks the ``x-api-key`` header, validates payloads (an
annotation object must name a class of the project meta whose shape matches its geometry,
or is "any"; its tags must be tag metas of the project) and can misbehave on demand:

- ``fail_next(*faults, method=None)``: the next requests (of ``method``, if given) get
  these faults in order: "429" (with ``Retry-After``), "500", "slow" (the request is
  applied, then the answer waits ``slow_s``), "drop" (the request is applied, then the
  connection is closed without an answer: a lost answer);
- ``fault_rates = {"429": p, "500": p, "slow": p, "drop": p}``: random faults (seeded);
- ``rate_limit``: requests per second over a sliding second; over it -> 429;
- ``latency``: seconds added to every answer;
- ``echo_key``: error messages quote the key received (to test that clients scrub it).

Every request is recorded (time, method, status, fault) in ``records``.

Methods: projects.info/list/create/meta/meta.update, datasets.info/list/create,
images.list/info/download/bulk.add, annotations.info/bulk.info/bulk.add,
videos.info/download. Errors answer ``{"error": message}``.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import json
import math
import random
import socket
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from PIL import Image

API_PATH = "/public/api/v3/"
SHAPES = {"rectangle", "polygon", "bitmap", "point", "line", "graph", "any"}
TAG_TYPES = {"any_number", "any_string", "none", "oneof_string"}
FAULTS = ("429", "500", "slow", "drop")


def make_png(width: int, height: int, color: tuple[int, int, int] = (90, 120, 200)) -> bytes:
    """PNG bytes of a plain image."""
    buf = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), color, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def image_hash(data: bytes) -> str:
    """Supervisely-style content hash: base64 of the SHA-256."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


class ApiError(Exception):
    """An answer with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Record:
    """One request the stand-in received."""

    time: float
    method: str
    status: int | None  # None: the connection was dropped without an answer
    fault: str | None
    payload: dict[str, Any]


class SuperviselyStandin:
    """The stand-in server; use as a context manager or call `start` / `stop`.

    Args:
        token: The API token it accepts.
        seed: Seed of the random faults.
        per_page_max: Largest page a ``*.list`` method returns.
        max_bulk: Most images one ``annotations.bulk.add`` may hold.
    """

    def __init__(
        self,
        token: str = "sly-test-token-0123456789",
        seed: int = 0,
        per_page_max: int = 500,
        max_bulk: int = 50,
    ) -> None:
        self.token = token
        self.per_page_max = per_page_max
        self.max_bulk = max_bulk
        self.latency = 0.0
        self.slow_s = 0.5
        self.retry_after = "0.05"
        self.rate_limit: float | None = None
        self.fault_rates: dict[str, float] = {}
        self.fault_methods: set[str] | None = None  # random faults only for these methods
        self.echo_key = False  # error messages quote the x-api-key received (a leaky server)
        self.reject_images: set[int] = set()  # annotations for these images get 400
        self.records: list[Record] = []
        self._rng = random.Random(seed)
        self._scheduled: deque[tuple[str | None, str]] = deque()
        self._recent: deque[float] = deque()
        self._lock = threading.RLock()
        self._next_id = 1000
        self.workspaces: dict[int, dict[str, Any]] = {}
        self.projects: dict[int, dict[str, Any]] = {}
        self.metas: dict[int, dict[str, Any]] = {}
        self.datasets: dict[int, dict[str, Any]] = {}
        self.images: dict[int, dict[str, Any]] = {}
        self.blobs: dict[str, bytes] = {}
        self.annotations: dict[int, dict[str, Any]] = {}
        self.videos: dict[int, dict[str, Any]] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        """The server address to give the client."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> SuperviselyStandin:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> SuperviselyStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ faults
    def fail_next(self, *faults: str, method: str | None = None) -> None:
        """Queue faults for the next requests (of ``method`` when given)."""
        for fault in faults:
            if fault not in FAULTS:
                raise ValueError(f"unknown fault {fault!r}")
            self._scheduled.append((method, fault))

    def _pick_fault(self, method: str) -> str | None:
        with self._lock:
            for i, (wanted, fault) in enumerate(self._scheduled):
                if wanted is None or wanted == method:
                    del self._scheduled[i]
                    return fault
            if self.fault_methods is not None and method not in self.fault_methods:
                return None
            draw = self._rng.random()
            for fault in FAULTS:
                p = self.fault_rates.get(fault, 0.0)
                if draw < p:
                    return fault
                draw -= p
        return None

    def _over_rate(self) -> float | None:
        """Seconds until a slot frees when over the rate limit, else None (and count it)."""
        if self.rate_limit is None:
            return None
        with self._lock:
            now = time.monotonic()
            while self._recent and now - self._recent[0] >= 1.0:
                self._recent.popleft()
            if len(self._recent) >= self.rate_limit:
                return 1.0 - (now - self._recent[0])
            self._recent.append(now)
        return None

    # ------------------------------------------------------------------ queries for tests
    def count(self, method: str | None = None, status: int | None = None) -> int:
        """Requests recorded, of ``method`` and ``status`` when given."""
        return sum(
            1
            for r in list(self.records)
            if (method is None or r.method == method) and (status is None or r.status == status)
        )

    def objects(self, image_id: int) -> list[dict[str, Any]]:
        """The objects of an image's annotation."""
        return self.annotations[image_id]["objects"]

    def project_by_name(self, name: str) -> dict[str, Any] | None:
        """The project of that name, if any."""
        return next((p for p in self.projects.values() if p["name"] == name), None)

    def datasets_of(self, project_id: int) -> list[dict[str, Any]]:
        """The datasets of a project."""
        return [d for d in self.datasets.values() if d["projectId"] == project_id]

    def images_of(self, dataset_id: int) -> list[dict[str, Any]]:
        """The images of a dataset."""
        return [i for i in self.images.values() if i["datasetId"] == dataset_id]

    # ------------------------------------------------------------------ seeding
    def _new_id(self) -> int:
        with self._lock:
            self._next_id += 1
            return self._next_id

    def add_workspace(self, name: str = "ws") -> int:
        """Create a workspace; return its id."""
        wid = self._new_id()
        self.workspaces[wid] = {"id": wid, "name": name, "teamId": 1}
        return wid

    def add_project(
        self, workspace_id: int, name: str, meta: dict[str, Any] | None = None, description=""
    ) -> int:
        """Create a project (meta validated and given ids); return its id."""
        pid = self._new_id()
        self.projects[pid] = {
            "id": pid,
            "name": name,
            "description": description,
            "workspaceId": workspace_id,
            "type": "images",
        }
        self.metas[pid] = self._checked_meta(meta or {"classes": [], "tags": []})
        return pid

    def add_dataset(self, project_id: int, name: str, parent_id: int | None = None) -> int:
        """Create a dataset; return its id."""
        did = self._new_id()
        self.datasets[did] = {
            "id": did,
            "name": name,
            "projectId": project_id,
            "parentId": parent_id,
            "description": "",
        }
        return did

    def add_image(
        self,
        dataset_id: int,
        name: str,
        data: bytes,
        annotation: dict[str, Any] | None = None,
    ) -> int:
        """Store an image (and optionally its annotation, validated); return its id."""
        digest = image_hash(data)
        self.blobs[digest] = data
        info = self._new_image(dataset_id, name, digest)
        if annotation is not None:
            self._check_annotation(self.datasets[dataset_id]["projectId"], annotation)
            self.annotations[info["id"]] = self._stored(annotation)
        return info["id"]

    def add_video(self, dataset_id: int, name: str, data: bytes) -> int:
        """Store a video file; return its id."""
        vid = self._new_id()
        self.videos[vid] = {
            "id": vid,
            "name": name,
            "datasetId": dataset_id,
            "size": len(data),
            "data": data,
        }
        return vid

    def seed_project(
        self,
        datasets: dict[str, int],
        size: tuple[int, int] = (64, 48),
        meta: dict[str, Any] | None = None,
        name: str = "source",
    ) -> dict[str, Any]:
        """Make a workspace and a project with datasets of generated PNG images.

        Args:
            datasets: Dataset name -> number of images.
            size: (width, height) of the images.
            meta: The project meta.
            name: The project name.

        Returns:
            ``{"workspace_id", "project_id", "datasets": {name: id},
            "images": {image_id: dataset name}}``.
        """
        workspace = self.add_workspace()
        project = self.add_project(workspace, name, meta)
        out: dict[str, Any] = {
            "workspace_id": workspace,
            "project_id": project,
            "datasets": {},
            "images": {},
        }
        for ds_name, n in datasets.items():
            did = self.add_dataset(project, ds_name)
            out["datasets"][ds_name] = did
            for i in range(n):
                png = make_png(*size, color=(i % 256, (7 * i) % 256, len(ds_name) * 20 % 256))
                iid = self.add_image(did, f"{ds_name}_{i:04d}.png", png)
                out["images"][iid] = ds_name
        return out

    def _new_image(self, dataset_id: int, name: str, digest: str) -> dict[str, Any]:
        data = self.blobs[digest]
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
        iid = self._new_id()
        info = {
            "id": iid,
            "name": name,
            "datasetId": dataset_id,
            "projectId": self.datasets[dataset_id]["projectId"],
            "hash": digest,
            "link": None,
            "width": width,
            "height": height,
            "size": len(data),
            "mime": "image/png",
        }
        self.images[iid] = info
        self.annotations[iid] = {
            "description": "",
            "size": {"height": height, "width": width},
            "tags": [],
            "objects": [],
        }
        return info

    # ------------------------------------------------------------------ validation
    def _checked_meta(self, meta: Any) -> dict[str, Any]:
        if not isinstance(meta, dict):
            raise ApiError(400, "meta must be an object")
        classes, tags = meta.get("classes", []), meta.get("tags", [])
        titles: set[str] = set()
        out: dict[str, Any] = {"classes": [], "tags": []}
        for cls in classes:
            title, shape, color = cls.get("title"), cls.get("shape"), cls.get("color")
            if not title or shape not in SHAPES:
                raise ApiError(400, f"invalid class {cls!r}")
            if not (isinstance(color, str) and len(color) == 7 and color.startswith("#")):
                raise ApiError(400, f"class {title!r} needs a color '#RRGGBB'")
            if title in titles:
                raise ApiError(400, f"duplicate class {title!r}")
            titles.add(title)
            out["classes"].append({**cls, "id": cls.get("id") or self._new_id()})
        names: set[str] = set()
        for tag in tags:
            if not tag.get("name") or tag.get("value_type") not in TAG_TYPES:
                raise ApiError(400, f"invalid tag meta {tag!r}")
            if tag["name"] in names:
                raise ApiError(400, f"duplicate tag meta {tag['name']!r}")
            names.add(tag["name"])
            out["tags"].append({**tag, "id": tag.get("id") or self._new_id()})
        return out

    def _check_tags(self, tags: Any, tag_metas: dict[str, dict[str, Any]], where: str) -> None:
        if not isinstance(tags, list):
            raise ApiError(400, f"{where}: tags must be a list")
        for tag in tags:
            meta = tag_metas.get(tag.get("name"))
            if meta is None:
                raise ApiError(400, f"{where}: tag {tag.get('name')!r} is not in the project meta")
            value = tag.get("value")
            if meta["value_type"] == "any_number" and not isinstance(value, (int, float)):
                raise ApiError(400, f"{where}: tag {tag['name']!r} needs a number")
            if meta["value_type"] == "any_string" and not isinstance(value, str):
                raise ApiError(400, f"{where}: tag {tag['name']!r} needs a string")

    def _check_annotation(self, project_id: int, annotation: Any) -> None:
        meta = self.metas[project_id]
        classes = {c["title"]: c for c in meta["classes"]}
        tag_metas = {t["name"]: t for t in meta["tags"]}
        if not isinstance(annotation, dict):
            raise ApiError(400, "annotation must be an object")
        size = annotation.get("size", {})
        if not isinstance(size.get("height"), int) or not isinstance(size.get("width"), int):
            raise ApiError(400, "annotation.size needs integer height and width")
        self._check_tags(annotation.get("tags", []), tag_metas, "image")
        for n, obj in enumerate(annotation.get("objects", [])):
            where = f"object {n}"
            cls = classes.get(obj.get("classTitle"))
            if cls is None:
                raise ApiError(
                    400, f"{where}: class {obj.get('classTitle')!r} is not in the project meta"
                )
            geometry = obj.get("geometryType")
            if cls["shape"] != "any" and cls["shape"] != geometry:
                raise ApiError(
                    400,
                    f"{where}: class {cls['title']!r} has shape {cls['shape']!r}, "
                    f"got geometry {geometry!r}",
                )
            _check_geometry(geometry, obj, where)
            self._check_tags(obj.get("tags", []), tag_metas, where)

    def _stored(self, annotation: dict[str, Any]) -> dict[str, Any]:
        """A copy as the server keeps it: objects get ids."""
        out = copy.deepcopy(annotation)
        for obj in out.get("objects", []):
            obj.setdefault("id", self._new_id())
        out.setdefault("tags", [])
        out.setdefault("objects", [])
        return out

    # ------------------------------------------------------------------ dispatch
    def handle(self, method: str, payload: dict[str, Any]) -> Any:
        """Run an API method; return JSON-able data or bytes."""
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            raise ApiError(404, f"unknown method {method!r}")
        with self._lock:
            return handler(payload)

    def _page(self, items: list[dict[str, Any]], payload: dict[str, Any]) -> dict[str, Any]:
        items = _filtered(sorted(items, key=lambda x: x["id"]), payload.get("filter", []))
        per_page = min(int(payload.get("per_page", 50)), self.per_page_max)
        page = int(payload.get("page", 1))
        pages = max(1, math.ceil(len(items) / per_page))
        chunk = items[(page - 1) * per_page : page * per_page]
        return {
            "total": len(items),
            "perPage": per_page,
            "pagesCount": pages,
            "entities": copy.deepcopy(chunk),
        }

    def _get(self, table: dict[int, dict[str, Any]], key: Any, what: str) -> dict[str, Any]:
        try:
            return table[int(key)]
        except (KeyError, TypeError, ValueError):
            raise ApiError(404, f"{what} {key!r} not found") from None

    # projects
    def _m_projects_info(self, p: dict[str, Any]) -> Any:
        return dict(self._get(self.projects, p.get("id"), "project"))

    def _m_projects_list(self, p: dict[str, Any]) -> Any:
        self._get(self.workspaces, p.get("workspaceId"), "workspace")
        items = [x for x in self.projects.values() if x["workspaceId"] == p["workspaceId"]]
        return self._page(items, p)

    def _m_projects_create(self, p: dict[str, Any]) -> Any:
        workspace = p.get("workspaceId")
        self._get(self.workspaces, workspace, "workspace")
        name = p.get("name")
        if not name:
            raise ApiError(400, "projects.create needs a name")
        if any(x["name"] == name and x["workspaceId"] == workspace for x in self.projects.values()):
            raise ApiError(400, f"project with name {name!r} already exists")
        pid = self.add_project(workspace, name, description=p.get("description", ""))
        return dict(self.projects[pid])

    def _m_projects_meta(self, p: dict[str, Any]) -> Any:
        self._get(self.projects, p.get("id"), "project")
        return copy.deepcopy(self.metas[int(p["id"])])

    def _m_projects_meta_update(self, p: dict[str, Any]) -> Any:
        project = self._get(self.projects, p.get("id"), "project")
        self.metas[project["id"]] = self._checked_meta(p.get("meta"))
        return {"success": True}

    # datasets
    def _m_datasets_list(self, p: dict[str, Any]) -> Any:
        project = self._get(self.projects, p.get("projectId"), "project")
        return self._page(self.datasets_of(project["id"]), p)

    def _m_datasets_info(self, p: dict[str, Any]) -> Any:
        return dict(self._get(self.datasets, p.get("id"), "dataset"))

    def _m_datasets_create(self, p: dict[str, Any]) -> Any:
        project = self._get(self.projects, p.get("projectId"), "project")
        name, parent = p.get("name"), p.get("parentId")
        if not name:
            raise ApiError(400, "datasets.create needs a name")
        if parent is not None:
            self._get(self.datasets, parent, "dataset")
        if any(
            d["name"] == name and d["parentId"] == parent for d in self.datasets_of(project["id"])
        ):
            raise ApiError(400, f"dataset with name {name!r} already exists")
        return dict(self.datasets[self.add_dataset(project["id"], name, parent)])

    # images
    def _m_images_list(self, p: dict[str, Any]) -> Any:
        dataset = self._get(self.datasets, p.get("datasetId"), "dataset")
        return self._page(self.images_of(dataset["id"]), p)

    def _m_images_info(self, p: dict[str, Any]) -> Any:
        return dict(self._get(self.images, p.get("id"), "image"))

    def _m_images_download(self, p: dict[str, Any]) -> Any:
        return self.blobs[self._get(self.images, p.get("id"), "image")["hash"]]

    def _m_images_bulk_add(self, p: dict[str, Any]) -> Any:
        dataset = self._get(self.datasets, p.get("datasetId"), "dataset")
        images = p.get("images")
        if not isinstance(images, list) or not images:
            raise ApiError(400, "images.bulk.add needs a non-empty 'images' list")
        present = {i["name"] for i in self.images_of(dataset["id"])}
        names = [i.get("name") or i.get("title") for i in images]
        for name, image in zip(names, images):
            if not name:
                raise ApiError(400, "every image needs a name")
            if name in present or names.count(name) > 1:
                raise ApiError(400, f"image with name {name!r} already exists in the dataset")
            if image.get("hash") not in self.blobs:
                raise ApiError(400, f"unknown image hash for {name!r}")
        return [dict(self._new_image(dataset["id"], n, i["hash"])) for n, i in zip(names, images)]

    # annotations
    def _annotation_info(self, image: dict[str, Any]) -> dict[str, Any]:
        return {
            "imageId": image["id"],
            "imageName": image["name"],
            "datasetId": image["datasetId"],
            "annotation": copy.deepcopy(self.annotations[image["id"]]),
        }

    def _m_annotations_info(self, p: dict[str, Any]) -> Any:
        return self._annotation_info(self._get(self.images, p.get("imageId"), "image"))

    def _m_annotations_bulk_info(self, p: dict[str, Any]) -> Any:
        dataset = self._get(self.datasets, p.get("datasetId"), "dataset")
        out = []
        for image_id in p.get("imageIds", []):
            image = self._get(self.images, image_id, "image")
            if image["datasetId"] != dataset["id"]:
                raise ApiError(400, f"image {image_id} is not in dataset {dataset['id']}")
            out.append(self._annotation_info(image))
        return out

    def _m_annotations_bulk_add(self, p: dict[str, Any]) -> Any:
        dataset = self._get(self.datasets, p.get("datasetId"), "dataset")
        items = p.get("annotations")
        if not isinstance(items, list):
            raise ApiError(400, "annotations.bulk.add needs an 'annotations' list")
        if len(items) > self.max_bulk:
            raise ApiError(400, f"at most {self.max_bulk} annotations per call, got {len(items)}")
        for item in items:  # all or nothing
            image = self._get(self.images, item.get("imageId"), "image")
            if image["id"] in self.reject_images:
                raise ApiError(400, f"image {image['id']}: annotation refused")
            if image["datasetId"] != dataset["id"]:
                raise ApiError(400, f"image {image['id']} is not in dataset {dataset['id']}")
            self._check_annotation(dataset["projectId"], item.get("annotation"))
        for item in items:
            self.annotations[int(item["imageId"])] = self._stored(item["annotation"])
        return {"success": True}

    # videos
    def _m_videos_info(self, p: dict[str, Any]) -> Any:
        video = self._get(self.videos, p.get("id"), "video")
        return {k: v for k, v in video.items() if k != "data"}

    def _m_videos_download(self, p: dict[str, Any]) -> Any:
        return self._get(self.videos, p.get("id"), "video")["data"]


def _filtered(items: list[dict[str, Any]], filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for f in filters:
        field, op, value = f.get("field"), f.get("operator"), f.get("value")
        if op == "in":
            wanted = set(value)
            items = [x for x in items if x.get(field) in wanted]
        elif op == "=":
            items = [x for x in items if x.get(field) == value]
        else:
            raise ApiError(400, f"unsupported filter operator {op!r}")
    return items


def _check_geometry(geometry: str | None, obj: dict[str, Any], where: str) -> None:
    try:
        if geometry == "rectangle":
            exterior = obj["points"]["exterior"]
            if len(exterior) != 2 or not all(isinstance(v, int) for pt in exterior for v in pt):
                raise ApiError(400, f"{where}: a rectangle needs 2 integer points")
        elif geometry == "polygon":
            if len(obj["points"]["exterior"]) < 3:
                raise ApiError(400, f"{where}: a polygon needs at least 3 points")
        elif geometry == "point":
            if len(obj["points"]["exterior"]) != 1:
                raise ApiError(400, f"{where}: a point needs 1 point")
        elif geometry == "bitmap":
            x, y = obj["bitmap"]["origin"]
            data = zlib.decompress(base64.b64decode(obj["bitmap"]["data"]))
            Image.open(io.BytesIO(data)).verify()
        elif geometry == "graph":
            if not isinstance(obj["nodes"], dict):
                raise ApiError(400, f"{where}: a graph needs nodes")
        else:
            raise ApiError(400, f"{where}: unknown geometryType {geometry!r}")
    except ApiError:
        raise
    except Exception as e:  # noqa: BLE001 - any malformed geometry is a 400
        raise ApiError(400, f"{where}: malformed {geometry} geometry ({type(e).__name__})") from e


def _make_handler(server: SuperviselyStandin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return None

        def _answer(self, status: int, body: bytes, ctype: str, headers=None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting
                self.close_connection = True

        def _error(self, status: int, message: str, headers=None) -> None:
            if server.echo_key:
                message += f" (x-api-key {self.headers.get('x-api-key')!r})"
            body = json.dumps({"error": message}).encode()
            self._answer(status, body, "application/json", headers)

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            method = self.path[len(API_PATH) :] if self.path.startswith(API_PATH) else self.path
            try:
                payload = json.loads(raw or b"{}")
            except ValueError:
                payload = None
            record = Record(time.monotonic(), method, None, None, payload or {})
            server.records.append(record)
            if self.headers.get("x-api-key") != server.token:
                record.status = 401
                return self._error(401, "Unauthorized: invalid or missing x-api-key")
            if payload is None or not isinstance(payload, dict):
                record.status = 400
                return self._error(400, "body must be a JSON object")
            wait = server._over_rate()
            if wait is not None:
                record.status, record.fault = 429, "rate"
                return self._error(
                    429, "Too many requests", {"Retry-After": f"{max(wait, 0.01):.3f}"}
                )
            fault = server._pick_fault(method)
            record.fault = fault
            if fault == "429":
                record.status = 429
                return self._error(429, "Too many requests", {"Retry-After": server.retry_after})
            if fault == "500":
                record.status = 500
                return self._error(500, "Internal server error")
            if server.latency:
                time.sleep(server.latency)
            try:
                result = server.handle(method, payload)
                status = 200
            except ApiError as e:
                status = e.status
                message = e.message
                if server.echo_key:
                    message += f" (x-api-key {self.headers.get('x-api-key')!r})"
                result = {"error": message}
            if fault == "drop":  # applied, but the answer is lost
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return None
            if fault == "slow":
                time.sleep(server.slow_s)
            record.status = status
            if isinstance(result, bytes):
                return self._answer(status, result, "application/octet-stream")
            return self._answer(status, json.dumps(result).encode(), "application/json")

    return Handler
