"""A stand-in for the Encord API, on 127.0.0.1, answering what the ``encord`` SDK sends.

The official client (`encord.EncordUserClient.create_with_ssh_private_key(key,
domain=standin.url)`) talks to it unchanged:

- v2: ``GET /v2/public/projects/<hash>`` (the project) and ``GET
  /v2/public/ontologies/<hash>`` (its ontology), signed with the key (``Signature-Input``
  names the public key as ``keyid``);
- v1: ``POST /public`` with ``{"query_type", "query_method", "values": {"uid",
  "payload"}}``, signed in ``Authorization: <public key hex>:<signature>``, answered
  ``{"status": 200, "response": ...}``: ``labelrowmetadata``/GET lists the label rows of a
  branch, ``labelrow``/PUT creates a branch row, ``labelrow``/GET reads rows, ``labelrow``/
  POST saves them (``{"multi_request": true, "labels": [row, ...]}``, all or nothing).

It keeps projects, data units (images, and videos: ``add_video``, whose labels are kept per
frame, ``{"<frame>": {"objects": [...]}}``, as the SDK writes them) and label rows (one per
data unit and branch) in memory,
checks the key, validates every saved object (a feature of the ontology with its shape,
coordinates in 0..1, ``confidence`` in [0, 1], ``manualAnnotation`` a bool) and misbehaves
on demand: ``fail_next(*faults, route=...)`` gives the next requests of a route these
faults, in order:

- ``"429"``: Too Many Requests with ``Retry-After`` (nothing is applied);
- ``"503"`` / ``"504"``: the gateway's error page, not JSON (nothing is applied);
- ``"slow"``: the answer comes after ``slow_s`` seconds (applied);
- ``"drop"``: the request is applied, then the connection closes without an answer (on
  ``media``: after half the body).

Routes: ``project``, ``ontology``, ``rows.list``, ``rows.create``, ``rows.get``,
``rows.save``. ``refuse(data_hash, reason)`` makes every save of that row fail with the
platform's ``CORRUPTED_LABEL_ERROR`` and the reason. Every request is recorded in
``records`` as (route, HTTP status, fault), and in ``log`` as (time, route, status);
``rate_per_s`` makes it answer 429 over that many requests in a sliding second, and
``latency_s`` delays every answer.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import re
import socket
import threading
import time
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from standin_base import LoopbackStandin, loopback_server

FAULTS = ("429", "503", "504", "slow", "drop")
ROUTES = (
    "project",
    "ontology",
    "rows.list",
    "rows.create",
    "rows.get",
    "rows.save",
    "data.get",
    "media",
)
_SHAPE_KEYS = {
    "bounding_box": "boundingBox",
    "polygon": "polygon",
    "bitmask": "bitmask",
    "point": "point",
}


def new_ssh_key() -> tuple[str, str]:
    """A fresh Ed25519 key: (OpenSSH private key text, public key hex the SDK sends)."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        .hex()
    )
    return private, public


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S UTC")


class ApiError(Exception):
    """A v1 answer carrying an error code (``response``) and a message (``payload``)."""

    def __init__(self, code: str, message: str = "", http_status: int = 200) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status


