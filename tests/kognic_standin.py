"""A stand-in Kognic on 127.0.0.1: the token endpoint and the predictions API, with faults.

Two real threaded HTTP servers on ports chosen by the OS:

- ``auth_url``: ``POST /v1/auth/oauth/token`` (client credentials, form-encoded, as
  ``kognic-auth`` sends them) -> ``{"access_token", "token_type", "expires_in"}``; wrong
  credentials get 401 ``{"error": "invalid_client"}``. A token expires after `token_ttl_s`,
  or at once with `expire_tokens` (and after every `expire_every` predictions stored).
- ``url``: the API (see ``../shared/FORMATS.md``, Kognic, and the assumed calls in
  ``connectors/kognic/groups.py`` and ``scenes.py``): ``GET``/``POST
  /v1/datasets/{uuid}/predictions-groups``, ``GET /v1/datasets/{uuid}/scenes``, ``GET``/``POST
  /v1/predictions-groups/{uuid}/predictions``. A request without a valid bearer token gets
  401. A group name is unique per dataset (409); a segmentation dataset's group needs a
  ``classMapping`` naming every class of the dataset and ``_background`` (else 400). A
  prediction is checked with ``kognic-openlabel`` (``OpenLabelAnnotation``), its object data
  must be ``bbox``, ``cuboid`` or ``image`` (a grayscale PNG), and its scene must be one of
  the group's dataset; else 400. The stand-in stores every prediction it accepts, even a
  second one for a scene, so that a test sees duplicates.

Faults: ``fail_next(*faults, op=...)`` gives the next requests of an operation
(``list_groups``, ``create_group``, ``scenes``, ``post_prediction``, ``list_predictions``)
these faults, in order: ``"429"`` (with ``Retry-After``), ``"503"`` (with ``Retry-After``),
``"500"``, nothing applied; ``"slow"`` (answered after `slow_s`); ``"drop"`` (applied, then
the connection closes without an answer). `refuse` answers every prediction of some scenes
with a status until `refuse` is cleared. With `rate_limit` set, a request over that many in
a sliding second gets 429 with ``Retry-After``; `latency_s` delays every API answer.

The API server counts its open TCP connections (keep-alive ones included, from accept to
close): `open_connections` now, `max_open_connections` the most at once.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import re
import socket
import threading
import time
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

FAULTS = ("429", "503", "500", "slow", "drop")
OPERATIONS = ("list_groups", "create_group", "scenes", "post_prediction", "list_predictions")
ACCEPTED_DATA = {"bbox", "cuboid", "image"}
_ROUTES = [
    ("GET", re.compile(r"^/v1/datasets/([\w-]+)/predictions-groups$"), "list_groups"),
    ("POST", re.compile(r"^/v1/datasets/([\w-]+)/predictions-groups$"), "create_group"),
    ("GET", re.compile(r"^/v1/datasets/([\w-]+)/scenes$"), "scenes"),
    ("POST", re.compile(r"^/v1/predictions-groups/([\w-]+)/predictions$"), "post_prediction"),
    ("GET", re.compile(r"^/v1/predictions-groups/([\w-]+)/predictions$"), "list_predictions"),
]


class Refusal(Exception):
    """An answer with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _CountingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler: type, on_open: Any, on_close: Any) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self._on_open, self._on_close = on_open, on_close

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        self._on_open()
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._on_close()


