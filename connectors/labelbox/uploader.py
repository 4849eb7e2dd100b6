"""`LabelboxConnector`: ``upload="create"|"append", to="labelbox"``: into a model run.

A delivery (one batch) runs the Labelbox flow through the official SDK:

1. the batch's data rows are upserted into the model run (by global key; idempotent);
2. its prediction lines go as import jobs (`add_predictions`), masks in jobs of at most
   `MAX_MASKS_PER_IMPORT` lines; each import is named ``tessera-<job>-<digest of the
   batch's keys>-<part>``, and before creating one the connector looks for an earlier import
   of that name, so a retry after a lost answer never imports twice;
3. it waits for each import and reads its statuses: an item whose lines all succeeded is
   delivered; one with a failed line is refused, with Labelbox's messages and the refused
   lines (number, uuid, feature) as the reason.

An item Labelbox took part of must never get its accepted lines twice, whatever batch a
later delivery (a resume, a retry of a split batch) puts it in. So its refused lines go once
more, at once, in the job's next *recovery import*, ``tessera-<job>-recovery-<n>``
(numbered from 0 without gaps; the SDK finds an import by name, not by listing). Each
delivery first reads the recovery imports it has not read (their status files): a line a
recovery holds is accepted once any recovery accepted it; the lines of such an item that no
recovery holds landed in its first import. A later delivery of the item sends only its lines
not accepted yet, in a new recovery import, and nothing when all have landed.

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
        self._recovered: dict[str, str | None] = {}  # line uuid -> recovery outcome
        self._recoveries_read = 0  # the job's recovery imports read so far
        self._tried: dict[str, list[str]] = {}  # item key -> batch imports tried in this process
        self._tried_read: set[str] = set()  # those already read back

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
        """Upsert the batch's data rows into the run and import each line once.

        An item none of whose lines the job's recovery imports hold goes in the batch's
        import (``tessera-<job>-<digest>-<part>``). When Labelbox takes some of an item's
        lines and refuses others (or an earlier try's import of that name refused some),
        the refused ones go once more, at once, in the job's next recovery import
        (``tessera-<job>-recovery-<n>``, see `_recover`); an item with a line still
        refused is dead, its reason naming the refused lines. A later delivery of an item
        a recovery import knows (a resume, a retry in another batch) sends only its lines
        not accepted yet, in a new recovery import: the others landed, in its first import
        or in a recovery, and are never sent twice.
        """
        assert self.model_run_id is not None, "prepare() first"
        failed: dict[str, str] = {}
        item_lines: dict[str, list[dict[str, Any]]] = {}  # item key -> its lines
        keys: dict[str, dict[str, str]] = {}  # item key -> its dataRow
        for prediction in batch:
            key, ref = self.item_key(prediction), self.data_row(prediction)
            found = prediction_to_ndjson(prediction, ref, self.job_id, self.classification_name)
            refusal = over_feature_limit(found)
            if refusal is not None:
                failed[key] = refusal
                continue
            keys[key] = ref
            item_lines[key] = found
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
            self._read_recoveries()
            self._read_tried(item_lines)
            outcome: dict[str, str | None] = {}  # line uuid -> None (landed) or the refusal
            again: list[list[dict[str, Any]]] = []  # per item, the lines to send once more
            fresh: list[str] = []
            for key, found in item_lines.items():
                if not any(line["uuid"] in self._recovered for line in found):
                    fresh.append(key)
                    continue
                for line in found:  # a line no recovery holds landed in the item's first import
                    outcome[line["uuid"]] = self._recovered.get(line["uuid"])
                again.append([line for line in found if outcome[line["uuid"]] is not None])
            if fresh:
                outcome.update(self._import_fresh(run, fresh, item_lines, again))
            again = [group for group in again if group]
            if again:
                outcome.update(self._recover(run, again))
            for key, found in item_lines.items():
                reason = _refusal(found, outcome)
                if reason is not None:
                    failed[key] = reason
        delivered = [self.item_key(p) for p in batch if self.item_key(p) not in failed]
        return DeliveryResult(delivered=delivered, failed=failed)

    def _import_fresh(
        self,
        run: Any,
        fresh: list[str],
        item_lines: dict[str, list[dict[str, Any]]],
        again: list[list[dict[str, Any]]],
    ) -> dict[str, str | None]:
        """Import the lines of ``fresh`` items in the batch's imports; return each outcome.

        Appends to ``again`` the refused lines of each item Labelbox took part of, and
        those an import of an earlier try refused: they go once more as a recovery.
        """
        digest = hashlib.sha1("\n".join(sorted(fresh)).encode()).hexdigest()[:12]
        lines = [line for key in fresh for line in item_lines[key]]
        outcome: dict[str, str | None] = {}
        earlier: set[str] = set()  # uuids an earlier try's import held
        for part, chunk in enumerate(_chunks(lines)):
            name = f"tessera-{self.job_id}-{digest}-{part}"
            for key in dict.fromkeys(k for k in fresh for line in item_lines[k] if line in chunk):
                self._tried.setdefault(key, []).append(name)  # before sending: a lost answer
            job, before = self._find_or_create(run, name, chunk)
            rows = self._status_rows(job, name)
            for line in chunk:
                outcome[line["uuid"]] = rows.get(line["uuid"], "Labelbox gave it no status")
                if before:
                    earlier.add(line["uuid"])
        for key in fresh:
            found = item_lines[key]
            refused = [line for line in found if outcome[line["uuid"]] is not None]
            taken = len(refused) < len(found)
            group = [line for line in refused if taken or line["uuid"] in earlier]
            if group:
                again.append(group)
        return outcome

    def _model_run(self) -> Any:
        if self._run is None:
            self._run = self.client.call(
                f"Labelbox: get model run {self.model_run_id}",
                lambda sdk: sdk.get_model_run(self.model_run_id),
                retry=False,
            )
        return self._run

    def _find_or_create(self, run: Any, name: str, lines: list[dict[str, Any]]) -> tuple[Any, bool]:
        """The import ``name``: an earlier one (True), else a new one of ``lines`` (False)."""
        job = self._earlier_import(name)
        if job is not None:
            return job, True
        what = f"Labelbox import {name}"
        job = self.client.call(what, lambda _: run.add_predictions(name, lines), retry=False)
        return job, False

    def _read_tried(self, item_lines: dict[str, list[dict[str, Any]]]) -> None:
        """Learn what the batch imports tried earlier in this process hold for these items.

        The runtime retries a failed batch item by item, so the retry's import has another
        name than the batch's; an item whose lines an earlier batch import of this process
        holds is then treated like one a recovery import knows: what landed there is never
        sent again.
        """
        names = dict.fromkeys(n for key in item_lines for n in self._tried.get(key, ()))
        for name in names:
            if name in self._tried_read:
                continue
            job = self._earlier_import(name)
            if job is not None:
                self._learn(self._status_rows(job, name))
            self._tried_read.add(name)

    def _recovery_name(self, number: int) -> str:
        return f"tessera-{self.job_id}-recovery-{number}"

    def _read_recoveries(self) -> None:
        """Learn the outcomes of the job's recovery imports this connector has not read.

        They are numbered from 0 without gaps, so the first name not found ends them.
        """
        while True:
            name = self._recovery_name(self._recoveries_read)
            job = self._earlier_import(name)
            if job is None:
                return
            self._learn(self._status_rows(job, name))
            self._recoveries_read += 1

    def _learn(self, rows: dict[str, str | None]) -> None:
        for uuid, reason in rows.items():
            if reason is None or self._recovered.get(uuid, "") is not None:
                self._recovered[uuid] = reason  # accepted once: landed for good

    def _recover(self, run: Any, groups: list[list[dict[str, Any]]]) -> dict[str, str | None]:
        """Send ``groups`` (each one item's lines) as the job's next recovery imports.

        A recovery takes the next free number (another uploader may have taken one: read
        it and try the next); one item's lines go in one import (unless its masks alone
        pass `MAX_MASKS_PER_IMPORT`). Returns each line's outcome.
        """
        outcome: dict[str, str | None] = {}
        for chunk in _packed(groups):
            while True:
                name = self._recovery_name(self._recoveries_read)
                what = f"Labelbox import {name}"
                job = self.client.call(
                    what, lambda _, c=chunk, n=name: _create_once(run, n, c), retry=False
                )
                if job is not None:
                    break
                self._read_recoveries()  # taken by another uploader: learn it, go on
            rows = self._status_rows(job, name)
            self._learn(rows)
            self._recoveries_read += 1
            for line in chunk:
                outcome[line["uuid"]] = rows.get(line["uuid"], "Labelbox gave it no status")
        return outcome

    def _earlier_import(self, name: str) -> Any:
        from labelbox.schema.annotation_import import MEAPredictionImport
        from lbox.exceptions import ResourceNotFoundError

        def find(sdk: Any) -> Any:
            try:
                return MEAPredictionImport.from_name(sdk, self.model_run_id, name)
            except ResourceNotFoundError:
                return None

        return self.client.call(f"Labelbox: find import {name}", find, retry=False)

    def _status_rows(self, job: Any, name: str) -> dict[str, str | None]:
        """Wait for import ``name``; return line uuid -> None (accepted) or the refusal."""
        what = f"Labelbox import {name}"
        self.client.call(
            what, lambda _: job.wait_till_done(sleep_time_seconds=self.poll_seconds), retry=False
        )
        if str(job.state.value) == "FAILED":
            raise DeliveryError(f"{what}: the import job failed on Labelbox", retryable=False)
        rows: dict[str, str | None] = {}
        for text in self.client.fetch(job.status_file_url).text.splitlines():
            if not text.strip():
                continue
            row = json.loads(text)
            if row.get("status") == "SUCCESS":
                rows[str(row.get("uuid"))] = None
            else:
                errors = row.get("errors") or [{"message": "refused without a message"}]
                rows[str(row.get("uuid"))] = "; ".join(str(e.get("message", e)) for e in errors)
        return rows

    def __repr__(self) -> str:
        run = self.model_run_id
        return f"LabelboxConnector(endpoint={self.client.endpoint!r}, model_run_id={run!r})"


def _create_once(run: Any, name: str, lines: list[dict[str, Any]]) -> Any:
    """Import ``lines`` as ``name``; None when an import of that name exists already."""
    from lbox.exceptions import ResourceConflict

    try:
        return run.add_predictions(name, lines)
    except ResourceConflict:
        return None


#: Refused lines a dead item's reason names one by one (the rest are counted).
MAX_NAMED_LINES = 20


def _refusal(lines: list[dict[str, Any]], outcome: dict[str, str | None]) -> str | None:
    """Why an item is dead: its refused lines (number, uuid, feature) by message; else None."""
    refused: dict[str, list[str]] = {}
    count = 0
    for number, line in enumerate(lines):
        reason = outcome.get(line["uuid"], "not sent")
        if reason is None:
            continue
        count += 1
        if count <= MAX_NAMED_LINES:
            refused.setdefault(reason, []).append(
                f"line {number} ({line['uuid']}, {line.get('name')!r})"
            )
        else:
            refused.setdefault(reason, [])
    if not count:
        return None
    named = "; ".join(f"{reason}: {', '.join(which)}" for reason, which in refused.items())
    more = f"; and {count - MAX_NAMED_LINES} more" if count > MAX_NAMED_LINES else ""
    taken = len(lines) - count
    head = f"Labelbox refused {count} of {len(lines)} lines"
    head += f" (the {taken} others landed and are not sent again)" if taken else ""
    return f"{head}: {named}{more}"


def _packed(groups: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    """Recovery imports: whole groups (items) together, masks at most `MAX_MASKS_PER_IMPORT`."""
    chunks: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    for group in groups:
        for part in _chunks(group):
            masks = sum(map(is_mask_line, current)) + sum(map(is_mask_line, part))
            if current and (
                masks > MAX_MASKS_PER_IMPORT or len(current) + len(part) > MAX_LINES_PER_IMPORT
            ):
                chunks.append(current)
                current = []
            current = current + part
    if current:
        chunks.append(current)
    return chunks


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
