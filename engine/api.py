"""The public entry points: `deploy` a model, then `predict` with the `ModelAPI`."""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import re
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import ray
from tqdm.auto import tqdm

from engine import jobs, plugins
from engine.client import ModelClient
from engine.models.base import ModelAdapter
from engine.models.zoo import resolve_model
from engine.outputs import OutputSpec, open_sinks, output_spec
from engine.prediction import Prediction
from engine.redaction import REDACTED
from engine.results import PredictionResults, PredictionStream
from engine.runtime import cluster_gpus, ensure_ray, near_caller, runs_private_ray
from engine.session import (
    DEFAULT_MAX_BUFFERED_BLOCKS,
    NAMESPACE,
    PredictionSession,
    SessionActor,
    SessionCore,
    session_actor_name,
)
from engine.settings import ModelInfo, PredictSettings, validate_settings
from engine.sources.fetch import MediaFetcher
from engine.sources.items import Item
from engine.sources.job_items import JobItems
from engine.tracking import VideoAnnotation
from engine.worker import WorkerLayout, start_model_workers

logger = logging.getLogger(__name__)

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")
_ENGINE_OPTIONS = ("num_workers", "threads", "half")
#: Fewest model batches per plan of a detached session (see `SessionCore._chunks`).
PACE_MIN_BATCHES = 16


