"""A stand-in Labelbox GraphQL server on 127.0.0.1, answering what the official SDK sends.

It keeps data rows (by global key), model runs, their registered data rows, prediction
imports and the prediction lines they accepted, checks the bearer key (a wrong one gets
``AUTHENTICATION_ERROR``, HTTP 401), and answers the operations of the model-run flow (see
``../shared/FORMATS.md``): ``GetModelRunPyApi``, ``createMEAModelRunDataRowRegistrationTaskPyApi``,
``MEADataRowRegistrationTaskStatusPyApi``, ``createMEAPredictionImportByFilePyApi``
(multipart), ``getModelErrorAnalysisPredictionImportPyApi``, ``GET /files/<id>/statuses``;
for ``create``: ``GetModelsPyApi``, ``GetModelModelRunsPyApi``, ``upsertRootSchemaNodePyApi``,
``createModelPyApi``, ``CreateModelRunPyApi``; for dataset inputs: ``GetDatasetPyApi``,
``DatasetDataRowsPyApi`` (cursor pages), ``GetMetadataOntologyBetaPyApi``,
``modelRunPyApi`` (a run's data rows), ``GetDataRowPyApi`` and ``GET /media/<data row id>``
(a data row's ``rowData``).

An import is checked line by line: a line whose data row is not registered in the run, or
whose feature is not a class of the run's model, fails with a message; the others land.
An import name is unique per run. With `rate_limit` set, a request over that many in a
sliding second gets 429 with ``Retry-After``; `latency_s` delays every answer.
``fail_next(*faults, op=...)`` gives the next requests of
an operation these faults, in order: ``"429"`` (``You have exceeded...`` with
``Retry-After``, nothing applied), ``"503"`` (nothing applied), ``"slow"`` (answered after
`slow_s`), ``"drop"`` (applied, then the connection closes without an answer).
"""

from __future__ import annotations

import itertools
import json
import re
import socket
import threading
import time
from collections import deque
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler
from typing import Any

from standin_base import LoopbackStandin, loopback_server

FAULTS = ("429", "503", "slow", "drop")
_OPERATION = re.compile(r"^\s*(?:query|mutation)\s+(\w+)")
_STAMP = "2026-01-01T00:00:00.000Z"


