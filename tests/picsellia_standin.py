"""A stand-in Picsellia server on 127.0.0.1, playing the main host and the monitoring host.

It answers what a deployment monitor sends (see ``../shared/FORMATS.md`` "Picsellia"):

- main host (bearer API token): ``GET /api/home/ping`` (the default organization),
  ``GET /api/organization/<org>/deployments/find?id=|name=`` (the deployment, whose
  ``oracle_host`` is this server), ``GET /api/deployment/<id>`` (with its model version
  ids), ``GET /api/model/version/<id>`` (its ``labels`` ``{"1": "car", ...}``) and
  ``GET /api/deployment/<id>/labels``;
- monitoring host: ``POST /api/auth/login`` with ``{"api_token", "deployment_id"}`` ->
  ``{"jwt", "expires"}``, and ``POST /api/deployment/<id>/predictions`` (bearer JWT).

A prediction is checked as Picsellia checks it: a missing or expired JWT gets 401; a body
without its fields, with an undecodable image, or whose ``raw_predictions`` (or
``shadow_raw_predictions``) the SDK's pydantic model for the deployment's type refuses gets
400; a body whose ``(filename, timestamp)`` is already held gets 409 (already processed);
otherwise it is stored (the image decoded to bytes) and answered 201.

Faults on prediction POSTs: `fail_next` (``status`` answered ``count`` times, with
``Retry-After`` when given, nothing stored), `drop_after_write` (stored, then the connection
closes without an answer), `delay_s` (every answer waits), `expire_jwt` (every JWT issued so
far answers 401 from now on).

Example:
    >>> with PicselliaStandin(labels={"1": "car"}) as server:  # doctest: +SKIP
    ...     server.fail_next(429, count=2, retry_after=0.05)
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
import socket
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from standin_base import LoopbackStandin, loopback_server

__all__ = ["PicselliaStandin"]

_TYPES = ("OBJECT_DETECTION", "SEGMENTATION", "CLASSIFICATION")
_FIELDS = ("filename", "content_type", "height", "width", "latency", "raw_predictions", "image")


def _prediction_model(kind: str) -> Any:
    from picsellia.types import schemas_prediction as schemas

    return {
        "OBJECT_DETECTION": schemas.DetectionPredictionFormat,
        "SEGMENTATION": schemas.SegmentationPredictionFormat,
        "CLASSIFICATION": schemas.ClassificationPredictionFormat,
    }[kind]


class PicselliaStandin(LoopbackStandin):
    """The stand-in server: a context manager, or `start` / `stop`.

    Args:
        labels: The deployment's model version labels, label id (a string) -> name.
        deployment_type: ``OBJECT_DETECTION``, ``SEGMENTATION`` or ``CLASSIFICATION``.
        api_token: The API token it accepts.
        deployment_name: The deployment's name (``find?name=``).
        shadow_labels: The shadow model version's labels, or None (no shadow model).

    Attributes:
        stored: The prediction bodies received and kept, in order, each with ``image``
            decoded to bytes.
        counts: How many prediction POSTs got each status (``"dropped"`` for those
            stored and dropped without an answer).
        logins: Successful logins.
        delay_s: Seconds every answer waits (a slow server).
    """

    def __init__(
        self,
        labels: dict[str, str] | None = None,
        deployment_type: str = "OBJECT_DETECTION",
        api_token: str = "pcs-test-token-7",
        deployment_name: str = "tessera-deploy",
        shadow_labels: dict[str, str] | None = None,
    ) -> None:
        if deployment_type not in _TYPES:
            raise ValueError(f"deployment_type {deployment_type!r} is not one of {_TYPES}")
        self.labels = dict(
            labels if labels is not None else {"1": "red", "2": "green", "3": "blue"}
        )
        self.shadow_labels = None if shadow_labels is None else dict(shadow_labels)
        self.deployment_type = deployment_type
        self.api_token = api_token
        self.deployment_name = deployment_name
        self.deployment_id = str(uuid.UUID(int=0xDE910E))
        self.organization_id = str(uuid.UUID(int=0x0DC))
        self.model_version_id = str(uuid.UUID(int=0x111))
        self.shadow_model_version_id = str(uuid.UUID(int=0x222))
        self.delay_s = 0.0
        self.stored: list[dict[str, Any]] = []
        self.counts: Counter[Any] = Counter()
        self.logins = 0
        self.requests: list[tuple[str, str, int | str]] = []  # (method, path, status)
        self._held: set[tuple[str, Any]] = set()
        self._jwts: set[str] = set()
        self._fails: list[tuple[int, float | None]] = []
        self._drops = 0
        self._expire_after: int | None = None
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._server = loopback_server(_handler(self))

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        """The base address of both hosts (main and monitoring)."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------------ faults
    def fail_next(self, status: int, count: int = 1, retry_after: float | None = None) -> None:
        """Answer the next ``count`` prediction POSTs ``status`` (nothing stored)."""
        with self._lock:
            self._fails.extend([(int(status), retry_after)] * int(count))

    def drop_after_write(self, count: int = 1) -> None:
        """Store the next ``count`` prediction POSTs, then close without answering."""
        with self._lock:
            self._drops += int(count)

    def expire_jwt(self, after: int | None = None) -> None:
        """Every JWT issued so far answers 401 from now on (a new login gets a fresh one).

        With ``after``, that happens once ``after`` more predictions have been stored (in
        the middle of a job).
        """
        with self._lock:
            if after is None:
                self._jwts.clear()
            else:
                self._expire_after = int(after)

    def images_of(self, filename: str) -> list[bytes]:
        """The image bytes of the stored bodies named ``filename``."""
        with self._lock:
            return [b["image"] for b in self.stored if b["filename"] == filename]

    # ------------------------------------------------------------------ answers
    def _deployment_json(self) -> dict[str, Any]:
        return {
            "id": self.deployment_id,
            "name": self.deployment_name,
            "type": self.deployment_type,
            "oracle_host": self.url,
            "serving_host": None,
            "review_campaign_id": None,
            "model_version_id": self.model_version_id,
            "shadow_model_version_id": (
                self.shadow_model_version_id if self.shadow_labels is not None else None
            ),
        }

    def _version_json(self, version_id: str) -> dict[str, Any] | None:
        if version_id == self.model_version_id:
            labels = self.labels
        elif version_id == self.shadow_model_version_id and self.shadow_labels is not None:
            labels = self.shadow_labels
        else:
            return None
        origin = {"id": str(uuid.UUID(int=0x333)), "name": "model"}
        return {
            "id": version_id,
            "name": "v",
            "version": 1,
            "labels": labels,
            "type": self.deployment_type,
            "framework": "PYTORCH",
            "origin": origin,
        }

    def main_get(self, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        """Answer a GET of the main host."""
        if path == "/api/home/ping":
            answer = {"sdk_version": "6.37.0", "username": "tester"}
            return 200, {**answer, "default_organization": self.organization_id}
        found = re.fullmatch(r"/api/organization/([^/]+)/deployments/find", path)
        if found:
            if found.group(1) != self.organization_id:
                return 404, {"message": f"no organization {found.group(1)}"}
            wanted_id = query.get("id", [None])[0]
            wanted_name = query.get("name", [None])[0]
            if wanted_id == self.deployment_id or (
                wanted_id is None and wanted_name == self.deployment_name
            ):
                return 200, self._deployment_json()
            return 404, {"message": "deployment not found"}
        if path == f"/api/deployment/{self.deployment_id}":
            return 200, self._deployment_json()
        if path == f"/api/deployment/{self.deployment_id}/labels":
            items = [{"id": k, "name": v} for k, v in self.labels.items()]
            return 200, {"items": items, "count": len(items)}
        found = re.fullmatch(r"/api/model/version/([^/]+)", path)
        if found and (version := self._version_json(found.group(1))) is not None:
            return 200, version
        return 404, {"message": f"not found: {path}"}

    def login(self, body: Any) -> tuple[int, Any]:
        """Answer ``POST /api/auth/login``."""
        if (
            not isinstance(body, dict)
            or body.get("api_token") != self.api_token
            or body.get("deployment_id") != self.deployment_id
        ):
            return 401, {"message": "Unauthorized"}
        with self._lock:
            jwt = f"jwt-{next(self._ids)}-{uuid.uuid4().hex[:8]}"
            self._jwts.add(jwt)
            self.logins += 1
        return 200, {"jwt": jwt, "expires": 3600}

    def check_body(self, body: Any) -> tuple[str | None, dict[str, Any] | None]:
        """The reason a prediction body is malformed (or None), and the body to store."""
        if not isinstance(body, dict):
            return "the body is not a JSON object", None
        missing = [f for f in _FIELDS if f not in body]
        if missing:
            return f"missing fields: {', '.join(missing)}", None
        if str(body["content_type"]).upper() not in ("IMAGE/PNG", "IMAGE/JPEG"):
            return f"content type {body['content_type']!r} is not supported", None
        for name in ("height", "width"):
            if not isinstance(body[name], int) or body[name] <= 0:
                return f"{name} must be a positive integer, got {body[name]!r}", None
        if not isinstance(body["latency"], (int, float)):
            return f"latency must be a number, got {body['latency']!r}", None
        try:
            image = base64.b64decode(str(body["image"]), validate=True)
        except (binascii.Error, ValueError):
            return "image is not base64", None
        model = _prediction_model(self.deployment_type)
        shadowed = ["raw_predictions"]
        if "shadow_raw_predictions" in body:
            if not isinstance(body.get("shadow_latency"), (int, float)):
                return "shadow_raw_predictions needs a numeric shadow_latency", None
            shadowed.append("shadow_raw_predictions")
        for name in shadowed:
            try:
                model.model_validate(body[name])
            except Exception as error:  # pydantic's ValidationError, a TypeError...
                return f"{name} is not a valid {model.__name__}: {error}", None
        return None, {**body, "image": image}

    def predictions(self, deployment_id: str, jwt: str | None, body: Any) -> tuple[Any, Any]:
        """Answer ``POST /api/deployment/<id>/predictions``: (status or "drop", body)."""
        with self._lock:
            if jwt is None or jwt not in self._jwts:
                return 401, {"message": "Token is invalid or expired"}
            if deployment_id != self.deployment_id:
                return 404, {"message": f"no deployment {deployment_id}"}
            if self._fails:
                status, after = self._fails.pop(0)
                return status, {"message": f"injected {status}", "retry_after": after}
            reason, kept = self.check_body(body)
            if reason is not None:
                return 400, {"message": reason}
            key = (kept["filename"], kept.get("timestamp"))
            if key in self._held:
                return 409, {"message": f"{key[0]} at {key[1]} is already processed"}
            self._held.add(key)
            self.stored.append(kept)
            if self._expire_after is not None:
                self._expire_after -= 1
                if self._expire_after <= 0:
                    self._expire_after = None
                    self._jwts.clear()
            if self._drops:
                self._drops -= 1
                return "drop", None
            return 201, {"id": f"p{next(self._ids)}", "filename": kept["filename"]}


def _handler(server: PicselliaStandin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # answers go at once, not after a delayed ACK

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

        def _drop(self) -> None:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def _bearer(self) -> str | None:
            value = self.headers.get("Authorization") or ""
            return value[7:] if value.startswith("Bearer ") else None

        def do_GET(self) -> None:  # noqa: N802
            if server.delay_s:
                time.sleep(server.delay_s)
            parts = urlsplit(self.path)
            if self._bearer() != server.api_token:
                status, body = 401, {"message": "Invalid API token"}
            else:
                status, body = server.main_get(parts.path, parse_qs(parts.query))
            server.requests.append(("GET", parts.path, status))
            self._answer(status, body)

        def do_POST(self) -> None:  # noqa: N802
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if server.delay_s:
                time.sleep(server.delay_s)
            path = urlsplit(self.path).path
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = None
            found = re.fullmatch(r"/api/deployment/([^/]+)/predictions", path)
            if path == "/api/auth/login":
                status, answer = server.login(body)
            elif found:
                status, answer = server.predictions(found.group(1), self._bearer(), body)
                with server._lock:
                    server.counts["dropped" if status == "drop" else status] += 1
            else:
                status, answer = 404, {"message": f"not found: {path}"}
            server.requests.append(("POST", path, status))
            if status == "drop":
                return self._drop()
            headers = {}
            if isinstance(answer, dict) and answer.get("retry_after") is not None:
                headers["Retry-After"] = str(answer.pop("retry_after"))
            return self._answer(status, answer, headers)

    return Handler