class ModelAPI:
    """A deployed model: its workers hold the loaded weights until `close`.

    Obtain one with `engine.deploy`. Usable as a context manager.
    """

    def __init__(
        self,
        workers: list[Any],
        info: ModelInfo,
        device: str,
        adapter: ModelAdapter,
        layout: WorkerLayout,
        spec: dict[str, Any] | None = None,
    ) -> None:
        self._workers = workers
        self._closed = False
        self._adapter = adapter
        self._layout = layout
        self._spec = spec or {}
        self.info = info
        self.device = device

    @property
    def classes(self) -> list[str]:
        """The model's class names."""
        return list(self.info.classes)

    @property
    def task(self) -> str:
        """The model's task: detection, instance_segmentation, keypoints or classification."""
        return self.info.task

    @property
    def num_workers(self) -> int:
        """How many model workers (Ray actors) serve this model."""
        return len(self._workers)

    def resources(self) -> list[dict[str, Any]]:
        """Each worker's memory: process RSS now and at its peak, and GPU memory on a GPU.

        Example:
            >>> model.resources()[0]["process"]["peak_rss"]   # doctest: +SKIP
            412876800
        """
        self._require_open("resources")
        return ray.get([worker.resources.remote() for worker in self._workers])

    def settings(self, **options: Any) -> PredictSettings:
        """Validate `predict` options against this model without running anything."""
        return validate_settings(options, self.info)

    def predict(
        self,
        input: Any = None,  # noqa: A002
        upload: str | None = None,
        to: Any = None,
        upload_options: dict[str, Any] | None = None,
        out: str | Path | None = None,
        format: str | None = None,  # noqa: A002
        job_id: str | None = None,
        journal_dir: str | Path | None = None,
        stream: bool = False,
        exist_ok: bool = False,
        **options: Any,
    ) -> PredictionResults | PredictionStream:
        """Predict over images and videos; one Prediction per image or frame, in order.

        Args:
            input: An image or video path, a directory, an http(s) URL, a PIL image, a
                numpy array (HWC RGB uint8; grayscale and RGBA are converted), a
                platform's local dataset, or a list mixing these. A platform's ids go
                beside it as the keywords that platform declares
                (`engine.plugins.input_keywords`: e.g. ``project_id(s)``,
                ``image_id(s)``); their images are downloaded in parallel by the decode
                tasks, and their Predictions keep the platform's media URL in ``url``
                and the dataset name.
            upload: Send the predictions to a platform as they come: "create",
                "append", "replace" or "iou_merge" (what the uploader supports).
            to: The platform's name (`engine.plugins.uploader_names`) or an uploader
                instance (`engine.plugins.Uploader`, e.g. a `Connector`).
            upload_options: The connector's options and the upload runtime's
                (``requests_per_second``, ``max_in_flight``, ``num_uploaders``,
                ``batch_size``, ``journal_dir``).
            out: Also write the predictions into this directory as they come. A folder
                that holds files already is refused (nothing runs), unless ``exist_ok``.
            format: The export's format: "jsonl" (default), "coco", "parquet", or a
                platform's (`engine.plugins.export_formats`).
            job_id: The id of this job, when it has outputs (default: a new one, reported
                in ``results.outputs["job"]``); `engine.resume` continues a job that was
                killed, predicting only what is missing (see `engine.jobs`).
            journal_dir: Where job directories live (default ``~/.tessera/jobs``, or the
                upload's ``journal_dir``).
            stream: Return the Predictions as they come (a `PredictionStream`, read
                once) instead of the whole list: the driver then holds none of them, for
                jobs too large to keep in memory (a large input is listed as it goes).
            exist_ok: Write into an ``out`` folder that holds files already, replacing
                those of the same names (`engine.outputs.check_out_folder`).
            **options: conf, batch_size, img_size, classes, recursive, progress,
                max_pixels, url_timeout, the sliding-window and the video options (see
                `engine.settings.SETTINGS`). Any other keyword is an error.

        Returns:
            A list of Predictions (with ``.skipped`` non-image files and ``.summary()``),
            or with ``stream=True`` a `PredictionStream` of them. An item that could not
            be read or predicted is a Prediction whose ``error`` says why; it never stops
            the others.

        Example:
            >>> model = engine.deploy("reference/color-boxes")  # doctest: +SKIP
            >>> model = engine.deploy("reference/color-boxes")  # doctest: +SKIP
            >>> preds[0].boxes, preds[0].classes  # doctest: +SKIP
        """
        # 1) settings and outputs, once, at the boundary; 2) input -> items
        self._require_open("predict")
        if not isinstance(stream, bool):
            raise ValueError(f"stream must be True or False, got {stream!r}")
        platform = plugins.pop_platform_inputs(options)
        settings = validate_settings(options, self.info)
        outputs = output_spec(upload, to, upload_options, out, format, exist_ok)
        job = self._resolve(input, settings, platform)
        outputs = self._start_job(
            outputs, job, input, platform, options, settings, job_id, journal_dir
        )
        # 3) a session in this process over the deployed workers, read to the end
        report: dict[str, Any] = {}
        predictions = self._stream(job, settings, "predict", outputs, report)
        if stream:
            return PredictionStream(predictions, job.skipped, job.num_rows, report)
        return PredictionResults(list(predictions), job.skipped, report.get("outputs"))

    def resume(
        self,
        job_id: str,
        journal_dir: str | Path | None = None,
        upload_options: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> PredictionResults:
        """Continue a job that was killed: predict only its missing items, into its outputs.

        The inputs are resolved again from the job's record and the items its journal
        has done are dropped; the exports are written anew, from the kept predictions of
        the done items and then the new ones, so each ends with every item exactly once;
        an upload skips what it delivered before (see `engine.jobs`).

        Args:
            job_id: The job (``results.outputs["job"]["job_id"]``, ``--job-id``).
            journal_dir: Where job directories live, if not the default.
            upload_options: Values for upload options the record keeps redacted (secrets).
            **overrides: Settings, which must equal the job's (``progress`` may change).

        Returns:
            The Predictions of this run (the missing items); ``outputs["job"]`` counts
            ``done_before`` and ``done_now``.

        Raises:
            ValueError: No such job; a job of in-memory images; another model or other
                settings than the job's (the message names each difference); inputs that
                no longer resolve to the job's items.

        Example:
            >>> model.resume("nightly").outputs["job"]["done_now"]  # doctest: +SKIP
            17
        """
        self._require_open("resume")
        record = jobs.JobRecord.load(job_id, journal_dir)
        _check_resumable(record)
        # 1) the same model and settings as the job's
        differences = jobs.compare_model(record.model, self._identity())
        options = {**record.options, **overrides}
        settings = validate_settings(options, self.info)
        differences += jobs.compare_settings(record.settings, settings.describe(self.info.classes))
        if differences:
            raise ValueError(
                f"job {job_id!r} cannot be resumed with another model or other settings: "
                + "; ".join(differences)
                + " (start a new job to change them)"
            )
        outputs = _recorded_outputs(record, upload_options)
        # 2) the same items, less those done
        resolved = self._resolve(record.input, settings, record.platform or None)
        keys = [key for item in resolved.items for _, key in jobs.item_keys(item)]  # one pass
        with jobs.JobJournal(record.directory) as journal:
            change = jobs.changed_items(journal.item_keys(), keys)
            done = journal.done_keys()
        if change:
            raise ValueError(
                f"job {job_id!r}: its inputs no longer resolve to the job's items ({change}); "
                "a resume predicts exactly the job's items: restore them or start a new job"
            )
        job = dataclasses.replace(resolved, items=resolved.items.without(done))
        spec = jobs.JobSpec(job_id, record.directory, resume=True)
        outputs = dataclasses.replace(outputs, job=spec)
        logger.info("resuming job %s: %d of %d item(s) done", job_id, len(done), len(keys))
        # 3) the rest, into the same outputs (rebuilt from the kept predictions first)
        report: dict[str, Any] = {}
        if job.items.num_items:
            predictions = list(self._stream(job, settings, "resume", outputs, report, job_id))
        else:
            predictions, report["outputs"] = [], self._rebuild(outputs, job_id, job.sources)
        return PredictionResults(predictions, job.skipped, report.get("outputs"))

    def _identity(self) -> dict[str, Any]:
        """The model's identity as a job records it (`engine.jobs.JobRecord.model`)."""
        return {
            "info": self.info.to_json(),
            "spec": {k: v for k, v in self._spec.items() if k != "weights"},
            "weights": self._spec.get("weights"),
        }

    def _start_job(
        self,
        outputs: OutputSpec,
        resolved: _Job,
        input: Any,  # noqa: A002
        platform: dict[str, Any],
        options: dict[str, Any],
        settings: PredictSettings,
        job_id: str | None,
        journal_dir: str | Path | None,
    ) -> OutputSpec:
        """Write the record and item list of a job with outputs; return its outputs."""
        if outputs.empty:
            if job_id is not None or journal_dir is not None:
                raise ValueError("job_id= and journal_dir= need outputs: out= or upload=")
            return outputs
        root = journal_dir if journal_dir is not None else outputs.upload_options.get("journal_dir")
        job_id = job_id if job_id is not None else jobs.new_job_id()
        directory = jobs.job_dir(job_id, root)
        if jobs.JobRecord.exists(job_id, root):
            raise ValueError(
                f"job {job_id!r} already exists in {directory}: resume it "
                f"(engine.resume({job_id!r}), tessera predict --resume {job_id}) "
                "or choose another job_id"
            )
        upload_options = dict(outputs.upload_options)
        if outputs.upload is not None:
            upload_options.setdefault("journal_dir", str(directory.parent))
        described, reason = jobs.describe_input(input)
        if resolved.in_memory and reason is None:
            reason = jobs.describe_input(object())[1]
        jobs.JobRecord(
            job_id=job_id,
            directory=str(directory),
            input=described,
            platform=platform,
            options=jobs.redact(dict(options)),
            settings=settings.describe(self.info.classes),
            model=self._identity(),
            outputs={
                "upload": outputs.upload,
                "to": None if outputs.to is None else outputs.to.name,
                "upload_options": jobs.redact(upload_options),
                "out": None if outputs.out is None else os.path.abspath(outputs.out),
                "format": outputs.format,
            },
            not_resumable=reason,
        ).write()
        with jobs.JobJournal(directory) as journal:
            journal.record_items(key for item in resolved.items for key in jobs.item_keys(item))
        job = jobs.JobSpec(job_id, str(directory))
        return dataclasses.replace(outputs, upload_options=upload_options, job=job)

    def _rebuild(self, outputs: OutputSpec, job_id: str, sources: dict[str, Any]) -> dict[str, Any]:
        """Re-open a finished job's outputs and feed them its kept predictions only."""
        sinks = open_sinks(outputs, job_id, list(self.info.classes), self.info.task, sources)
        return {sink.name: sink.close() for sink in sinks}

    def track(
        self,
        input: Any = None,  # noqa: A002
        tracker: Any = "bytetrack",
        reid_weights: str | Path | None = None,
        tracker_options: dict[str, Any] | None = None,
        **options: Any,
    ) -> list[VideoAnnotation]:
        """Detect objects in videos with this model and track them (see `engine.track`)."""
        from engine.tracking import check_tracker
        from engine.tracking.actors import track_videos

        self._require_open("track")
        check_tracker(tracker, reid_weights, tracker_options)  # before any frame is predicted
        platform = plugins.pop_platform_inputs(options)
        settings = validate_settings(options, self.info)
        job = self._resolve(input, settings, platform)
        not_videos = [
            item.name for item in job.items if item.source != "video" and item.error is None
        ]
        if not_videos:
            raise ValueError(
                f"track() takes videos; these inputs are not videos: {', '.join(not_videos)}"
            )
        frames: dict[str, list[int]] = collections.defaultdict(list)
        for item in job.items:
            frames[str(item.path)].extend(item.frames or ())
        return track_videos(
            self._stream(job, settings, "track"),
            job.videos,
            dict(frames),
            tracker=tracker,
            stride=settings.video.stride,
            reid_weights=reid_weights,
            tracker_options=tracker_options,
        )

    def _stream(
        self,
        job: _Job,
        settings: PredictSettings,
        label: str,
        outputs: OutputSpec | None = None,
        report: dict[str, Any] | None = None,
        job_id: str | None = None,
    ) -> Iterator[Prediction]:
        """Predictions of ``job`` as they come, in order, with a progress bar.

        Once the stream ends, ``report["outputs"]`` holds the outputs' summaries.
        """
        if job_id is None:
            job_id = outputs.job.job_id if outputs is not None and outputs.job else None
        job_id = job_id or uuid.uuid4().hex[:12]
        core = SessionCore(
            job.items,
            settings,
            self.info,
            workers=self._workers,
            context=self._context(job, settings, outputs),
            pace_batches=PACE_MIN_BATCHES * 2,  # a large job's items are listed as it goes
            grow_plans=True,  # first results soon, then few plans (each has a start-up)
            videos=job.videos,
            outputs=outputs,
            job_id=job_id,
            fetch=job.fetch,
            sources=job.sources,
            items_total=job.num_rows,
        )
        session = PredictionSession(core, "local", job.in_memory, remote=False)
        unit = "frame" if job.videos else "img"
        with tqdm(
            total=job.num_rows, disable=not settings.general.progress, desc=label, unit=unit
        ) as bar:
            for prediction in session:
                yield prediction
                bar.update(1)
        if report is not None:
            report["outputs"] = core.status()["outputs"]

    def predict_detached(
        self,
        input: Any = None,  # noqa: A002
        ordered: bool = True,
        max_buffered_blocks: int = DEFAULT_MAX_BUFFERED_BLOCKS,
        idle_timeout_s: float = 3600.0,
        upload: str | None = None,
        to: Any = None,
        upload_options: dict[str, Any] | None = None,
        out: str | Path | None = None,
        format: str | None = None,  # noqa: A002
        job_id: str | None = None,
        journal_dir: str | Path | None = None,
        exist_ok: bool = False,
        **options: Any,
    ) -> PredictionSession:
        """Start predicting in the background and return the session at once.

        The job runs in a detached, named Ray actor that loads its own copy of the model,
        so it outlives this process: `PredictionSession.detach` and `engine.attach` let
        another process on the cluster take the stream over.

        Args:
            input: As for `predict`.
            ordered: Hand out predictions in input order; False hands them out as they
                finish, which can be faster when items differ in cost.
            max_buffered_blocks: Finished result blocks (one per model batch) that wait
                for the consumer before production stalls.
            idle_timeout_s: Once production has ended, a session nobody reads for this
                long frees itself.
            upload: As for `predict`; the upload runs in the session, so it goes on
                after this process detaches ("outputs" in `status()` summarises it).
            to: As for `predict`.
            upload_options: As for `predict`.
            out: As for `predict`; written by the session's process.
            format: As for `predict`.
            job_id: As for `predict`: a job killed with its session resumes with
                `engine.resume` (``status()["context"]["job"]`` names it).
            journal_dir: As for `predict`.
            exist_ok: As for `predict`.
            **options: As for `predict`.

        Returns:
            The session: iterate it, or use ``next``, ``status``, ``progress``, ``stop``.

        Example:
            >>> session = model.predict_detached("folder/", recursive=True)  # doctest: +SKIP
            >>> first = session.next(timeout=60)  # doctest: +SKIP
        """
        self._require_open("predict_detached")
        if (
            isinstance(max_buffered_blocks, bool)
            or not isinstance(max_buffered_blocks, int)
            or (max_buffered_blocks < 1)
        ):
            raise ValueError(
                f"max_buffered_blocks must be a positive integer, got {max_buffered_blocks!r}"
            )
        if not isinstance(ordered, bool):
            raise ValueError(f"ordered must be True or False, got {ordered!r}")
        platform = plugins.pop_platform_inputs(options)
        settings = validate_settings(options, self.info)
        outputs = output_spec(upload, to, upload_options, out, format, exist_ok)
        resolved = self._resolve(input, settings, platform)
        outputs = self._start_job(
            outputs, resolved, input, platform, options, settings, job_id, journal_dir
        )
        if runs_private_ray():
            logger.warning(
                "predict_detached: this process runs its own Ray (address='local'), so the "
                "session ends when this process does; deploy without an address to run it "
                "on Tessera's local Ray, which outlives this process"
            )
        session_id = uuid.uuid4().hex[:12]
        name = session_actor_name(session_id)
        actor = (
            ray.remote(SessionActor)
            .options(
                name=name,
                namespace=NAMESPACE,
                lifetime="detached",
                num_cpus=0,
                max_concurrency=16,
                **near_caller(),
            )
            .remote(
                idle_timeout_s=idle_timeout_s,
                items=resolved.items,
                settings=settings,
                model=None,
                adapter=self._adapter,
                layout=self._layout,
                ordered=ordered,
                max_buffered_blocks=max_buffered_blocks,
                context=self._context(resolved, settings, outputs),
                name_prefix=name,
                pace_batches=max(PACE_MIN_BATCHES, 4 * max_buffered_blocks),
                videos=resolved.videos,
                outputs=outputs,
                job_id=outputs.job.job_id if outputs.job is not None else session_id,
                fetch=resolved.fetch,
                sources=resolved.sources,
                items_total=resolved.num_rows,
            )
        )
        return PredictionSession(actor, session_id, resolved.in_memory)

    def _resolve(
        self,
        input: Any,  # noqa: A002
        settings: PredictSettings,
        platform: dict[str, dict[str, list[Any]]] | None = None,
    ) -> _Job:
        if input is None and not platform:
            keywords = ", ".join(sorted(plugins.input_keywords())) or "none installed"
            raise ValueError(
                "nothing to predict: pass input= (paths, URLs, images) or a platform's ids "
                f"({keywords})"
            )
        extra: list[Item] = []
        fetch, sources = None, {}
        if platform:
            extra, fetch, sources = _platform_items(platform)
        items = JobItems.survey(
            input if input is not None else [],
            settings.general.recursive,
            settings.video,
            extra,
        )
        if items.skipped:
            logger.warning("skipped %d non-image file(s)", len(items.skipped))
        return _Job(items, fetch, sources)

    def _context(
        self, resolved: _Job, settings: PredictSettings, outputs: OutputSpec | None = None
    ) -> dict[str, Any]:
        job = outputs.job if outputs is not None else None
        return {
            **({"job": dataclasses.asdict(job)} if job is not None else {}),
            "input": {
                "items": resolved.num_rows,
                "videos": len(resolved.videos),
                "sources": dict(resolved.items.sources),
                "skipped": len(resolved.skipped),
                "first": list(resolved.items.first),
            },
            "model": self.info.name,
            "task": self.info.task,
            "device": self.device,
            "settings": settings.describe(self.info.classes),
        }

    def close(self) -> None:
        """Stop the model workers and free what they hold; the model predicts no more."""
        for worker in self._workers:
            ray.kill(worker)
        self._workers = []
        self._closed = True

    @property
    def closed(self) -> bool:
        """True once `close` has stopped the model workers."""
        return self._closed

    def _require_open(self, call: str) -> None:
        if self.closed:
            raise RuntimeError(
                f"{call}(): the model {self.info.name!r} is closed (model.close() stopped "
                "its workers); deploy it again with engine.deploy(...)"
            )

    def __enter__(self) -> ModelAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"ModelAPI(model={self.info.name!r}, task={self.info.task!r}, "
            f"device={self.device!r}, workers={self.num_workers})"
        )


