"""`PicselliaConnector`: predictions into a Picsellia deployment's monitoring, batch or online.

One body per image, ``POST {monitoring host}/api/deployment/<id>/predictions``
(`connectors.picsellia.format.monitoring_body` plus the image's base64):

- as a `connectors.base.Connector` (``predict(..., upload="append", to="picsellia")``), for
  users who replay traffic offline: each prediction becomes an `engine.plugins.MonitoredImage`
  with the model's measured latency for that image;
- as a `connectors.runtime.monitor_target.MonitorTarget` (``tessera serve --monitor
  picsellia``): the server's records, sent by the lead's ``MonitorJob`` sender actors.

Exactly once: 201 is delivered; 409 (the service already holds that filename at that
timestamp) counts as delivered, so a body that was stored but whose answer was lost, sent
again, is not stored twice; 429, 5xx and lost connections are retryable `DeliveryError`
failures (the runtime retries; the SDK itself retries neither 429 nor 500); any other 4xx refuses
that image alone (dead letter, with the service's reason) and the others go on.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import mimetypes
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from connectors.base import Connector, DeliveryError, DeliveryResult, RequestGate, UploadPlan
from connectors.picsellia.client import (
    HOST_VARIABLE,
    MONITORING_HOST_VARIABLE,
    ORGANIZATION_VARIABLE,
    TOKEN_VARIABLE,
    PicselliaClient,
)
from connectors.picsellia.format import (
    check_task,
    content_type_for,
    label_ids_from_labels,
    monitoring_body,
    monitoring_filename,
    prediction_key,
    stored_media_type,
)
from connectors.retry import RetryPolicy, call_with_retries
from connectors.runtime.monitor_target import MonitorTarget
from engine.plugins import MonitoredImage
from engine.prediction import Prediction

__all__ = ["JOB_TIMESTAMP", "MONITOR_CREDENTIALS", "OPTIONS", "PicselliaConnector"]

#: The plan option holding the job's start time (seconds since the epoch); an image's
#: timestamp is it plus its index in milliseconds, the same in every retry and resume.
JOB_TIMESTAMP = "job_timestamp"
#: The options `PicselliaConnector` takes (``upload_options``, ``--monitor-option``).
OPTIONS = (
    "deployment_id",
    "deployment_name",
    "monitoring_host",
    "organization_id",
    "label_ids",
    "shadow_label_ids",
    "source",
    "tags",
    JOB_TIMESTAMP,
)
#: What the monitor takes besides `OPTIONS`: its credentials (never journaled there).
MONITOR_CREDENTIALS = ("api_token", "host")
_PREPARE_RETRY = RetryPolicy(max_attempts=4, base_delay_s=0.5, max_delay_s=10.0)


def _check_label_ids(name: str, value: Any) -> dict[str, int] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"{name} must map class names to Picsellia label ids, got {value!r}")
    out = {}
    for cls, ident in value.items():
        if isinstance(ident, bool) or not isinstance(ident, (int, str)):
            raise ValueError(f"{name}[{cls!r}] must be an integer label id, got {ident!r}")
        try:
            out[str(cls)] = int(ident)
        except ValueError:
            raise ValueError(
                f"{name}[{cls!r}] must be an integer label id, got {ident!r}"
            ) from None
    return out


def _tags(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [t for t in (s.strip() for s in value.split(",")) if t]
    if isinstance(value, (list, tuple)):
        return [str(t) for t in value]
    raise ValueError(
        f"tags must be a list of strings (or one comma-separated string), got {value!r}"
    )


class PicselliaConnector(Connector, MonitorTarget):
    """Sends predictions to a Picsellia deployment's monitoring service.

    Modes:
        append: the only one: monitoring only ever adds predictions to the deployment
            (``create`` would have nothing to create: the deployment, its model and its
            labels are made in Picsellia).

    Options (``upload_options``, or ``--monitor-option`` when serving):
        deployment_id: The deployment (required, unless ``deployment_name``).
        deployment_name: The deployment's name, looked up in the organization.
        monitoring_host: The monitoring host (default ``$PICSELLIA_MONITORING_HOST``, else
            the deployment's ``oracle_host``).
        organization_id: The organization (default ``$PICSELLIA_ORGANIZATION_ID``, else the
            token's default one).
        label_ids: Class name -> label id (default: the deployment's model version labels).
        shadow_label_ids: The same for the shadow model (default: the shadow model
            version's labels, else ``label_ids``).
        source: The ``source`` of every body (default: none; the server sets its own).
        tags: Tags added to every body (a list, or a comma-separated string).
        job_timestamp: The batch job's start (seconds since the epoch); set by
            `start_upload` and kept in the journal, so that a resumed job sends the same
            timestamps.

    A batch prediction's latency is ``prediction.latency_ms / 1000`` (the model's time for
    that image); a prediction without one (None) is sent with latency 0.0. Its image is
    the file's bytes for a PNG or JPEG file, else the decoded image as PNG; its timestamp is
    ``job_timestamp + index / 1000`` and its filename `format.monitoring_filename` of its
    key, unique in the job.

    Credentials come from the environment (``$PICSELLIA_API_TOKEN``, ``$PICSELLIA_HOST``)
    or the arguments, never from the options: those are journaled, and secret-looking ones
    are redacted there, so a resumed job reads them from the environment again.

    As a monitor, its options may come when it is built (``monitor_options``, what
    ``plugins.monitor("picsellia", **options)`` gives) or to `start_monitor`; they may hold
    the credentials too (``api_token``, ``host``: a monitor's options are not journaled)
    and the runtime's (``queue_size``, ``dead_letter``...).

    Args:
        api_token: The API token (default ``$PICSELLIA_API_TOKEN``).
        host: The main host (default ``$PICSELLIA_HOST``, else Picsellia's).
        client: A ready client (tests); None builds one on first use.
        monitor_options: The monitor's options, kept for `validate` and `start_monitor`.

    Example:
        >>> model.predict("images/", upload="append", to="picsellia",
        ...               upload_options={"deployment_id": "3f2..."})   # doctest: +SKIP
    """

    name = "picsellia"
    modes = ("append",)

    def __init__(
        self,
        api_token: str | None = None,
        host: str | None = None,
        client: PicselliaClient | None = None,
        monitor_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self._api_token = api_token
        self._host = host
        self._client = client
        self._given_client = client is not None
        self._env: dict[str, str | None] | None = None
        self._monitor_options = None if monitor_options is None else dict(monitor_options)
        self._unique_names = False  # batch jobs: filenames unique in the job
        self.deployment_id: str | None = None
        self.deployment_name: str | None = None
        self.monitoring_host: str | None = None
        self.organization_id: str | None = None
        self.label_ids: dict[str, int] | None = None
        self.shadow_label_ids: dict[str, int] | None = None
        self.source: str | None = None
        self.tags: list[str] = []
        self.task = "detection"
        self.class_names: list[str] = []
        self.job_timestamp: float | None = None
        self._resolved = False

    def __repr__(self) -> str:
        return f"PicselliaConnector(deployment={self.deployment_id or self.deployment_name!r})"

    # ------------------------------------------------------------------ configuration
    @property
    def client(self) -> PicselliaClient:
        """The client, built on first use (from the arguments and the environment)."""
        if self._client is None:
            env = self._environment()
            self._client = PicselliaClient(
                self._api_token or env[TOKEN_VARIABLE],
                self._host or env[HOST_VARIABLE],
                monitoring_host=self.monitoring_host or env[MONITORING_HOST_VARIABLE],
                organization_id=self.organization_id or env[ORGANIZATION_VARIABLE],
                gate=self.gate,
            )
        return self._client

    def _environment(self) -> dict[str, str | None]:
        """The ``PICSELLIA_*`` variables of the process that first needed them.

        Read once (in the caller's process, by `validate`) and kept, so that the copies in
        a detached session or in uploader actors, whose environment may lack them, use
        the same credentials.
        """
        if self._env is None:
            names = (TOKEN_VARIABLE, HOST_VARIABLE, MONITORING_HOST_VARIABLE, ORGANIZATION_VARIABLE)
            self._env = {name: os.environ.get(name) or None for name in names}
        return self._env

    def validate(self) -> None:
        """Check the API token exists, and a monitor's options (no request).

        Raises:
            connectors.picsellia.client.PicselliaConfigError: No token; the message names
                ``PICSELLIA_API_TOKEN``.
            ValueError: A monitor option is unknown or malformed, or the deployment is
                missing.
        """
        from connectors.runtime.monitor_target import MONITOR_OPTIONS

        options = self._monitor_options
        if options is not None:
            self._api_token = options.get("api_token") or self._api_token
            self._host = options.get("host") or self._host
        _ = self.client
        if options is not None:
            ignore = (*MONITOR_OPTIONS, *MONITOR_CREDENTIALS)
            self._read_options(options, ignore=ignore, keep=False)

    def bind(self, gate: RequestGate) -> None:
        """Route the client's requests through ``gate`` too."""
        super().bind(gate)
        if self._client is not None:
            self._client.gate = gate

    def check_options(self, mode: str, options: dict[str, Any]) -> None:
        """Refuse an unknown option, a missing deployment or a malformed value, at once."""
        from connectors.runtime import RUNTIME_OPTIONS

        self._read_options(options, ignore=RUNTIME_OPTIONS, keep=False)

    def _read_options(
        self, options: Mapping[str, Any], ignore: Sequence[str] = (), keep: bool = True
    ) -> None:
        unknown = sorted(set(options) - set(OPTIONS) - set(ignore))
        if "api_token" in unknown:
            raise ValueError(
                "the Picsellia API token is not an upload option (upload options are kept "
                "in the job's journal): set PICSELLIA_API_TOKEN in the environment"
            )
        if unknown:
            raise ValueError(
                f"unknown Picsellia options {unknown}; Picsellia takes: {list(OPTIONS)}"
            )
        deployment_id = options.get("deployment_id")
        deployment_name = options.get("deployment_name")
        if not deployment_id and not deployment_name:
            raise ValueError(
                "Picsellia needs the deployment: upload_options={'deployment_id': ...} "
                "(or 'deployment_name')"
            )
        label_ids = _check_label_ids("label_ids", options.get("label_ids"))
        shadow_label_ids = _check_label_ids("shadow_label_ids", options.get("shadow_label_ids"))
        tags = _tags(options.get("tags"))
        stamp = options.get(JOB_TIMESTAMP)
        if stamp is not None and (isinstance(stamp, bool) or not isinstance(stamp, (int, float))):
            raise ValueError(f"{JOB_TIMESTAMP} must be seconds since the epoch, got {stamp!r}")
        if not keep:
            return
        self.deployment_id = str(deployment_id) if deployment_id else None
        self.deployment_name = str(deployment_name) if deployment_name else None
        self.monitoring_host = options.get("monitoring_host") or None
        self.organization_id = options.get("organization_id") or None
        self.label_ids, self.shadow_label_ids = label_ids, shadow_label_ids
        source = options.get("source")
        self.source = None if source is None else str(source)
        self.tags = tags
        self.job_timestamp = None if stamp is None else float(stamp)
        self._client = self._rebuilt_client()
        self._resolved = False

    def _rebuilt_client(self) -> PicselliaClient | None:
        """None (built again from the options on first use), or the given client updated."""
        client = self._client
        if client is None or not self._given_client:
            if client is not None:
                client.close()
            return None
        if self.monitoring_host:
            client.monitoring_host = str(self.monitoring_host).rstrip("/")
        if self.organization_id:
            client.organization_id = str(self.organization_id)
        return client

    def _resolve(self) -> None:
        """Find the deployment, its monitoring host and its labels (once per process)."""
        if self._resolved:
            return
        client = self.client
        if self.deployment_id is None or client.monitoring_host is None:
            found = client.find_deployment(self.deployment_id, self.deployment_name)
            self.deployment_id = str(found.get("id") or self.deployment_id)
        if self.label_ids is None or (self.shadow_label_ids is None and self._has_shadow):
            labels, shadow = client.deployment_labels(self.deployment_id)
            if self.label_ids is None:
                self.label_ids = label_ids_from_labels(labels)
            if self.shadow_label_ids is None and shadow is not None:
                self.shadow_label_ids = label_ids_from_labels(shadow)
        self._resolved = True

    _has_shadow = False

    # ------------------------------------------------------------------ batch jobs
    def start_upload(
        self,
        job_id: str,
        mode: str,
        class_names: list[str],
        task: str,
        options: dict[str, Any],
        sources: dict[str, Any],
    ) -> Any:
        """`Connector.start_upload`, with the job's start time kept in the plan (journaled)."""
        options = {JOB_TIMESTAMP: time.time(), **options}
        return super().start_upload(job_id, mode, class_names, task, options, sources)

    def prepare(self, plan: UploadPlan) -> None:
        """Check the mode, task and options; find the deployment and its labels.

        Raises:
            UnsupportedModeError: Not ``append``.
            ValueError: A task Picsellia does not take, or a bad option.
            DeliveryError: The deployment is not found, or Picsellia refused the token.
        """
        self.check_mode(plan.mode)
        check_task(plan.task)
        self._read_options(plan.options)
        self._unique_names = True
        if self.job_timestamp is None:  # started without start_upload: now, for this run
            self.job_timestamp = time.time()
        self.task, self.class_names = plan.task, list(plan.class_names)
        call_with_retries(self._resolve, _PREPARE_RETRY)

    def item_key(self, prediction: Prediction) -> str:
        """`format.prediction_key`: origin, frame and position of the item."""
        return prediction_key(prediction)

    def monitored(self, prediction: Prediction) -> MonitoredImage:
        """The `MonitoredImage` a batch prediction is sent as (its image read or encoded).

        Raises:
            OSError, ValueError: The image cannot be read.
        """
        media_type = stored_media_type(prediction)
        as_file = prediction.path is not None and prediction.frame_index is None
        if as_file and mimetypes.guess_type(str(prediction.path))[0] == media_type:
            image = Path(str(prediction.path)).read_bytes()
        else:
            image = _png(prediction.load_image())
        latency_ms = getattr(prediction, "latency_ms", None)
        stamp = self.job_timestamp if self.job_timestamp is not None else 0.0
        return MonitoredImage(
            key=self.item_key(prediction),
            prediction=prediction,
            latency_s=0.0 if latency_ms is None else float(latency_ms) / 1000.0,
            timestamp=round(stamp + prediction.index / 1000.0, 3),
            image=image,
            content_type=media_type,
            source=self.source,
            tags=list(self.tags),
        )

    def deliver(self, batch: Sequence[Prediction]) -> DeliveryResult:
        """Send a batch of predictions; see the module docstring for the answers.

        Raises:
            DeliveryError: A retryable failure (the whole batch is retried; what was
                already stored answers 409 and counts as delivered).
        """
        result = DeliveryResult()
        records = []
        for prediction in batch:
            try:
                records.append(self.monitored(prediction))
            except (OSError, ValueError) as error:
                result.failed[self.item_key(prediction)] = f"cannot read the image: {error}"
        sent = self.deliver_monitored(records)
        result.delivered.extend(sent.delivered)
        result.failed.update(sent.failed)
        return result

    # ------------------------------------------------------------------ monitoring
    def prepare_monitor(
        self,
        class_names: list[str],
        task: str,
        shadow_class_names: list[str] | None,
        options: dict[str, Any],
    ) -> None:
        """Keep the classes, check the task and options; no request is sent.

        Raises:
            ValueError: A task Picsellia does not take, or a bad option.
        """
        from connectors.runtime.monitor_target import MONITOR_OPTIONS

        check_task(task)
        preset = {
            k: v for k, v in (self._monitor_options or {}).items() if k not in MONITOR_OPTIONS
        }
        options = {**preset, **options}
        self._api_token = options.pop("api_token", None) or self._api_token
        self._host = options.pop("host", None) or self._host
        self._read_options(options)
        self.task, self.class_names = task, list(class_names)
        self._has_shadow = shadow_class_names is not None
        self._unique_names = False

    def start_monitor(
        self,
        class_names: list[str],
        task: str,
        shadow_class_names: list[str] | None = None,
        options: dict[str, Any] | None = None,
    ) -> Any:
        """`MonitorTarget.start_monitor` with the options given when built, then ``options``."""
        merged = {**(self._monitor_options or {}), **(options or {})}
        self._monitor_options = None
        return super().start_monitor(class_names, task, shadow_class_names, merged)

    def _body(self, record: MonitoredImage) -> dict[str, Any]:
        extra = [t for t in self.tags if t not in record.tags]
        if extra or (self.source is not None and record.source is None):
            record = dataclasses.replace(
                record, tags=[*record.tags, *extra], source=record.source or self.source
            )
        filename = None
        if self._unique_names:
            kind = content_type_for(record.prediction.name, record.content_type)
            filename = monitoring_filename(record.prediction.name, record.key, kind)
        return monitoring_body(record, self.label_ids or {}, self.shadow_label_ids, filename)

    def deliver_monitored(self, records: Sequence[MonitoredImage]) -> DeliveryResult:
        """Send ``records``; 201 and 409 are delivered, another 4xx refuses that record.

        Raises:
            DeliveryError: A retryable failure (429, 5xx, no answer) or the deployment
                could not be found.
        """
        self._resolve()
        result = DeliveryResult()
        for record in records:
            try:
                body = self._body(record)
                body["image"] = base64.b64encode(_image_bytes(record, body)).decode("ascii")
            except (OSError, ValueError) as error:
                result.failed[record.key] = str(error)
                continue
            try:
                self.client.post_prediction(str(self.deployment_id), body)
            except DeliveryError as error:
                if error.retryable:
                    raise
                result.failed[record.key] = str(error)
                continue
            result.delivered.append(record.key)
        return result

    def dead_letter_line(self, record: MonitoredImage) -> dict[str, Any]:
        """The body sent for ``record`` without the image (or why it could not be built)."""
        try:
            return self._body(record)
        except ValueError as error:
            prediction = record.prediction
            return {"key": record.key, "filename": prediction.name, "error": str(error)}

    def close(self) -> None:
        """Close the client's session."""
        if self._client is not None:
            self._client.close()


def _png(image: Any) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _image_bytes(record: MonitoredImage, body: dict[str, Any]) -> bytes:
    """The record's bytes, as PNG when Picsellia does not take their type."""
    if record.image is None:
        body["content_type"] = content_type_for("", "image/png")
        return _png(record.prediction.load_image())
    return record.image