class EncordStandin(LoopbackStandin):
    """The stand-in server: a context manager, or `start` / `stop`.

    Args:
        public_keys: Public keys (hex) it accepts; a new key pair is made when None
            (`private_key` holds it).
        rate_per_s: When set, more requests than this in any one second are answered 429.
    """

    def __init__(self, public_keys: list[str] | None = None, rate_per_s: float | None = None):
        self.private_key: str | None = None
        if public_keys is None:
            self.private_key, public = new_ssh_key()
            public_keys = [public]
        self.public_keys = set(public_keys)
        self.rate_per_s = rate_per_s
        self.retry_after = "0.05"
        self.slow_s = 0.5
        self.latency_s = 0.0
        self.log: list[tuple[float, str, int]] = []  # (answer time, route, status)
        self.projects: dict[str, dict[str, Any]] = {}
        self.ontologies: dict[str, dict[str, Any]] = {}
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}  # (data hash, branch) -> row
        self.refused: dict[str, str] = {}
        self.records: list[tuple[str, int, str | None]] = []
        self.requests_at: list[float] = []
        self.saves = 0
        self._faults: dict[str, deque[str]] = {}
        self._lock = threading.RLock()
        self._server = loopback_server(_handler(self))

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        """The ``domain`` to give the SDK."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------------ test helpers
    def add_project(
        self,
        title: str,
        objects: list[tuple[str, str]],
        radio: tuple[str, list[str]] | None = None,
    ) -> str:
        """A project whose ontology has ``objects`` (title, shape); return its hash.

        ``radio`` adds a classification: one radio attribute (name, option labels).
        """
        with self._lock:
            ontology_hash = str(uuid.uuid4())
            structure = {
                "objects": [
                    {
                        "id": str(i + 1),
                        "name": name,
                        "color": "#D33115",
                        "shape": shape,
                        "featureNodeHash": hashlib.sha1(
                            f"{ontology_hash}{name}".encode()
                        ).hexdigest()[:8],
                        "required": False,
                        "archived": False,
                    }
                    for i, (name, shape) in enumerate(objects)
                ],
                "classifications": [],
            }
            if radio is not None:
                name, labels = radio
                options = [
                    {"id": f"1.1.{i + 1}", "label": label, "value": label,
                     "featureNodeHash": f"opt{i:05d}"}
                    for i, label in enumerate(labels)
                ]  # fmt: skip
                attribute = {"id": "1.1", "name": name, "type": "radio",
                             "featureNodeHash": "attr0001", "required": False,
                             "options": options}  # fmt: skip
                structure["classifications"].append(
                    {"id": "1", "featureNodeHash": "clas0001", "attributes": [attribute]}
                )
            self.ontologies[ontology_hash] = {"title": f"{title} ontology", "structure": structure}
            project_hash = str(uuid.uuid4())
            self.projects[project_hash] = {
                "title": title,
                "ontology": ontology_hash,
                "data": {},
                "dataset": str(uuid.uuid4()),
            }
            return project_hash

    def add_image(
        self, project: str, title: str, width: int, height: int, data: bytes = b""
    ) -> str:
        """Add an image data unit (with its empty ``main`` row); return its data hash."""
        with self._lock:
            data_hash = str(uuid.uuid4())
            self.projects[project]["data"][data_hash] = {
                "title": title,
                "width": width,
                "height": height,
                "bytes": data,
            }
            self._new_row(project, data_hash, "main")
            return data_hash

    def add_video(
        self,
        project: str,
        title: str,
        width: int,
        height: int,
        num_frames: int,
        fps: float = 30.0,
        data: bytes = b"",
    ) -> str:
        """Add a video data unit (with its empty ``main`` row); return its data hash."""
        with self._lock:
            data_hash = str(uuid.uuid4())
            self.projects[project]["data"][data_hash] = {
                "title": title,
                "width": width,
                "height": height,
                "bytes": data,
                "video": True,
                "frames": int(num_frames),
                "fps": float(fps),
            }
            self._new_row(project, data_hash, "main")
            return data_hash

    def frames_of(self, data_hash: str, branch: str) -> dict[int, list[dict[str, Any]]]:
        """A video row's objects by frame ({} when no row); frames without objects left out."""
        row = self.rows.get((data_hash, branch))
        if row is None:
            return {}
        labels = row["data_units"][data_hash]["labels"]
        return {
            int(frame): list(value.get("objects", []))
            for frame, value in labels.items()
            if value.get("objects")
        }

    def put_frame_objects(
        self, data_hash: str, branch: str, frames: dict[int, list[dict[str, Any]]]
    ) -> None:
        """Store ``frames`` (frame -> objects) in a video row (created when missing)."""
        with self._lock:
            project = self._project_of(data_hash)
            row = self.rows.get((data_hash, branch)) or self._new_row(project, data_hash, branch)
            labels = row["data_units"][data_hash]["labels"]
            answers = row.setdefault("object_answers", {})
            for frame, objects in frames.items():
                labels[str(frame)] = {"objects": copy.deepcopy(objects), "classifications": []}
                for o in objects:
                    answers[o["objectHash"]] = {
                        "objectHash": o["objectHash"],
                        "classifications": [],
                    }

    def feature_hash(self, project: str, name: str) -> str:
        """The feature hash of ontology object ``name``."""
        structure = self.ontologies[self.projects[project]["ontology"]]["structure"]
        return next(o["featureNodeHash"] for o in structure["objects"] if o["name"] == name)

    def objects_of(self, data_hash: str, branch: str) -> list[dict[str, Any]]:
        """The objects saved in the row of ``data_hash`` on ``branch`` ([] when none)."""
        row = self.rows.get((data_hash, branch))
        if row is None:
            return []
        return list(row["data_units"][data_hash]["labels"]["objects"])

    def classifications_of(self, data_hash: str, branch: str) -> dict[str, dict[str, Any]]:
        """The classification answers saved in the row ({} when none)."""
        row = self.rows.get((data_hash, branch))
        return dict(row.get("classification_answers", {})) if row else {}

    def frame_classifications_of(self, data_hash: str, branch: str) -> dict[int, list[dict]]:
        """A video row's classification answers by frame (of their ranges; {} when none)."""
        found: dict[int, list[dict[str, Any]]] = {}
        for answer in self.classifications_of(data_hash, branch).values():
            for start, end in answer.get("range") or []:
                for frame in range(int(start), int(end) + 1):
                    found.setdefault(frame, []).append(answer)
        return found

    def put_classifications(self, data_hash: str, branch: str, answers: dict[str, Any]) -> None:
        """Store classification ``answers`` in the row (created when missing)."""
        with self._lock:
            project = self._project_of(data_hash)
            row = self.rows.get((data_hash, branch)) or self._new_row(project, data_hash, branch)
            row["classification_answers"] = copy.deepcopy(answers)

    def put_objects(self, data_hash: str, branch: str, objects: list[dict[str, Any]]) -> None:
        """Store ``objects`` in the row (created when missing), as a person would."""
        with self._lock:
            project = self._project_of(data_hash)
            row = self.rows.get((data_hash, branch)) or self._new_row(project, data_hash, branch)
            row["data_units"][data_hash]["labels"]["objects"] = copy.deepcopy(objects)
            row["object_answers"] = {
                o["objectHash"]: {"objectHash": o["objectHash"], "classifications": []}
                for o in objects
            }

    def branches(self) -> set[str]:
        """Every branch that holds a row."""
        return {branch for _, branch in self.rows}

    def fail_next(self, *faults: str, route: str) -> None:
        """Give the next requests of ``route`` these faults, in order."""
        if route not in ROUTES:
            raise ValueError(f"unknown route {route!r}")
        for fault in faults:
            if fault not in FAULTS:
                raise ValueError(f"unknown fault {fault!r}; faults: {FAULTS}")
        with self._lock:
            self._faults.setdefault(route, deque()).extend(faults)

    def refuse(self, data_hash: str, reason: str) -> None:
        """Make every save of the row of ``data_hash`` fail with ``reason``."""
        self.refused[data_hash] = reason

    def count(self, route: str, status: int | None = None, fault: str | None = None) -> int:
        """Requests of ``route`` (with that status, or that fault, when given)."""
        return sum(
            1
            for r, s, f in self.records
            if r == route and (status is None or s == status) and (fault is None or f == fault)
        )

    # ------------------------------------------------------------------ state
    def _project_of(self, data_hash: str) -> str:
        for project, info in self.projects.items():
            if data_hash in info["data"]:
                return project
        raise ApiError("RESOURCE_NOT_FOUND_ERROR", f"no data unit {data_hash}")

    def _new_row(self, project: str, data_hash: str, branch: str) -> dict[str, Any]:
        info = self.projects[project]
        unit = info["data"][data_hash]
        video = bool(unit.get("video"))
        row = {
            "label_hash": str(uuid.uuid4()),
            "branch_name": branch,
            "created_at": _now(),
            "last_edited_at": _now(),
            "data_hash": data_hash,
            "dataset_hash": info["dataset"],
            "dataset_title": "images",
            "data_title": unit["title"],
            "data_type": "video" if video else "image",
            "annotation_task_status": "QUEUED",
            "is_shadow_data": False,
            "object_answers": {},
            "classification_answers": {},
            "object_actions": {},
            "label_status": "LABEL_IN_PROGRESS",
            "data_units": {
                data_hash: {
                    "data_hash": data_hash,
                    "data_title": unit["title"],
                    "data_link": f"https://media.invalid/{data_hash}",
                    "data_type": "video/mp4" if video else "image/png",
                    "data_sequence": 0,
                    "width": unit["width"],
                    "height": unit["height"],
                    "labels": {} if video else {"objects": [], "classifications": []},
                }
            },
            "spaces": {},
        }
        if video:
            row["data_units"][data_hash]["data_fps"] = unit["fps"]
            row["data_units"][data_hash]["data_duration"] = unit["frames"] / unit["fps"]
        self.rows[(data_hash, branch)] = row
        return row

    def _metadata(self, project: str, data_hash: str, branch: str) -> dict[str, Any]:
        info = self.projects[project]
        unit = info["data"][data_hash]
        row = self.rows.get((data_hash, branch))
        video = bool(unit.get("video"))
        return {
            "label_hash": row["label_hash"] if row else None,
            "created_at": row["created_at"] if row else None,
            "last_edited_at": row["last_edited_at"] if row else None,
            "branch_name": branch,
            "data_hash": data_hash,
            "dataset_hash": info["dataset"],
            "dataset_title": "images",
            "data_title": unit["title"],
            "data_type": "VIDEO" if video else "IMAGE",
            "data_link": f"https://media.invalid/{data_hash}",
            "label_status": "LABEL_IN_PROGRESS" if row else "NOT_LABELLED",
            "annotation_task_status": "QUEUED",
            "is_shadow_data": False,
            "number_of_frames": unit["frames"] if video else 1,
            "frames_per_second": unit["fps"] if video else None,
            "duration": unit["frames"] / unit["fps"] if video else None,
            "height": unit["height"],
            "width": unit["width"],
            "spaces": {},
            "file_type": "video/mp4" if video else "image/png",
        }

    def _row_by_hash(self, label_hash: str) -> dict[str, Any]:
        for row in self.rows.values():
            if row["label_hash"] == label_hash:
                return row
        raise ApiError("RESOURCE_NOT_FOUND_ERROR", f"no label row {label_hash}")

    def _check_row(self, project: str, saved: dict[str, Any]) -> None:
        stored = self._row_by_hash(str(saved.get("label_hash")))
        data_hash = stored["data_hash"]
        if stored["branch_name"] != saved.get("branch_name"):
            raise ApiError("CORRUPTED_LABEL_ERROR", "the row's branch_name does not match")
        if data_hash in self.refused:
            raise ApiError("CORRUPTED_LABEL_ERROR", self.refused[data_hash])
        structure = self.ontologies[self.projects[project]["ontology"]]["structure"]
        shapes = {o["featureNodeHash"]: o["shape"] for o in structure["objects"]}
        unit = saved["data_units"][data_hash]
        info = self.projects[project]["data"][data_hash]
        classifications = {c["featureNodeHash"] for c in structure["classifications"]}
        for answer in saved.get("classification_answers", {}).values():
            if answer.get("featureHash") not in classifications:
                raise ApiError("CORRUPTED_LABEL_ERROR", "unknown classification feature")
            confidence = answer.get("confidence", 1.0)
            if not isinstance(confidence, (int, float)) or not 0 <= confidence <= 1:
                raise ApiError("CORRUPTED_LABEL_ERROR", f"confidence {confidence!r} not in [0, 1]")
        if info.get("video"):  # one instance of a classification a frame, in the video
            spans: dict[str, list[tuple[int, int]]] = {}
            for key, answer in saved.get("classification_answers", {}).items():
                for start, end in answer.get("range") or []:
                    if not 0 <= int(start) <= int(end) < info["frames"]:
                        raise ApiError("CORRUPTED_LABEL_ERROR", f"{key}: range not in the video")
                    taken = spans.setdefault(str(answer.get("featureHash")), [])
                    if any(s <= int(end) and int(start) <= e for s, e in taken):
                        raise ApiError("CORRUPTED_LABEL_ERROR", f"{key}: frames classified twice")
                    taken.append((int(start), int(end)))
            frames = unit["labels"]
            if not isinstance(frames, dict) or "objects" in frames:
                raise ApiError("CORRUPTED_LABEL_ERROR", "a video's labels are kept by frame")
            found: list[dict[str, Any]] = []
            seen: dict[str, str] = {}
            for frame, value in frames.items():
                if not str(frame).isdigit() or not 0 <= int(frame) < info["frames"]:
                    raise ApiError("CORRUPTED_LABEL_ERROR", f"frame {frame!r} is not in the video")
                for obj in value.get("objects", []):
                    key = str(obj.get("objectHash"))
                    if seen.setdefault(key, str(obj.get("featureHash"))) != obj.get("featureHash"):
                        raise ApiError("CORRUPTED_LABEL_ERROR", f"object {key} changes feature")
                    if key not in saved.get("object_answers", {}):
                        raise ApiError("CORRUPTED_LABEL_ERROR", f"object {key} has no answers")
                    found.append(obj)
        else:
            found = unit["labels"]["objects"]
        for obj in found:
            shape = shapes.get(obj.get("featureHash"))
            if shape is None or shape != obj.get("shape"):
                raise ApiError("CORRUPTED_LABEL_ERROR", f"unknown feature {obj.get('featureHash')}")
            confidence = obj.get("confidence")
            if not isinstance(confidence, (int, float)) or not 0 <= confidence <= 1:
                raise ApiError("CORRUPTED_LABEL_ERROR", f"confidence {confidence!r} not in [0, 1]")
            if not isinstance(obj.get("manualAnnotation"), bool):
                raise ApiError("CORRUPTED_LABEL_ERROR", "manualAnnotation must be a bool")
            _check_geometry(obj, shape, unit)

    # ------------------------------------------------------------------ v1 dispatch
    def v1(self, route: str, values: dict[str, Any], project: str) -> Any:
        """Answer one v1 query (the ``response`` of the envelope)."""
        payload = values.get("payload") or {}
        uids = values.get("uid")
        if route == "rows.list":
            branch = payload.get("branch_name") or "main"
            wanted = payload.get("data_hashes")
            data = self.projects[project]["data"]
            hashes = [h for h in data if wanted is None or h in wanted]
            return [self._metadata(project, h, branch) for h in hashes]
        if route == "rows.create":
            branch = payload.get("branch_name") or "main"
            created = []
            for data_hash in uids:
                row = self.rows.get((data_hash, branch)) or self._new_row(
                    project, data_hash, branch
                )
                created.append(copy.deepcopy(row))
            return created
        if route == "rows.get":
            return [copy.deepcopy(self._row_by_hash(h)) for h in uids]
        if route == "data.get":
            data_hash = str(uids["data_hash"])
            if data_hash not in self.projects[project]["data"]:
                raise ApiError("RESOURCE_NOT_FOUND_ERROR", f"no data unit {data_hash}")
            unit = self.projects[project]["data"][data_hash]
            link = f"{self.url}/media/{data_hash}?signature=s"
            if unit.get("video"):
                video = {"data_hash": data_hash, "title": unit["title"], "file_link": link}
                return {"data_hash": data_hash, "video": video, "images": None}
            image = {
                "data_hash": data_hash,
                "image_hash": data_hash,
                "title": unit["title"],
                "file_link": link,
            }
            return {"data_hash": data_hash, "video": None, "images": [image]}
        if route == "rows.save":
            labels = payload.get("labels") or []
            for saved in labels:
                self._check_row(project, saved)
            for saved in labels:  # all checked: apply every row
                stored = self._row_by_hash(str(saved["label_hash"]))
                key = (stored["data_hash"], stored["branch_name"])
                row = copy.deepcopy(saved)
                row["last_edited_at"] = _now()
                self.rows[key] = row
                self.saves += 1
            return {"success": True}
        raise ApiError("METHOD_NOT_ALLOWED_ERROR", route, http_status=405)

    def v2_project(self, project: str) -> dict[str, Any]:
        """The ``ProjectDTO`` of ``project``."""
        info = self.projects.get(project)
        if info is None:
            raise ApiError("RESOURCE_NOT_FOUND_ERROR", "no such project", http_status=404)
        ontology = self.ontologies[info["ontology"]]
        return {
            "projectHash": project,
            "projectType": "manual_qa",
            "status": "inProgress",
            "title": info["title"],
            "description": "",
            "createdAt": "2026-01-01T00:00:00+00:00",
            "creatorEmail": "owner@example.invalid",
            "lastEditedAt": "2026-01-01T00:00:00+00:00",
            "ontologyHash": info["ontology"],
            "editorOntology": ontology["structure"],
        }

    def v2_ontology(self, ontology_hash: str) -> dict[str, Any]:
        """The ``OntologyWithUserRole`` of ``ontology_hash``."""
        ontology = self.ontologies.get(ontology_hash)
        if ontology is None:
            raise ApiError("RESOURCE_NOT_FOUND_ERROR", "no such ontology", http_status=404)
        return {
            "ontologyUuid": ontology_hash,
            "title": ontology["title"],
            "description": "",
            "editor": ontology["structure"],
            "createdAt": "2026-01-01T00:00:00+00:00",
            "lastEditedAt": "2026-01-01T00:00:00+00:00",
            "userRole": 0,
        }

    def take_fault(self, route: str) -> str | None:
        """The fault the next request of ``route`` gets (or a 429 over the rate)."""
        with self._lock:
            now = time.monotonic()
            self.requests_at.append(now)
            queue = self._faults.get(route)
            if queue:
                return queue.popleft()
            if self.rate_per_s is not None:
                recent = sum(1 for t in self.requests_at if now - t < 1.0)
                if recent > self.rate_per_s:
                    self.requests_at.pop()
                    return "429"
            return None