@dataclass
class _Job:
    """A resolved input: its items (listed lazily when many) and what goes with them."""

    items: JobItems
    fetch: Any = None
    sources: dict[str, Any] = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        """Predictions the job produces: one per image and per selected video frame."""
        return self.items.num_rows

    @property
    def skipped(self) -> list[str]:
        """Files of input folders that are not images or videos."""
        return self.items.skipped

    @property
    def in_memory(self) -> dict[int, Any]:
        """Item index -> RGB array of each in-memory input."""
        return self.items.in_memory

    @property
    def videos(self) -> dict[str, Any]:
        """Path -> probed `VideoInfo` of each video."""
        return self.items.videos


def _platform_items(
    ids: dict[str, dict[str, list[Any]]],
) -> tuple[list[Item], MediaFetcher | None, dict[str, Any]]:
    """Ask each platform for the media its ids stand for, as items numbered from 0.

    Returns:
        The items, the fetcher of the platforms' media (for the decode tasks) and what
        the inputs came from (for an upload's ``create``; one platform's, or by platform
        name).
    """
    items: list[Item] = []
    fetchers: dict[str, Any] = {}
    sources: dict[str, Any] = {}
    for name, keywords in ids.items():
        platform = plugins.platform(name)
        inputs = platform.resolve_inputs(keywords)
        for ref in inputs.refs:
            source = "video" if ref.video else platform.name
            items.append(
                Item(
                    index=len(items),
                    source=source,
                    name=ref.name,
                    path=ref.path,
                    url=ref.url,
                    dataset=ref.dataset,
                )
            )
        if inputs.fetch is not None and platform.url_scheme:
            fetchers[platform.url_scheme] = inputs.fetch
        sources[platform.name] = inputs.sources
    only = next(iter(sources.values())) if len(sources) == 1 else sources
    return items, (MediaFetcher(fetchers) if fetchers else None), only