class KognicStandin:
    """The stand-in servers: a context manager, or `start` / `stop`.

    Args:
        client_id: The client id it accepts.
        client_secret: The secret it accepts.
        token_ttl_s: Seconds a token lives.
    """

    def __init__(
        self,
        client_id: str = "kognic-test-client",
        client_secret: str = "kognic-test-secret-31",
        token_ttl_s: float = 3600.0,
    ) -> None:
        self.client_id, self.client_secret = client_id, client_secret
        self.token_ttl_s = token_ttl_s
        self.expire_every: int | None = None  # expire all tokens after this many predictions
        self.retry_after = "0.05"
        self.slow_s = 0.3
        self.rate_limit: float | None = None
        self.latency_s = 0.0
        self.datasets: dict[str, dict[str, Any]] = {}
        self.groups: dict[str, dict[str, Any]] = {}
        self.predictions: dict[str, list[dict[str, Any]]] = {}
        self.tokens: dict[str, float] = {}  # token -> when it expires
        self.tokens_issued = 0
        self.refuse: dict[str, int] = {}  # scene uuid -> status for its predictions
        self.records: list[tuple[str, int | None, str | None]] = []
        self.served: list[float] = []  # when each answer below 400 went
        self.open_connections = 0
        self.max_open_connections = 0
        self._faults: dict[str, deque[str]] = {}
        self._recent: deque[float] = deque()
        self._stored = 0
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._api = _CountingServer(_api_handler(self), self._opened, self._closed)
        self._auth = ThreadingHTTPServer(("127.0.0.1", 0), _auth_handler(self))
        self._auth.daemon_threads = True

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        """The API's base address (``KOGNIC_HOST``)."""
        host, port = self._api.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def auth_url(self) -> str:
        """The authentication server's base address (``KOGNIC_AUTH_HOST``)."""
        host, port = self._auth.server_address[:2]
        return f"http://{host}:{port}"

    def env(self) -> dict[str, str]:
        """The environment variables a client of this stand-in needs."""
        return {
            "KOGNIC_CLIENT_ID": self.client_id,
            "KOGNIC_CLIENT_SECRET": self.client_secret,
            "KOGNIC_HOST": self.url,
            "KOGNIC_AUTH_HOST": self.auth_url,
        }

    def start(self) -> KognicStandin:
        """Serve both in daemon threads."""
        for server in (self._api, self._auth):
            threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            ).start()
        return self

    def stop(self) -> None:
        """Stop serving and close the sockets."""
        for server in (self._api, self._auth):
            server.shutdown()
            server.server_close()

    def __enter__(self) -> KognicStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _opened(self) -> None:
        with self._lock:
            self.open_connections += 1
            self.max_open_connections = max(self.max_open_connections, self.open_connections)

    def _closed(self) -> None:
        with self._lock:
            self.open_connections -= 1

    # ------------------------------------------------------------------ test helpers
    def add_dataset(self, kind: str = "detection", classes: list[str] | None = None) -> str:
        """A dataset (``"detection"`` or ``"segmentation"``, with its classes); its uuid."""
        if kind not in ("detection", "segmentation"):
            raise ValueError(f"unknown dataset type {kind!r}")
        with self._lock:
            dataset = str(uuid.uuid4())
            self.datasets[dataset] = {"type": kind, "classes": list(classes or []), "scenes": []}
            return dataset

    def add_scene(
        self, dataset: str, external_id: str | None = None, name: str | None = None
    ) -> str:
        """A scene of ``dataset``; its uuid."""
        with self._lock:
            scene = str(uuid.uuid4())
            row = {"uuid": scene, "externalId": external_id, "name": name or f"scene {scene[:8]}"}
            self.datasets[dataset]["scenes"].append(row)
            return scene

    def add_group(self, dataset: str, name: str, description: str = "") -> str:
        """A predictions group (as someone else made it); its uuid."""
        with self._lock:
            return self._new_group(dataset, {"name": name, "description": description})

    def fail_next(self, *faults: str, op: str) -> None:
        """Give the next requests of operation ``op`` these faults."""
        if op not in OPERATIONS:
            raise ValueError(f"unknown operation {op!r}; operations: {OPERATIONS}")
        for fault in faults:
            if fault not in FAULTS:
                raise ValueError(f"unknown fault {fault!r}; faults: {FAULTS}")
        with self._lock:
            self._faults.setdefault(op, deque()).extend(faults)

    def expire_tokens(self) -> None:
        """Make every token issued so far invalid."""
        with self._lock:
            self.tokens = {t: 0.0 for t in self.tokens}

    def count(self, op: str, status: int | None = None, fault: str | None = None) -> int:
        """Requests of ``op`` received (with that answer status / fault, when given)."""
        return sum(
            1
            for o, s, f in self.records
            if o == op and (status is None or s == status) and (fault is None or f == fault)
        )

    def predictions_of(self, group: str) -> list[dict[str, Any]]:
        """The predictions a group holds: ``{"uuid", "sceneUuid", "content"}``."""
        with self._lock:
            return list(self.predictions.get(group, []))

    def group_named(self, dataset: str, name: str) -> dict[str, Any]:
        """The group of that name in ``dataset`` (with its ``uuid``)."""
        with self._lock:
            for group_uuid, group in self.groups.items():
                if group["dataset"] == dataset and group["name"] == name:
                    return {"uuid": group_uuid, **group}
        raise KeyError(f"no group {name!r} in dataset {dataset}")

    # ------------------------------------------------------------------ serving
    def take_fault(self, op: str) -> str | None:
        """The next fault queued for ``op``, else a 429 when over `rate_limit`, else None."""
        with self._lock:
            if self.rate_limit is not None:
                now = time.monotonic()
                while self._recent and now - self._recent[0] >= 1.0:
                    self._recent.popleft()
                if len(self._recent) >= self.rate_limit:
                    return "429"
                self._recent.append(now)
            queue = self._faults.get(op)
            return queue.popleft() if queue else None

    def issue_token(self, form: dict[str, str]) -> dict[str, Any]:
        """Answer a token request, or raise `Refusal`."""
        if form.get("grant_type") != "client_credentials":
            raise Refusal(400, "unsupported_grant_type")
        if (form.get("client_id"), form.get("client_secret")) != (
            self.client_id,
            self.client_secret,
        ):
            raise Refusal(401, "invalid_client")
        with self._lock:
            token = f"tok-{next(self._ids)}-{uuid.uuid4().hex[:8]}"
            self.tokens[token] = time.monotonic() + self.token_ttl_s
            self.tokens_issued += 1
        expires_in = max(int(self.token_ttl_s), 1)
        return {"access_token": token, "token_type": "Bearer", "expires_in": expires_in}

    def authorized(self, header: str | None) -> bool:
        """True for ``Bearer <token>`` of a token that has not expired."""
        if not header or not header.startswith("Bearer "):
            return False
        with self._lock:
            expires = self.tokens.get(header[len("Bearer ") :])
        return expires is not None and time.monotonic() < expires

    def operate(self, op: str, ident: str, body: Any) -> Any:
        """Answer one API operation (its JSON), or raise `Refusal`."""
        with self._lock:
            return getattr(self, "_op_" + op)(ident, body)

    def _dataset(self, dataset: str) -> dict[str, Any]:
        if dataset not in self.datasets:
            raise Refusal(404, f"no dataset {dataset}")
        return self.datasets[dataset]

    def _new_group(self, dataset: str, body: dict[str, Any]) -> str:
        group = str(uuid.uuid4())
        self.groups[group] = {
            "dataset": dataset,
            "name": body["name"],
            "description": body.get("description", ""),
            "classMapping": body.get("classMapping"),
        }
        self.predictions[group] = []
        return group

    def _op_list_groups(self, dataset: str, _: Any) -> Any:
        self._dataset(dataset)
        rows = [
            {"uuid": g, "name": found["name"], "description": found["description"]}
            for g, found in self.groups.items()
            if found["dataset"] == dataset
        ]
        return {"data": rows}

    def _op_create_group(self, dataset: str, body: Any) -> Any:
        found = self._dataset(dataset)
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise Refusal(400, "a predictions group needs a name")
        if any(g["dataset"] == dataset and g["name"] == body["name"] for g in self.groups.values()):
            raise Refusal(409, f"a predictions group named {body['name']!r} exists")
        if found["type"] == "segmentation":
            mapping = body.get("classMapping")
            if not isinstance(mapping, list):
                raise Refusal(400, "a segmentation dataset's group needs a classMapping")
            annotated = {m.get("annotatedClass") for m in mapping}
            predicted = {m.get("predictedClass") for m in mapping}
            needed = {*found["classes"], "_background"}
            if annotated != needed or "_background" not in predicted:
                raise Refusal(
                    400,
                    f"classMapping must name every class and _background: {sorted(needed)}",
                )
        return {"data": {"uuid": self._new_group(dataset, body)}}

    def _op_scenes(self, dataset: str, _: Any) -> Any:
        return {"data": [dict(s) for s in self._dataset(dataset)["scenes"]]}

    def _op_list_predictions(self, group: str, _: Any) -> Any:
        if group not in self.groups:
            raise Refusal(404, f"no predictions group {group}")
        rows = [{"uuid": p["uuid"], "sceneUuid": p["sceneUuid"]} for p in self.predictions[group]]
        return {"data": rows}

    def _op_post_prediction(self, group: str, body: Any) -> Any:
        from kognic.openlabel.models import OpenLabelAnnotation

        if group not in self.groups:
            raise Refusal(404, f"no predictions group {group}")
        if not isinstance(body, dict):
            raise Refusal(400, "the body must be a JSON object")
        scene = body.get("sceneUuid")
        scenes = {s["uuid"] for s in self.datasets[self.groups[group]["dataset"]]["scenes"]}
        if scene not in scenes:
            raise Refusal(400, f"scene {scene} is not in the group's dataset")
        if scene in self.refuse:
            raise Refusal(self.refuse[scene], f"scene {scene} is refused for now")
        content = body.get("openlabelContent")
        try:
            OpenLabelAnnotation.model_validate(content)
        except Exception as error:  # noqa: BLE001 - pydantic's ValidationError
            raise Refusal(400, f"invalid OpenLABEL: {error}") from None
        for frame in content["openlabel"].get("frames", {}).values():
            for found in (frame.get("objects") or {}).values():
                kinds = set(found.get("object_data") or {})
                if not kinds <= ACCEPTED_DATA:
                    raise Refusal(400, f"predictions take only {sorted(ACCEPTED_DATA)}: {kinds}")
                for image in found["object_data"].get("image", []):
                    _check_bitmap(image)
        row = {"uuid": str(uuid.uuid4()), "sceneUuid": scene, "content": content}
        self.predictions[group].append(row)
        self._stored += 1
        if self.expire_every and self._stored % self.expire_every == 0:
            self.expire_tokens()
        return {"data": {"uuid": row["uuid"]}}