def _check_geometry(obj: dict[str, Any], shape: str, unit: dict[str, Any]) -> None:
    key = _SHAPE_KEYS[shape]
    value = obj.get(key)
    if not isinstance(value, dict):
        raise ApiError("CORRUPTED_LABEL_ERROR", f"a {shape} object needs {key!r}")
    if shape == "bitmask":
        if (value.get("height"), value.get("width")) != (unit["height"], unit["width"]):
            raise ApiError("CORRUPTED_LABEL_ERROR", "the bitmask is not the size of the media")
        return
    numbers = list(value.values()) if shape == "bounding_box" else []
    if shape in ("polygon", "point"):
        points = value.values() if shape == "polygon" else [value["0"]]
        numbers = [v for p in points for v in (p["x"], p["y"])]
    if not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in numbers):
        raise ApiError("CORRUPTED_LABEL_ERROR", f"{shape} coordinates are not in 0..1")


_V1_ROUTES = {
    ("labelrowmetadata", "GET"): "rows.list",
    ("labelrow", "PUT"): "rows.create",
    ("labelrow", "GET"): "rows.get",
    ("labelrow", "POST"): "rows.save",
    ("datasetdata", "GET"): "data.get",
}
_MEDIA = re.compile(r"^/media/([^/?]+)$")
_V2_PROJECT = re.compile(r"^/v2/public/projects/([^/?]+)$")
_V2_ONTOLOGY = re.compile(r"^/v2/public/ontologies/([^/?]+)$")
_KEYID = re.compile(r'keyid="([0-9a-f]+)"')