def deploy(
    model: str | Path | ModelAdapter | type[ModelAdapter],
    device: str = "cpu",
    address: str | None = None,
    **options: Any,
) -> ModelAPI:
    """Load a model onto Ray workers and return the API to predict with it.

    Args:
        model: A zoo name (see `tessera models`), a checkpoint path (Tessera checkpoint or
            TorchScript), or your own `ModelAdapter` subclass or instance.
        device: "cpu", "cuda" (a GPU per worker, placed by Ray) or "cuda:N" (GPU N of the
            node, outside Ray's GPU accounting).
        address: A Ray cluster to join; None uses RAY_ADDRESS, else a live ``ray start``
            cluster of this machine, else starts a local Ray ("local": always that; see
            `engine.runtime.ensure_ray`).
        **options: ``num_workers`` (model workers; default one per GPU with cuda, else 1),
            ``threads`` (torch threads per CPU worker; default the node's CPUs divided among
            the workers), ``half`` (float16 autocast, with a cuda device only), and the
            model's options: ``pretrained``, ``weights``,
            ``classes``, ``architecture``, ``task``.

    Returns:
        A ModelAPI whose workers hold the loaded model.

    Raises:
        ValueError: An invalid device or option, or cuda without GPUs in the cluster.
        RuntimeError: The model cannot load: at once, before Ray starts, when its
            `ModelAdapter.check_ready` tells (pretrained weights neither cached nor
            reachable), else once a worker tried.

    Example:
        >>> model = engine.deploy("faces/mtcnn")  # doctest: +SKIP
        >>> model.predict("examples/astronaut.png")[0].boxes  # doctest: +SKIP
    """
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    engine_options = {k: options.pop(k) for k in _ENGINE_OPTIONS if k in options}
    half = _checked_half(engine_options.pop("half", False), device)
    adapter = resolve_model(model, **options)
    adapter.check_ready()  # what only a worker's load would tell, told before Ray starts
    ensure_ray(address)
    _ship_user_code(type(adapter))
    layout = WorkerLayout(device, *_worker_layout(device, **engine_options), half=half)
    workers, model_info = start_model_workers(adapter, layout)
    logger.info("deployed %s on %d %s worker(s)", model_info.name, layout.num_workers, device)
    return ModelAPI(
        workers, model_info, device, adapter, layout, _deploy_spec(model, device, options)
    )