class LabelboxStandin(LoopbackStandin):
    """The stand-in server: a context manager, or `start` / `stop`.

    Args:
        api_key: The key it accepts.
    """

    def __init__(self, api_key: str = "lb-test-key-7") -> None:
        self.api_key = api_key
        self.retry_after = "0.05"
        self.slow_s = 0.3
        self.rate_limit: float | None = None  # requests a sliding second; over it: 429
        self.latency_s = 0.0  # added to every answer
        self._recent: deque[float] = deque()
        self.data_rows: dict[str, str] = {}  # global key -> data row id
        self.row_keys: dict[str, str | None] = {}  # data row id -> global key
        self.media: dict[str, bytes] = {}  # data row id -> the media's bytes
        self.datasets: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.models: dict[str, dict[str, Any]] = {}
        self.ontologies: dict[str, dict[str, Any]] = {}
        self.imports: dict[str, dict[str, Any]] = {}
        self.records: list[tuple[str, int | None, str | None]] = []
        self.times: list[float] = []  # when each request came
        self.served: list[float] = []  # when each answer below 400 went
        self._faults: dict[str, deque[str]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._server = loopback_server(_handler(self))

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        """The base address; the GraphQL endpoint is ``url + "/graphql"``."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def endpoint(self) -> str:
        """What ``LABELBOX_ENDPOINT`` holds."""
        return self.url + "/graphql"

    # ------------------------------------------------------------------ test helpers
    def add_data_row(
        self, global_key: str | None, media: bytes = b"", dataset: str | None = None
    ) -> str:
        """A data row of the catalog (in dataset ``dataset``, an id); return its id."""
        with self._lock:
            data_row_id = f"dr{next(self._ids)}"
            self.media[data_row_id] = media
            self.row_keys[data_row_id] = global_key
            if global_key is not None:
                self.data_rows[global_key] = data_row_id
            if dataset is not None:
                self.datasets[dataset]["rows"].append(data_row_id)
            return data_row_id

    def add_dataset(self, name: str) -> str:
        """An empty dataset; return its id."""
        with self._lock:
            dataset_id = f"ds{next(self._ids)}"
            self.datasets[dataset_id] = {"name": name, "rows": []}
            return dataset_id

    def add_model_run(self, classes: list[str], name: str = "run") -> str:
        """A model run whose model's ontology has the features ``classes``; return its id."""
        with self._lock:
            model = self._new_model(f"model {next(self._ids)}", set(classes))
            return self._new_run(model, name, None)

    def _new_model(self, name: str, features: set[str]) -> str:
        model_id = f"m{next(self._ids)}"
        self.models[model_id] = {"name": name, "features": features, "ontology": None}
        return model_id

    def _new_run(self, model_id: str, name: str, metadata: Any) -> str:
        run_id = f"mr{next(self._ids)}"
        self.runs[run_id] = {"name": name, "model": model_id, "metadata": metadata}
        self.runs[run_id].update(rows=set(), lines=[])
        return run_id

    def runs_of(self, model_name: str) -> list[str]:
        """The ids of the runs of the model called ``model_name``."""
        models = {m for m, found in self.models.items() if found["name"] == model_name}
        return [r for r, run in self.runs.items() if run["model"] in models]

    def fail_next(self, *faults: str, op: str) -> None:
        """Give the next requests of operation ``op`` (``"files"``, ``"media"``) these faults."""
        for fault in faults:
            if fault not in FAULTS:
                raise ValueError(f"unknown fault {fault!r}; faults: {FAULTS}")
        with self._lock:
            self._faults.setdefault(op, deque()).extend(faults)

    def count(self, op: str, status: int | None = None) -> int:
        """Requests of ``op`` received (with that answer status, when given)."""
        return sum(1 for o, s, _ in self.records if o == op and (status is None or s == status))

    def lines_of(self, run_id: str) -> list[dict[str, Any]]:
        """The prediction lines a run holds."""
        return list(self.runs[run_id]["lines"])

    # ------------------------------------------------------------------ operations
    def over_rate(self) -> float | None:
        """Seconds until a slot frees when over `rate_limit`, else None (and count it)."""
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

    def take_fault(self, op: str) -> str | None:
        """The next fault queued for ``op``, or None."""
        with self._lock:
            queue = self._faults.get(op)
            return queue.popleft() if queue else None

    def operate(self, op: str, variables: dict[str, Any], upload: bytes | None) -> Any:
        """Answer one GraphQL operation: the ``data`` object, or raise `GraphQLError`."""
        with self._lock:
            handler = getattr(self, "_op_" + op, None)
            if handler is None:
                raise GraphQLError("GRAPHQL_VALIDATION_FAILED", f"unknown operation {op}")
            return handler(variables, upload)

    def _run(self, run_id: str) -> dict[str, Any]:
        if run_id not in self.runs:
            raise GraphQLError("RESOURCE_NOT_FOUND", f"no model run {run_id}")
        return self.runs[run_id]

    def _run_json(self, run_id: str) -> dict[str, Any]:
        run = self._run(run_id)
        fields = {"createdAt": _STAMP, "updatedAt": _STAMP, "createdBy": "u1"}
        fields.update(modelAppId=None, trainingMetadata=run["metadata"], id=run_id)
        return {**fields, "modelId": run["model"], "name": run["name"]}

    def _model_json(self, model_id: str) -> dict[str, Any]:
        found = self.models[model_id]
        return {"name": found["name"], "ontologyId": found["ontology"], "id": model_id}

    def _op_GetModelRunPyApi(self, v: dict[str, Any], _: Any) -> Any:  # noqa: N802
        return {"modelRun": self._run_json(next(iter(v.values())))}

    def _op_GetModelsPyApi(self, v: dict[str, Any], _: Any) -> Any:  # noqa: N802
        name = next(iter(v.values()))
        found = [self._model_json(m) for m, model in self.models.items() if model["name"] == name]
        return {"models": found}

    def _op_GetModelModelRunsPyApi(self, v: dict[str, Any], _: Any) -> Any:  # noqa: N802
        model_id = next(iter(v.values()))
        runs = [self._run_json(r) for r, run in self.runs.items() if run["model"] == model_id]
        return {"model": {"modelRuns": runs}}

    def _op_upsertRootSchemaNodePyApi(self, v: dict[str, Any], _: Any) -> Any:  # noqa: N802
        data = v["data"]
        normalized = json.loads(data["normalized"])
        ontology_id = f"o{next(self._ids)}"
        self.ontologies[ontology_id] = {"name": data["name"], "normalized": normalized}
        counts = {"objectSchemaCount": len(normalized.get("tools", []))}
        counts["classificationSchemaCount"] = len(normalized.get("classifications", []))
        answer = {"createdAt": _STAMP, "updatedAt": _STAMP, "description": None, **counts}
        answer.update(mediaType=data.get("mediaType"), name=data["name"], id=ontology_id)
        return {"upsertOntology": {**answer, "normalized": normalized}}

    def _op_createModelPyApi(self, v: dict[str, Any], _: Any) -> Any:  # noqa: N802
        normalized = self.ontologies[v["ontologyId"]]["normalized"]
        features = {t["name"] for t in normalized.get("tools", [])}
        features |= {c["name"] for c in normalized.get("classifications", [])}
        model_id = self._new_model(v["name"], features)
        self.models[model_id]["ontology"] = v["ontologyId"]
        return {"createModel": self._model_json(model_id)}

    def _op_CreateModelRunPyApi(self, v: dict[str, Any], _: Any) -> Any:  # noqa: N802
        run_id = self._new_run(v["modelId"], v["name"], v.get("config"))
        return {"createModelRun": self._run_json(run_id)}

    def _op_createMEAModelRunDataRowRegistrationTaskPyApi(self, v: dict, _: Any) -> Any:  # noqa: N802
        run = self._run(v["modelRunId"])
        for key in v.get("globalKeys") or []:
            if key in self.data_rows:
                run["rows"].add(self.data_rows[key])
        run["rows"].update(i for i in v.get("dataRowIds") or [] if i in self.row_keys)
        return {"createMEAModelRunDataRowRegistrationTask": f"task{next(self._ids)}"}

    def _op_MEADataRowRegistrationTaskStatusPyApi(self, v: dict, _: Any) -> Any:  # noqa: N802
        return {"MEADataRowRegistrationTaskStatus": {"status": "COMPLETE", "errorMessage": None}}

    def _row_json(self, data_row_id: str) -> dict[str, Any]:
        fields = {"createdAt": _STAMP, "updatedAt": _STAMP, "externalId": None}
        fields.update(mediaAttributes={}, customMetadata=[], metadataFields=[])
        fields.update(rowData=f"{self.url}/media/{data_row_id}", id=data_row_id)
        return {**fields, "globalKey": self.row_keys[data_row_id]}

    def _op_GetDatasetPyApi(self, v: dict[str, Any], _: Any) -> Any:  # noqa: N802
        dataset_id = next(iter(v.values()))
        if dataset_id not in self.datasets:
            raise GraphQLError("RESOURCE_NOT_FOUND", f"no dataset {dataset_id}")
        found = self.datasets[dataset_id]
        fields = {"createdAt": _STAMP, "updatedAt": _STAMP, "description": ""}
        fields.update(rowCount=len(found["rows"]), id=dataset_id)
        return {"dataset": {**fields, "name": found["name"]}}

    def _op_DatasetDataRowsPyApi(self, v: dict[str, Any], _: Any) -> Any:  # noqa: N802
        rows = self.datasets[v["id"]]["rows"]
        start = rows.index(v["from"]) if v.get("from") in rows else 0
        page = rows[start : start + int(v.get("first") or 500)]
        after = rows[start + len(page)] if start + len(page) < len(rows) else None
        info = {"hasNextPage": after is not None, "startCursor": after}
        return {"datasetDataRows": {"nodes": [self._row_json(r) for r in page], "pageInfo": info}}

    def _op_modelRunPyApi(self, v: dict[str, Any], _: Any) -> Any:  # noqa: N802
        run = self._run(v["modelRunId"])
        rows = sorted(run["rows"], key=lambda r: int(r[2:]))
        start = int(v.get("from") or 0)
        page = rows[start : start + int(v.get("first") or 100)]
        after = str(start + len(page)) if start + len(page) < len(rows) else None
        nodes = [
            {"dataSplit": "UNASSIGNED", "labelId": None, "modelRunId": v["modelRunId"]}
            | {"id": f"g{r}", "dataRow": self._row_json(r)}
            for r in page
        ]
        return {"annotationGroups": {"nodes": nodes, "pageInfo": {"endCursor": after}}}

    def add_to_run(self, run_id: str, data_row_id: str) -> None:
        """Register a data row in a model run (as an earlier upsert would have)."""
        with self._lock:
            self.runs[run_id]["rows"].add(data_row_id)

    def _op_GetMetadataOntologyBetaPyApi(self, v: dict[str, Any], _: Any) -> Any:  # noqa: N802
        return {"customMetadataOntology": []}

    def _op_GetDataRowPyApi(self, v: dict[str, Any], _: Any) -> Any:  # noqa: N802
        data_row_id = next(iter(v.values()))
        if data_row_id not in self.row_keys:
            raise GraphQLError("RESOURCE_NOT_FOUND", f"no data row {data_row_id}")
        return {"dataRow": self._row_json(data_row_id)}

    def _import_json(self, found: dict[str, Any]) -> dict[str, Any]:
        files = f"{self.url}/files/{found['id']}"
        return {
            "id": found["id"],
            "name": found["name"],
            "modelRunId": found["run"],
            "state": "FINISHED",
            "progress": "100%",
            "inputFileUrl": f"{files}/inputs",
            "errorFileUrl": f"{files}/errors",
            "statusFileUrl": f"{files}/statuses",
        }

    def _op_getModelErrorAnalysisPredictionImportPyApi(self, v: dict, _: Any) -> Any:  # noqa: N802
        for found in self.imports.values():
            if found["run"] == v["modelRunId"] and found["name"] == v["name"]:
                return {"modelErrorAnalysisPredictionImport": self._import_json(found)}
        raise GraphQLError("RESOURCE_NOT_FOUND", f"no import named {v['name']}")

    def _op_createMEAPredictionImportByFilePyApi(self, v: dict, upload: bytes | None) -> Any:  # noqa: N802
        run = self._run(v["modelRunId"])
        if any(
            f["run"] == v["modelRunId"] and f["name"] == v["name"] for f in self.imports.values()
        ):
            raise GraphQLError("RESOURCE_CONFLICT", f"an import named {v['name']} exists")
        if not upload:
            raise GraphQLError("MALFORMED_REQUEST", "the import file is empty")
        statuses = []
        for text in upload.decode().splitlines():
            line = json.loads(text)
            ref = line.get("dataRow", {})
            key = ref.get("globalKey") or ref.get("id")
            data_row_id = (
                self.data_rows.get(ref["globalKey"]) if "globalKey" in ref else ref.get("id")
            )
            errors = []
            if data_row_id not in run["rows"]:
                errors.append(
                    {
                        "name": "DataRowNotFound",
                        "message": f"data row {key!r} is not in the model run",
                    }
                )
            if line.get("name") not in self.models[run["model"]]["features"]:
                errors.append(
                    {
                        "name": "FeatureNotFound",
                        "message": f"no feature {line.get('name')!r} in the ontology",
                    }
                )
            if errors:
                statuses.append(
                    {
                        "uuid": line.get("uuid"),
                        "dataRow": {"globalKey": key},
                        "status": "FAILURE",
                        "errors": errors,
                    }
                )
            else:
                run["lines"].append(line)
                statuses.append(
                    {"uuid": line.get("uuid"), "dataRow": {"globalKey": key}, "status": "SUCCESS"}
                )
        found = {"id": f"imp{next(self._ids)}", "name": v["name"], "run": v["modelRunId"]}
        found["statuses"] = statuses
        self.imports[found["id"]] = found
        return {"createModelErrorAnalysisPredictionImport": self._import_json(found)}

    def statuses(self, import_id: str) -> str:
        """The status file of an import, NDJSON."""
        with self._lock:
            found = self.imports[import_id]
            return "".join(json.dumps(s) + "\n" for s in found["statuses"])


class GraphQLError(Exception):
    """An error answered in ``errors`` with an ``extensions.code``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _multipart(content_type: str, raw: bytes) -> tuple[dict[str, Any], bytes | None]:
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + raw
    )
    operations, upload = {}, None
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if name == "operations":
            operations = json.loads(payload)
        elif name != "map":
            upload = payload
    return operations, upload


def _handler(server: LabelboxStandin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return None

        def _answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            if status < 400:
                server.served.append(time.monotonic())
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

        def _fault(self, op: str) -> str | None:
            if server.latency_s:
                time.sleep(server.latency_s)
            wait = server.over_rate()
            fault = "429" if wait is not None else server.take_fault(op)
            if fault == "429":
                server.records.append((op, 429, fault))
                body = {"message": "You have exceeded the rate limit (1500 requests per minute)"}
                after = server.retry_after if wait is None else f"{wait:.3f}"
                self._answer(429, body, {"Retry-After": after})
            elif fault == "503":
                server.records.append((op, 503, fault))
                self._answer(503, b"service unavailable")
            elif fault == "slow":
                time.sleep(server.slow_s)
            return fault

        def do_GET(self) -> None:  # noqa: N802
            server.times.append(time.monotonic())
            media = re.match(r"^/media/(\w+)$", self.path)
            if media is not None and media.group(1) in server.media:
                if self._fault("media") in ("429", "503"):
                    return None
                server.records.append(("media", 200, None))
                return self._answer(200, server.media[media.group(1)])
            match = re.match(r"^/files/(\w+)/statuses$", self.path)
            if match is None or match.group(1) not in server.imports:
                return self._answer(404, {"message": "not found"})
            if self._fault("files") in ("429", "503"):
                return None
            server.records.append(("files", 200, None))
            return self._answer(200, server.statuses(match.group(1)).encode())

        def do_POST(self) -> None:  # noqa: N802
            server.times.append(time.monotonic())
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            kind = self.headers.get("Content-Type", "")
            if kind.startswith("multipart/"):
                body, upload = _multipart(kind, raw)
            else:
                body, upload = json.loads(raw or b"{}"), None
            found = _OPERATION.match(body.get("query", ""))
            op = found.group(1) if found else "?"
            if self.headers.get("Authorization") != f"Bearer {server.api_key}":
                server.records.append((op, 401, None))
                error = {
                    "message": "Invalid API key",
                    "extensions": {"code": "AUTHENTICATION_ERROR"},
                }
                return self._answer(401, {"errors": [error]})
            fault = self._fault(op)
            if fault in ("429", "503"):
                return None
            try:
                answer = {"data": server.operate(op, body.get("variables") or {}, upload)}
                status = 200
            except GraphQLError as error:
                answer = {
                    "data": None,
                    "errors": [{"message": str(error), "extensions": {"code": error.code}}],
                }
                status = 200
            if fault == "drop":  # applied, but the answer never comes
                server.records.append((op, None, fault))
                return self._drop()
            server.records.append((op, status, fault))
            return self._answer(status, answer)

    return Handler