def _handler(standin: EncordStandin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            path = self.path.split("?", 1)[0]
            v2 = path.startswith("/v2/")
            media = _MEDIA.match(path)
            if media is not None and self.command == "GET":
                self._media(media.group(1))
                return
            try:
                route, args = self._route(path, body)
            except ApiError as error:
                self._answer_error("unknown", error, v2)
                return
            if not self._authorised(v2):
                self._answer_error(
                    route,
                    ApiError(
                        "AUTHENTICATION_ERROR", "this public key is not registered", http_status=401
                    ),
                    v2,
                )
                return
            fault = standin.take_fault(route)
            if fault == "429":
                self._send(route, 429, b'{"message": "rate limited"}', fault, retry=True)
                return
            if fault in ("503", "504"):
                self._send(route, int(fault), b"<html>gateway error</html>", fault, html=True)
                return
            try:
                with standin._lock:
                    if route == "project":
                        result: Any = standin.v2_project(args)
                    elif route == "ontology":
                        result = standin.v2_ontology(args)
                    else:
                        result = standin.v1(route, args[0], args[1])
            except ApiError as error:
                self._answer_error(route, error, v2, fault)
                return
            if fault == "drop":
                standin.records.append((route, 0, fault))
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            answer = result if v2 else {"status": 200, "response": result}
            if fault == "slow":  # recorded now: the client may have given up by the answer
                standin.records.append((route, 200, fault))
                time.sleep(standin.slow_s)
            elif standin.latency_s:
                time.sleep(standin.latency_s)
            self._send(route, 200, json.dumps(answer).encode(), fault, record=fault != "slow")

        def _media(self, data_hash: str) -> None:
            fault = standin.take_fault("media")
            if fault in ("429", "503", "504"):
                self._send("media", int(fault), b"busy", fault, retry=fault == "429")
                return
            data = next(
                (p["data"][data_hash]["bytes"] for p in standin.projects.values()
                 if data_hash in p["data"]),
                None,
            )  # fmt: skip
            if data is None or "signature=" not in self.path:
                self._send("media", 404, b"no such media", fault)
                return
            if fault == "drop":  # half the body, then the connection closes
                standin.records.append(("media", 0, fault))
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self._send("media", 200, data, fault, html=False)

        def _route(self, path: str, body: bytes) -> tuple[str, Any]:
            if self.command == "GET":
                match = _V2_PROJECT.match(path)
                if match:
                    return "project", match.group(1)
                match = _V2_ONTOLOGY.match(path)
                if match:
                    return "ontology", match.group(1)
            if self.command == "POST" and path == "/public":
                query = json.loads(body or b"{}")
                route = _V1_ROUTES.get((query.get("query_type"), query.get("query_method")))
                if route is not None:
                    project = self.headers.get("ResourceID", "")
                    if project not in standin.projects:
                        raise ApiError("RESOURCE_NOT_FOUND_ERROR", "no such project")
                    return route, (query.get("values") or {}, project)
            raise ApiError("METHOD_NOT_ALLOWED_ERROR", f"{self.command} {path}", http_status=405)

        def _authorised(self, v2: bool) -> bool:
            if v2:
                found = _KEYID.search(self.headers.get("Signature-Input", ""))
                key = found.group(1) if found else ""
            else:
                key = self.headers.get("Authorization", "").split(":", 1)[0]
            return key in standin.public_keys

        def _answer_error(
            self, route: str, error: ApiError, v2: bool, fault: str | None = None
        ) -> None:
            if v2:
                status = error.http_status if error.http_status != 200 else 400
                self._send(route, status, json.dumps({"message": error.message}).encode(), fault)
                return
            envelope = {"status": 400, "response": [error.code], "payload": error.message}
            self._send(route, error.http_status, json.dumps(envelope).encode(), fault)

        def _send(
            self,
            route: str,
            status: int,
            data: bytes,
            fault: str | None,
            retry: bool = False,
            html: bool = False,
            record: bool = True,
        ) -> None:
            if record:
                standin.records.append((route, status, fault))
            standin.log.append((time.monotonic(), route, status))
            self.send_response(status)
            self.send_header("Content-Type", "text/html" if html else "application/json")
            self.send_header("Content-Length", str(len(data)))
            if retry:
                self.send_header("Retry-After", standin.retry_after)
            self.end_headers()
            self.wfile.write(data)

    return Handler