def _deploy_spec(model: Any, device: str, options: dict[str, Any]) -> dict[str, Any]:
    """How a model was deployed, as a job records it (to deploy it again on resume)."""
    name = None
    if isinstance(model, (str, os.PathLike)):
        name = os.fspath(model)
        name = os.path.abspath(name) if Path(name).exists() else name
    weights = options.get("weights") or (name if name and Path(name).is_file() else None)
    plain = {k: v for k, v in options.items() if isinstance(v, (str, int, float, bool, list))}
    return {
        "model": name,
        "device": device,
        "options": plain,
        "weights": jobs.weights_identity(weights),
    }


def resume(
    job_id: str,
    model: str | Path | ModelAPI | None = None,
    journal_dir: str | Path | None = None,
    address: str | None = None,
    upload_options: dict[str, Any] | None = None,
    **overrides: Any,
) -> PredictionResults:
    """Continue a killed job (`ModelAPI.resume`), deploying the job's model if need be.

    Args:
        job_id: The job's id.
        model: None deploys the model the job recorded (its zoo name or path, device and
            options); a name or path must be the job's; a deployed `ModelAPI` is used
            as it is (it must be the job's model).
        journal_dir: Where job directories live, if not the default.
        address: The Ray cluster to join when the model is deployed here.
        upload_options: Values for upload options the record keeps redacted (secrets).
        **overrides: Settings, which must equal the job's.

    Returns:
        The Predictions of this run (the items the job was missing).

    Raises:
        ValueError: No such job, a job of in-memory images, another model or other
            settings than the job's (each difference named).

    Example:
        >>> engine.resume("nightly", journal_dir="/data/jobs")  # doctest: +SKIP
    """
    if isinstance(model, ModelAPI):
        return model.resume(job_id, journal_dir, upload_options, **overrides)
    record = jobs.JobRecord.load(job_id, journal_dir)
    _check_resumable(record)
    spec = dict(record.model.get("spec") or {})
    recorded = spec.get("model")
    if model is None and not recorded:
        name = (record.model.get("info") or {}).get("name")
        raise ValueError(
            f"job {job_id!r} ran a model given as an object ({name!r}), which the record "
            "cannot deploy again: pass model= (the deployed ModelAPI)"
        )
    if model is not None:
        given = os.fspath(model)
        given = os.path.abspath(given) if Path(given).exists() else given
        if recorded and given != recorded:
            raise ValueError(
                f"job {job_id!r} cannot be resumed with another model: "
                f"model: {recorded!r} in the job, {given!r} now"
            )
        recorded = given
    api = deploy(
        recorded, device=spec.get("device", "cpu"), address=address, **spec.get("options", {})
    )
    try:
        return api.resume(job_id, journal_dir, upload_options, **overrides)
    finally:
        api.close()


