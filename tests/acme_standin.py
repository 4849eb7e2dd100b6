"""A stand-in for the Acme API (see `tessera_acme.client`), on 127.0.0.1, for the tests.

It keeps images (bytes the test gives), annotation sets and their annotations in memory,
checks the bearer token, validates every annotation (labels of the set, four box numbers,
a score in [0, 1]), and misbehaves on demand: ``fail_next(*faults, route=...)`` gives the
next requests of a route these faults, in order:

- ``"429"``: Too Many Requests with ``Retry-After`` (nothing is applied);
- ``"503"``: Service Unavailable (nothing is applied);
- ``"drop"``: the request is applied, then the connection closes without an answer (a
  lost answer: the client must not create a duplicate when it tries again).

Routes: ``images.list``, ``images.file``, ``sets.list``, ``sets.create``,
``sets.classes``, ``annotations.list``, ``annotations.create``. Every request is
recorded in ``records`` as (route, status, fault).
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from standin_base import LoopbackStandin, loopback_server

FAULTS = ("429", "503", "drop")

_ROUTES = [
    ("GET", re.compile(r"^/api/images$"), "images.list"),
    ("GET", re.compile(r"^/api/images/(\d+)/file$"), "images.file"),
    ("GET", re.compile(r"^/api/sets$"), "sets.list"),
    ("POST", re.compile(r"^/api/sets$"), "sets.create"),
    ("POST", re.compile(r"^/api/sets/(\d+)/classes$"), "sets.classes"),
    ("GET", re.compile(r"^/api/sets/(\d+)/annotations$"), "annotations.list"),
    ("POST", re.compile(r"^/api/sets/(\d+)/annotations$"), "annotations.create"),
]


class ApiError(Exception):
    """An answer with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class AcmeStandin(LoopbackStandin):
    """The stand-in server: a context manager, or `start` / `stop`.

    Args:
        token: The bearer token it accepts.
    """

    def __init__(self, token: str = "acme-test-token-42") -> None:
        self.token = token
        self.retry_after = "0.05"
        self.images: dict[int, dict[str, Any]] = {}
        self.sets: dict[int, dict[str, Any]] = {}
        self.annotations: list[dict[str, Any]] = []
        self.records: list[tuple[str, int | None, str | None]] = []
        self._faults: dict[str, deque[str]] = {}
        self._lock = threading.RLock()
        self._next_id = 1
        self._server = loopback_server(_handler(self))

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        """The address to give the client (``ACME_SERVER``)."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------------ test helpers
    def fail_next(self, *faults: str, route: str) -> None:
        """Give the next requests of ``route`` these faults, in order."""
        if route not in {r for _, _, r in _ROUTES}:
            raise ValueError(f"unknown route {route!r}")
        for fault in faults:
            if fault not in FAULTS:
                raise ValueError(f"unknown fault {fault!r}; faults: {FAULTS}")
        with self._lock:
            self._faults.setdefault(route, deque()).extend(faults)

    def count(self, route: str, status: int | None = None) -> int:
        """Requests of ``route`` received (with that answer status, when given)."""
        return sum(1 for r, s, _ in self.records if r == route and (status is None or s == status))

    def add_image(self, name: str, data: bytes, dataset: str | None = None) -> int:
        """Store an image; return its id."""
        with self._lock:
            image_id = self._new_id()
            self.images[image_id] = {"id": image_id, "name": name, "dataset": dataset, "data": data}
        return image_id

    def add_set(self, name: str, classes: list[str], job: str = "by-hand") -> int:
        """Store an annotation set; return its id."""
        with self._lock:
            return self._create_set({"name": name, "job": job, "classes": classes})["id"]

    def add_annotation(self, set_id: int, image_id: int, annotation: dict, job: str) -> None:
        """Store an annotation as if some earlier job had written it."""
        with self._lock:
            self._store(set_id, image_id, annotation, job)

    def set_named(self, name: str) -> dict[str, Any] | None:
        """The set called ``name``, or None."""
        return next((s for s in self.sets.values() if s["name"] == name), None)

    def annotations_of(self, set_id: int) -> list[dict[str, Any]]:
        """The annotations of a set: ``id``, ``image_id``, ``job``, ``annotation``."""
        return [a for a in self.annotations if a["set_id"] == set_id]

    # ------------------------------------------------------------------ the API
    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def _take_fault(self, route: str) -> str | None:
        with self._lock:
            queue = self._faults.get(route)
            return queue.popleft() if queue else None

    def handle(self, route: str, ident: int | None, query: dict[str, str], body: Any) -> Any:
        """Serve one request; bytes for a file, else a JSON-able answer."""
        with self._lock:
            return getattr(self, "_" + route.replace(".", "_"))(ident, query, body)

    def _images_list(self, _: Any, query: dict[str, str], __: Any) -> Any:
        ids = [int(i) for i in query.get("ids", "").split(",") if i]
        found = [self.images[i] for i in ids if i in self.images]
        return {"images": [{k: v for k, v in image.items() if k != "data"} for image in found]}

    def _images_file(self, ident: int, _: Any, __: Any) -> bytes:
        return self._get(self.images, ident, "image")["data"]

    def _sets_list(self, _: Any, query: dict[str, str], __: Any) -> Any:
        return {"sets": [s for s in self.sets.values() if s["name"] == query.get("name")]}

    def _sets_create(self, _: Any, __: Any, body: dict[str, Any]) -> Any:
        if self.set_named(str(body.get("name"))) is not None:
            raise ApiError(409, f"a set named {body.get('name')!r} exists")
        return {"set": self._create_set(body)}

    def _create_set(self, body: dict[str, Any]) -> dict[str, Any]:
        classes = body.get("classes")
        if not isinstance(body.get("name"), str) or not isinstance(classes, list):
            raise ApiError(400, "a set needs a name and a list of classes")
        set_id = self._new_id()
        self.sets[set_id] = {"id": set_id, "name": body["name"], "job": body.get("job")}
        self.sets[set_id]["classes"] = [str(c) for c in classes]
        return self.sets[set_id]

    def _sets_classes(self, ident: int, _: Any, body: dict[str, Any]) -> Any:
        found = self._get(self.sets, ident, "set")
        found["classes"] = list(dict.fromkeys([*found["classes"], *body.get("classes", [])]))
        return {"set": found}

    def _annotations_list(self, ident: int, query: dict[str, str], _: Any) -> Any:
        self._get(self.sets, ident, "set")
        ids = {int(i) for i in query.get("image_ids", "").split(",") if i}
        found = [
            {k: a[k] for k in ("id", "image_id", "job")}
            for a in self.annotations_of(ident)
            if a["image_id"] in ids and a["job"] == query.get("job")
        ]
        return {"annotations": found}

    def _annotations_create(self, ident: int, _: Any, body: dict[str, Any]) -> Any:
        labels = set(self._get(self.sets, ident, "set")["classes"])
        items = body.get("items")
        if not isinstance(items, list) or not isinstance(body.get("job"), str):
            raise ApiError(400, "annotations need a job and a list of items")
        for item in items:  # a bad annotation rejects the whole request, before any write
            _check_annotation(item.get("annotation"), labels)
        created, failed = [], {}
        for item in items:
            image_id = item.get("image_id")
            if image_id not in self.images:
                failed[str(image_id)] = f"HTTP 404: no image {image_id}"
                continue
            created.append(self._store(ident, image_id, item["annotation"], body["job"]))
        return {"created": created, "failed": failed}

    def _store(self, set_id: int, image_id: int, annotation: dict, job: str) -> int:
        ident = self._new_id()
        self.annotations.append(
            {
                "id": ident,
                "set_id": set_id,
                "image_id": image_id,
                "job": job,
                "annotation": annotation,
            }
        )
        return ident

    @staticmethod
    def _get(table: dict[int, dict[str, Any]], ident: int, what: str) -> dict[str, Any]:
        if ident not in table:
            raise ApiError(404, f"no {what} {ident}")
        return table[ident]


def _check_annotation(annotation: Any, labels: set[str]) -> None:
    if not isinstance(annotation, dict) or not isinstance(annotation.get("image"), str):
        raise ApiError(400, "an annotation needs an 'image' name")
    for obj in annotation.get("objects", []):
        box, score = obj.get("box"), obj.get("score")
        if obj.get("label") not in labels:
            raise ApiError(400, f"label {obj.get('label')!r} is not a class of the set")
        if not (isinstance(box, list) and len(box) == 4 and box[0] <= box[2] and box[1] <= box[3]):
            raise ApiError(400, f"bad box {box!r}")
        if not isinstance(score, (int, float)) or not 0.0 <= score <= 1.0:
            raise ApiError(400, f"bad score {score!r}")


def _handler(server: AcmeStandin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return None

        def do_GET(self) -> None:  # noqa: N802
            self._serve("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._serve("POST")

        def _answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            kind = "application/octet-stream" if isinstance(body, bytes) else "application/json"
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            route, ident = next(
                ((r, m) for verb, p, r in _ROUTES if verb == method and (m := p.match(parts.path))),
                (None, None),
            )
            if route is None:
                return self._answer(404, {"error": f"no route {method} {parts.path}"})
            if self.headers.get("Authorization") != f"Bearer {server.token}":
                server.records.append((route, 401, None))
                return self._answer(401, {"error": "invalid or missing bearer token"})
            fault = server._take_fault(route)
            if fault == "429":
                server.records.append((route, 429, fault))
                return self._answer(
                    429, {"error": "slow down"}, {"Retry-After": server.retry_after}
                )
            if fault == "503":
                server.records.append((route, 503, fault))
                return self._answer(503, {"error": "unavailable"})
            try:
                number = int(ident.group(1)) if ident.groups() else None
                result, status = server.handle(route, number, query, json.loads(raw or b"{}")), 200
            except ApiError as error:
                result, status = {"error": str(error)}, error.status
            if fault == "drop":  # applied, but the answer never comes
                server.records.append((route, None, fault))
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return None
            server.records.append((route, status, None))
            return self._answer(status, result)

    return Handler