def _check_bitmap(image: dict[str, Any]) -> None:
    from PIL import Image

    if image.get("encoding") != "base64" or image.get("mime_type") != "image/png":
        raise Refusal(400, "a segmentation bitmap is a base64 image/png")
    try:
        decoded = Image.open(io.BytesIO(base64.b64decode(image["val"])))
    except Exception:  # noqa: BLE001
        raise Refusal(400, "the segmentation bitmap is not a PNG") from None
    if decoded.mode != "L":
        raise Refusal(400, f"the segmentation bitmap must be grayscale, got mode {decoded.mode}")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return None

    def _answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))


def _auth_handler(server: KognicStandin) -> type[BaseHTTPRequestHandler]:
    class AuthHandler(_Handler):
        def do_POST(self) -> None:  # noqa: N802
            raw = self._body()
            if self.path != "/v1/auth/oauth/token":
                return self._answer(404, {"message": "not found"})
            form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
            try:
                answer = server.issue_token(form)
            except Refusal as refusal:
                server.records.append(("token", refusal.status, None))
                return self._answer(refusal.status, {"error": str(refusal)})
            server.records.append(("token", 200, None))
            return self._answer(200, answer)

    return AuthHandler


def _api_handler(server: KognicStandin) -> type[BaseHTTPRequestHandler]:
    class ApiHandler(_Handler):
        def do_GET(self) -> None:  # noqa: N802
            self._serve("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._serve("POST")

        def _drop(self) -> None:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def _serve(self, method: str) -> None:
            raw = self._body()
            route = next(
                ((op, m.group(1)) for verb, pattern, op in _ROUTES
                 if verb == method and (m := pattern.match(self.path))),
                None,
            )  # fmt: skip
            if route is None:
                return self._answer(404, {"message": f"no route {method} {self.path}"})
            op, ident = route
            if server.latency_s:
                time.sleep(server.latency_s)
            if not server.authorized(self.headers.get("Authorization")):
                server.records.append((op, 401, None))
                return self._answer(401, {"message": "the token is expired or unknown"})
            fault = server.take_fault(op)
            if fault in ("429", "503", "500"):
                server.records.append((op, int(fault), fault))
                after = {} if fault == "500" else {"Retry-After": server.retry_after}
                return self._answer(int(fault), {"message": f"fault {fault}"}, after)
            if fault == "slow":
                time.sleep(server.slow_s)
            try:
                body = json.loads(raw) if raw else None
                answer, status = server.operate(op, ident, body), 200
            except Refusal as refusal:
                answer, status = {"message": str(refusal)}, refusal.status
            if fault == "drop" and status < 400:  # applied, but the answer never comes
                server.records.append((op, None, fault))
                return self._drop()
            server.records.append((op, status, fault))
            if status < 400:
                server.served.append(time.monotonic())
            headers = {"Retry-After": server.retry_after} if status in (429, 503) else None
            return self._answer(status, answer, headers)

    return ApiHandler