def _check_resumable(record: jobs.JobRecord) -> None:
    if record.not_resumable:
        raise ValueError(f"job {record.job_id!r} cannot be resumed: {record.not_resumable}")


def _recorded_outputs(record: jobs.JobRecord, upload_options: dict[str, Any] | None) -> OutputSpec:
    """The job's outputs, validated again (secrets supplied by ``upload_options``)."""
    saved = dict(record.outputs)
    options = dict(saved.get("upload_options") or {})
    for key, value in (upload_options or {}).items():
        if key in options and options[key] != REDACTED and options[key] != value:
            raise ValueError(
                f"job {record.job_id!r} cannot be resumed with other upload options: "
                f"{key}: {options[key]!r} in the job, {value!r} now"
            )
        options[key] = value
    hidden = sorted(k for k, v in options.items() if v == REDACTED)
    if hidden:
        raise ValueError(
            f"job {record.job_id!r} kept its upload option(s) {', '.join(hidden)} redacted: "
            "pass them again with upload_options="
        )
    return output_spec(
        saved.get("upload"),
        saved.get("to"),
        options if saved.get("upload") else None,
        saved.get("out"),
        saved.get("format") if saved.get("out") else None,
        exist_ok=True,  # the job's own folder, rewritten from its kept predictions
    )


