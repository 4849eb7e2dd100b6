"""`LabelboxConnector`: ``upload="create"|"append", to="labelbox"``: into a model run.

A delivery (one batch) runs the Labelbox flow through the official SDK:

1. the batch's data rows are upserted into the model run (by global key; idempotent);
2. its prediction lines go as import jobs (`add_predictions`), masks in jobs of at most
   `MAX_MASKS_PER_IMPORT` lines; each import is named ``tessera-<job>-<digest of the
   batch's keys>-<part>``, and before creating one the connector looks for an earlier import
   of that name, so a retry after a lost answer never imports twice;
3. it waits for each import and reads its statuses: an item whose lines all succeeded is
   delivered; one with a failed line is refused, with Labelbox's messages as the reason.

An item is its data row: a prediction of a Labelbox input keeps its data row in ``url``
(global key, else id); for any other, the global key the ``global_keys`` option maps the
prediction's name to, else the name itself. An item with more than 5,000 annotations of
one feature is refused before anything is sent (Labelbox's limit), never truncated.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from connectors.base import Connector, DeliveryError, DeliveryResult, RequestGate, UploadPlan
from connectors.labelbox.client import LabelboxClient, LabelboxConfigError
from connectors.labelbox.format import (
    CLASSIFICATION_NAME,
    data_row_ref,
    is_mask_line,
    over_feature_limit,
    prediction_to_ndjson,
)
from connectors.labelbox.ontology import default_model_name, find_or_create_run, ontology_for
from connectors.labelbox.urls import parse_data_row_url
from engine.prediction import Prediction

__all__ = ["DEFAULT_REQUESTS_PER_SECOND", "MAX_MASKS_PER_IMPORT", "OPTIONS", "LabelboxConnector"]

#: Labelbox's free tier: 1,500 requests a minute.
DEFAULT_REQUESTS_PER_SECOND = 1500 / 60
#: Mask lines per import job.
MAX_MASKS_PER_IMPORT = 1000
#: Lines of other kinds per import job.
MAX_LINES_PER_IMPORT = 50_000
#: The upload options `LabelboxConnector` takes (besides the runtime's).
OPTIONS = (
    "model_run_id",
    "model_name",
    "run_name",
    "num_keypoints",
    "global_keys",
    "classification_name",
    "poll_seconds",
)


class LabelboxConnector(Connector):
    """Uploads predictions into a Labelbox model run.

    Modes:
        create: a new model (named ``model_name``, default ``tessera-<job id>``) with an
            ontology of the model's classes (`connectors.labelbox.ontology`), and a run
            of it (``run_name``, default ``tessera-<job id>``); a resumed job finds it.
        append: into the existing model run ``options["model_run_id"]``.

    Options:
        model_run_id: The model run (``append``; default: the run the inputs came from,
            when they came from one ``labelbox_model_run_id``).
        model_name, run_name: Names of what ``create`` makes.
        num_keypoints: Keypoints per object (``create`` of a keypoints model).
        global_keys: Image name -> data row global key (default: the name is the key).
        classification_name: The radio classification a classifier answers
            (default ``"class"``).
        poll_seconds: Seconds between polls of an import job (default 2).

    Args:
        client: The client to use; None builds one from ``api_key`` and ``endpoint``.
        api_key: The API key (default ``$LABELBOX_API_KEY``).
        endpoint: The GraphQL endpoint (default ``$LABELBOX_ENDPOINT``, else Labelbox's).

    Raises:
        connectors.labelbox.client.LabelboxConfigError: No API key was found.

    Example:
        >>> model.predict("images/", upload="append", to="labelbox",
        ...               upload_options={"model_run_id": "clx..."})   # doctest: +SKIP
    """

    name = "labelbox"
    modes = ("create", "append")

    def __init__(
        self,
        client: LabelboxClient | None = None,
        api_key: str | None = None,
        endpoint: str | None = None,
    ) -> None:
        super().__init__()
        self.client = client if client is not None else LabelboxClient(api_key, endpoint)
        self.model_run_id: str | None = None
        self.job_id = ""
        self.global_keys: dict[str, str] = {}
        self.classification_name = CLASSIFICATION_NAME
        self.poll_seconds = 2.0
        self._run: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_run"] = None  # an SDK object: each process fetches its own
        return state

    def bind(self, gate: RequestGate) -> None:
        """Route the client's requests through ``gate`` too."""
        super().bind(gate)
        self.client.gate = gate

    def start_upload(
        self,
        job_id: str,
        mode: str,
        class_names: list[str],
        task: str,
        options: dict[str, Any],
        sources: dict[str, Any],
    ) -> Any:
        """`Connector.start_upload`, the rate defaulting to the free tier's 1,500/min."""
        options = {"requests_per_second": DEFAULT_REQUESTS_PER_SECOND, **options}
        return super().start_upload(job_id, mode, class_names, task, options, sources)

    def check_options(self, mode: str, options: dict[str, Any]) -> None:
        """Refuse an unknown upload option, and ``model_run_id`` with ``create``, at once."""
        from connectors.runtime import RUNTIME_OPTIONS

        unknown = sorted(set(options) - set(OPTIONS) - set(RUNTIME_OPTIONS))
        if unknown:
            raise ValueError(
                f"unknown Labelbox upload options {unknown}; Labelbox takes: {list(OPTIONS)}"
            )
        if mode == "create" and options.get("model_run_id"):
            raise ValueError(
                "upload='create' makes a new model run: drop model_run_id, or use "
                "upload='append' to write into that run"
            )

    def prepare(self, plan: UploadPlan) -> None:
        """Check the options; find the model run (``append``) or make it (``create``).

        Raises:
            UnsupportedModeError: ``plan.mode`` is not supported.
            ValueError: An unknown option; ``append`` without ``model_run_id``; ``create``
                with a model name another model has.
            DeliveryError: The run is not found, or Labelbox refused the key (401/403).
        """
        self.check_mode(plan.mode)
        unknown = sorted(set(plan.options) - set(OPTIONS))
        if unknown:
            raise ValueError(
                f"unknown Labelbox upload options {unknown}; Labelbox takes: {list(OPTIONS)}"
            )
        run_id = plan.options.get("model_run_id")
        source_runs = list(plan.sources.get("labelbox_model_run_ids") or [])
        if plan.mode == "append" and not run_id and len(source_runs) == 1:
            run_id = source_runs[0]  # the run the inputs came from
        if plan.mode == "append" and not run_id:
            raise ValueError(
                "upload='append' to Labelbox needs upload_options={'model_run_id': ...}"
            )
        if plan.mode == "create" and run_id:
            raise ValueError(
                "upload='create' makes a new model run: drop model_run_id, or use "
                "upload='append' to write into that run"
            )
        keys = plan.options.get("global_keys") or {}
        if not isinstance(keys, dict):
            raise ValueError("global_keys must map image names to Labelbox global keys")
        self.poll_seconds = float(plan.options.get("poll_seconds", 2.0))
        if self.poll_seconds <= 0:
            raise ValueError(f"poll_seconds must be > 0, got {self.poll_seconds}")
        self.global_keys = {str(k): str(v) for k, v in keys.items()}
        self.classification_name = str(plan.options.get("classification_name", CLASSIFICATION_NAME))
        self.job_id = plan.job_id
        if plan.mode == "create":
            ontology = ontology_for(
                plan.class_names,
                plan.task,
                plan.options.get("num_keypoints"),
                self.classification_name,
            )
            model_name = plan.options.get("model_name") or default_model_name(plan.job_id)
            run_name = plan.options.get("run_name") or f"tessera-{plan.job_id}"
            run_id = find_or_create_run(
                self.client, plan.job_id, str(model_name), str(run_name), ontology
            )
        self.model_run_id = str(run_id)
        self._run = self.client.call(
            f"Labelbox: get model run {run_id}", lambda sdk: sdk.get_model_run(self.model_run_id)
        )

    def validate(self) -> None:
        """Check the endpoint is an HTTP(S) URL (a missing API key failed at construction).

        Raises:
            LabelboxConfigError: The endpoint is not ``http://`` or ``https://``.
        """
        if not self.client.endpoint.startswith(("http://", "https://")):
            raise LabelboxConfigError(
                f"the Labelbox endpoint must be an http(s) URL, got {self.client.endpoint!r}"
            )

    def data_row(self, prediction: Prediction) -> dict[str, str]:
        """The ``dataRow`` ``prediction`` goes to: its own (a Labelbox input), else by name."""
        parsed = parse_data_row_url(prediction.url)
        if parsed is not None:
            data_row_id, key = parsed
            return data_row_ref(global_key=key) if key else data_row_ref(data_row_id=data_row_id)
        return data_row_ref(global_key=self.global_keys.get(prediction.name, prediction.name))

    def item_key(self, prediction: Prediction) -> str:
        """``"globalKey:<key>"`` (or ``"dataRow:<id>"``): the data row it goes to."""
        ref = self.data_row(prediction)
        return f"globalKey:{ref['globalKey']}" if "globalKey" in ref else f"dataRow:{ref['id']}"

    def deliver(self, batch: Sequence[Prediction]) -> DeliveryResult:
        """Upsert the batch's data rows into the run and import their predictions once."""
        assert self.model_run_id is not None, "prepare() first"
        failed: dict[str, str] = {}
        owner: dict[str, str] = {}  # line uuid -> item key
        lines: list[dict[str, Any]] = []
        keys: dict[str, dict[str, str]] = {}  # item key -> its dataRow
        for prediction in batch:
            key, ref = self.item_key(prediction), self.data_row(prediction)
            found = prediction_to_ndjson(prediction, ref, self.job_id, self.classification_name)
            refusal = over_feature_limit(found)
            if refusal is not None:
                failed[key] = refusal
                continue
            keys[key] = ref
            for line in found:
                owner[line["uuid"]] = key
            lines.extend(found)
        if keys:
            run = self._model_run()
            global_keys = sorted({r["globalKey"] for r in keys.values() if "globalKey" in r})
            ids = sorted({r["id"] for r in keys.values() if "id" in r})
            self.client.call(
                "Labelbox: upsert data rows",
                lambda _: run.upsert_data_rows(
                    data_row_ids=ids or None, global_keys=global_keys or None
                ),
                retry=False,
            )
            digest = hashlib.sha1("\n".join(sorted(keys)).encode()).hexdigest()[:12]
            for part, chunk in enumerate(_chunks(lines)):
                name = f"tessera-{self.job_id}-{digest}-{part}"
                for uuid, reason in self._import(run, name, chunk).items():
                    key = owner.get(uuid)
                    if key is not None and reason not in failed.get(key, ""):
                        failed[key] = f"{failed[key]}; {reason}" if key in failed else reason
        delivered = [self.item_key(p) for p in batch if self.item_key(p) not in failed]
        return DeliveryResult(delivered=delivered, failed=failed)

    def _model_run(self) -> Any:
        if self._run is None:
            self._run = self.client.call(
                f"Labelbox: get model run {self.model_run_id}",
                lambda sdk: sdk.get_model_run(self.model_run_id),
                retry=False,
            )
        return self._run

    def _import(self, run: Any, name: str, lines: list[dict[str, Any]]) -> dict[str, str]:
        """Import ``lines`` as ``name`` unless done before; return failed uuid -> reason.

        An earlier import of the name counts for the lines it took; the lines it refused
        (a resumed job re-sending them) go again as ``<name>.1``, ``<name>.2``...
        """
        pending, failures, attempt = lines, {}, 0
        while pending:
            label = name if attempt == 0 else f"{name}.{attempt}"
            job = self._earlier_import(label)
            if job is None:
                what = f"Labelbox import {label}"
                job = self.client.call(
                    what, lambda _, p=pending, n=label: run.add_predictions(n, p), retry=False
                )
                return self._statuses(job, label)
            failures = self._statuses(job, label)
            pending = [line for line in pending if line["uuid"] in failures]
            attempt += 1
        return {}

    def _earlier_import(self, name: str) -> Any:
        from labelbox.schema.annotation_import import MEAPredictionImport
        from lbox.exceptions import ResourceNotFoundError

        def find(sdk: Any) -> Any:
            try:
                return MEAPredictionImport.from_name(sdk, self.model_run_id, name)
            except ResourceNotFoundError:
                return None

        return self.client.call(f"Labelbox: find import {name}", find, retry=False)

    def _statuses(self, job: Any, name: str) -> dict[str, str]:
        what = f"Labelbox import {name}"
        self.client.call(
            what, lambda _: job.wait_till_done(sleep_time_seconds=self.poll_seconds), retry=False
        )
        if str(job.state.value) == "FAILED":
            raise DeliveryError(f"{what}: the import job failed on Labelbox", retryable=False)
        failures: dict[str, str] = {}
        for text in self.client.fetch(job.status_file_url).text.splitlines():
            if not text.strip():
                continue
            row = json.loads(text)
            if row.get("status") != "SUCCESS":
                errors = row.get("errors") or [{"message": "refused without a message"}]
                failures[str(row.get("uuid"))] = "Labelbox: " + "; ".join(
                    str(e.get("message", e)) for e in errors
                )
        return failures

    def __repr__(self) -> str:
        run = self.model_run_id
        return f"LabelboxConnector(endpoint={self.client.endpoint!r}, model_run_id={run!r})"


def _chunks(lines: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Import jobs: masks at most `MAX_MASKS_PER_IMPORT` a job, the rest together."""
    masks = [line for line in lines if is_mask_line(line)]
    others = [line for line in lines if not is_mask_line(line)]
    chunks = [
        others[i : i + MAX_LINES_PER_IMPORT] for i in range(0, len(others), MAX_LINES_PER_IMPORT)
    ]
    chunks += [
        masks[i : i + MAX_MASKS_PER_IMPORT] for i in range(0, len(masks), MAX_MASKS_PER_IMPORT)
    ]
    return chunks