def _ship_user_code(adapter_class: type) -> None:
    """Let workers unpickle an adapter class defined in the user's own, uninstalled module.

    Classes are pickled by reference (module + name); a worker process cannot import a
    module that lives only beside the user's script, so such a module travels by value.
    """
    module = sys.modules.get(adapter_class.__module__)
    file = getattr(module, "__file__", None)
    if module is None or file is None or module.__name__ == "__main__":
        return
    if module.__name__.split(".")[0] in metadata.packages_distributions():
        return  # an installed distribution's module (this one's too): workers import it
    if any(part in Path(file).parts for part in ("site-packages", "dist-packages")):
        return
    ray.cloudpickle.register_pickle_by_value(module)


def _checked_half(half: Any, device: str) -> bool:
    """``half`` as given to `deploy`: a bool, True only with a GPU device."""
    if not isinstance(half, bool):
        raise ValueError(f"half must be True or False, got {half!r}")
    if half and not device.startswith("cuda"):
        raise ValueError(
            f"half=True runs the model in float16 on a GPU: it needs device='cuda' or "
            f"'cuda:N', got device={device!r}"
        )
    return half


def _worker_layout(
    device: str, num_workers: int | None = None, threads: int | None = None
) -> tuple[int, int | None]:
    if num_workers is not None and (isinstance(num_workers, bool) or int(num_workers) < 1):
        raise ValueError(f"num_workers must be a positive integer, got {num_workers!r}")
    if threads is not None and (isinstance(threads, bool) or int(threads) < 1):
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    if device.startswith("cuda"):
        gpus = int(cluster_gpus())
        if gpus < 1:
            raise ValueError(f"device {device!r} asked for, but the Ray cluster has no GPU")
        return (num_workers or (gpus if device == "cuda" else 1)), threads
    # by default one CPU worker per node that has CPUs (one on a single machine); a
    # worker's threads share one node: size them by a node's CPUs, not the cluster's
    node_cpus = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    workers = num_workers or max(1, sum(1 for c in node_cpus if c))
    cpus = int(min((c for c in node_cpus if c), default=os.cpu_count() or 1))
    per_node = max(1, -(-workers // max(1, len(node_cpus))))  # workers SPREAD over nodes
    return workers, threads or max(1, cpus // per_node)


def attach(session_id: str, address: str | None = None) -> PredictionSession:
    """Take over the stream of a detached session, from any process on the cluster.

    Args:
        session_id: `PredictionSession.id` of the session.
        address: The Ray cluster to join (None: the local one, or RAY_ADDRESS).

    Returns:
        A PredictionSession that receives the predictions nobody has taken yet.

    Raises:
        ValueError: No session with that id is alive.

    Example:
        >>> session = engine.attach("3f2a9c0d81b7", address="auto")  # doctest: +SKIP
    """
    ensure_ray(address)
    try:
        actor = ray.get_actor(session_actor_name(session_id), namespace=NAMESPACE)
    except ValueError as exc:
        raise ValueError(f"no prediction session {session_id!r} is alive on this cluster") from exc
    return PredictionSession(actor, session_id)


def track(
    input: Any = None,  # noqa: A002
    detector: ModelAPI | None = None,
    tracker: Any = "bytetrack",
    reid_weights: str | Path | None = None,
    tracker_options: dict[str, Any] | None = None,
    **options: Any,
) -> VideoAnnotation | list[VideoAnnotation]:
    """Detect objects in videos and track them, each video through its own tracker.

    Args:
        input: A video file, a directory of videos, or a list of video files.
        detector: A deployed model (`engine.deploy`), or what `engine.deploy` takes (a
            zoo name, a checkpoint), deployed for this call and closed after it.
        tracker: "bytetrack" (default), "ocsort", "botsort" (or another name of
            `engine.tracking.TRACKERS`), or a boxmot tracker instance, copied for each video.
            Trackers that need no ReID weights are the default; a ReID tracker takes a local
            ``reid_weights`` file and never downloads one.
        reid_weights: Local ReID weights file, for ReID trackers.
        tracker_options: More constructor arguments for a tracker given by name (e.g.
            ``{"track_thresh": 0.4}``).
        **options: `predict` settings, including the video ones: stride, start_frame,
            end_frame, num_frames, duration.

    Returns:
        For one video file, its `VideoAnnotation` (per-frame Predictions with
        ``track_ids``; ``to_format(name)``, ``to_mot()``, ``save(dir)``); for a list or
        a directory, one per video, in order. A video that cannot be read gives an
        annotation whose ``error`` says why.

    Example:
        >>> model = engine.deploy("reference/color-boxes")            # doctest: +SKIP
        >>> annotation = engine.track("clip.mp4", detector=model, stride=2)  # doctest: +SKIP
        >>> annotation.track_ids()                                      # doctest: +SKIP
        [1, 2, 3]
    """
    if detector is None:
        raise ValueError("track() needs detector=: a model from engine.deploy(...)")
    if isinstance(detector, (str, os.PathLike)):  # a zoo name or a checkpoint: deployed here
        with deploy(detector) as model:
            return track(input, model, tracker, reid_weights, tracker_options, **options)
    if not isinstance(detector, ModelAPI):
        raise TypeError(
            "track(): detector must be a model from engine.deploy(...) or a model name "
            f"such as 'reference/color-boxes', got {type(detector).__name__}"
        )
    annotations = detector.track(
        input,
        tracker=tracker,
        reid_weights=reid_weights,
        tracker_options=tracker_options,
        **options,
    )
    if isinstance(input, (str, os.PathLike)) and not Path(input).is_dir() and annotations:
        return annotations[0]
    return annotations


def connect(url: str, token: str | None = None, **options: Any) -> ModelClient:
    """Connect to a model served elsewhere: the first installed client that takes ``url``.

    The clients plug in through `engine.plugins` (entry points ``tessera.clients``); the
    server's (``tessera serve``) take a base URL, ``http://127.0.0.1:8000``, or, from
    inside the Ray cluster, a Serve application's name, ``"tessera"``.

    Args:
        url: What to connect to: a server's URL, an application's name.
        token: The bearer token, when the server requires one.
        **options: The client's options, e.g. ``timeout`` (seconds per answer) and, over
            HTTP, ``max_concurrency`` (requests in flight).

    Returns:
        A `engine.client.ModelClient`: ``predict``, ``predict_detached``, ``info``,
        ``classes``, ``task``, ``close``, with the same Prediction objects as a deployed
        model.

    Raises:
        engine.plugins.PluginError: No installed client takes ``url``.

    Example:
        >>> model = engine.connect("http://127.0.0.1:8000", token="secret")  # doctest: +SKIP
    """
    return plugins.client_for(url).connect(url, token, **options)
