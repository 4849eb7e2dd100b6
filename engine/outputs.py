"""Where a job's predictions go besides the caller: a platform upload, a local export.

`OutputSpec` is validated once, in the caller's process, from ``predict``'s ``upload=``,
``to=``, ``upload_options=``, ``out=`` and ``format=``. The process that runs the job
(the caller's for ``predict``, the session actor's for ``predict_detached``) opens one
`Sink` per output and hands it each block of predictions as the block finishes, so that
uploads and exports stream alongside the pipeline. The engine reaches ``connectors`` only
here, through lazy imports, as the design asks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from engine.prediction import Prediction

#: Upload modes (``upload=``); each connector supports some of them.
UPLOAD_MODES = ("create", "append", "replace", "iou_merge")

#: Local export formats (``format=``).
EXPORT_FORMATS = ("jsonl", "sly", "coco", "parquet")


class Sink(Protocol):
    """One output of a job."""

    name: str

    def write(self, predictions: Sequence[Prediction]) -> None:
        """Take the next predictions, in order."""

    def close(self) -> dict[str, Any]:
        """Finish (wait for uploads, write files) and return a summary."""


@dataclass(frozen=True)
class OutputSpec:
    """A job's outputs, validated.

    Attributes:
        upload: Upload mode ("create", "append", "replace", "iou_merge"), or None.
        to: The connector: an instance of `connectors.base.Connector`, or None.
        upload_options: Options for the connector and the upload runtime
            (``requests_per_second``, ``max_in_flight``, ``num_uploaders``,
            ``batch_size``, ``journal_dir``, and the connector's own, e.g.
            ``project_name``, ``iou_threshold``).
        out: Directory of a local export, or None.
        format: Its format, one of `EXPORT_FORMATS`.
    """

    upload: str | None = None
    to: Any = None
    upload_options: dict[str, Any] = field(default_factory=dict)
    out: Path | None = None
    format: str = "jsonl"

    @property
    def empty(self) -> bool:
        """True when the job has no output besides the caller."""
        return self.upload is None and self.out is None


def output_spec(
    upload: str | None = None,
    to: Any = None,
    upload_options: dict[str, Any] | None = None,
    out: str | Path | None = None,
    format: str | None = None,  # noqa: A002
) -> OutputSpec:
    """Check the output keywords of a ``predict`` call.

    Args:
        upload: An upload mode; needs ``to``.
        to: A connector instance, or a connector name ("supervisely").
        upload_options: See `OutputSpec`.
        out: Export directory.
        format: Export format (default "jsonl"); needs ``out``.

    Returns:
        The spec; a connector given by name is built here (its credentials are read now,
        so a missing token fails before anything runs), and the mode is checked against
        what the connector supports.

    Raises:
        ValueError: A missing pair (``upload`` without ``to``, ``format`` without
            ``out``), an unknown format or connector, or an unsupported mode.
    """
    options = dict(upload_options or {})
    if (upload is None) != (to is None):
        raise ValueError("upload= and to= go together: upload='append', to='supervisely'")
    if format is not None and out is None:
        raise ValueError(f"format={format!r} needs out= (the directory to write to)")
    chosen = format or "jsonl"
    if chosen not in EXPORT_FORMATS:
        raise ValueError(f"unknown format {chosen!r}; valid formats: {', '.join(EXPORT_FORMATS)}")
    connector = None
    if upload is not None:
        connector = _connector(to)
        connector.check_mode(upload)
        connector.validate()
    return OutputSpec(
        upload=upload,
        to=connector,
        upload_options=options,
        out=None if out is None else Path(out),
        format=chosen,
    )


_RUNTIME_OPTIONS = ("requests_per_second", "max_in_flight", "num_uploaders", "batch_size")


def _connector(to: Any) -> Any:
    from connectors import get_connector

    if isinstance(to, str):  # its options go to prepare() through the plan
        return get_connector(to)
    return to


def open_sinks(
    spec: OutputSpec,
    job_id: str,
    class_names: list[str],
    task: str,
    sources: dict[str, Any] | None = None,
) -> list[Sink]:
    """Open the sinks of ``spec`` (an upload prepares its destination here).

    Args:
        spec: The validated outputs.
        job_id: Names the upload's journal (``tessera upload --resume JOB``).
        class_names: The model's classes.
        task: The model's task.
        sources: What the inputs came from (e.g. Supervisely ids), for ``create``.
    """
    sinks: list[Sink] = []
    if spec.out is not None and spec.format == "parquet":
        sinks.append(_ParquetSink(spec, class_names, task))
    elif spec.out is not None:
        sinks.append(_ExportSink(spec, class_names, task))
    if spec.upload is not None:
        sinks.append(_UploadSink(spec, job_id, class_names, task, sources or {}))
    return sinks


class _ExportSink:
    """A local export (connectors.exports), written as predictions stream."""

    def __init__(self, spec: OutputSpec, class_names: list[str], task: str) -> None:
        from connectors.exports import open_exporter

        self.name = f"export:{spec.format}"
        self._exporter = open_exporter(spec.format, spec.out, class_names, task)

    def write(self, predictions: Sequence[Prediction]) -> None:
        for prediction in predictions:
            self._exporter.write(prediction)

    def close(self) -> dict[str, Any]:
        return self._exporter.close()


class _ParquetSink:
    """Parquet through Ray Data's writer: the result blocks are written where they live.

    The sink keeps references to the job's prediction blocks (Arrow tables in the object
    store, no pixels) and, at the end, has Ray Data write them as Parquet files, so on a
    cluster the rows never pass through the driver. The class names and task go beside
    them in ``classes.json``.
    """

    def __init__(self, spec: OutputSpec, class_names: list[str], task: str) -> None:
        self.name = "export:parquet"
        self._folder = Path(spec.out) / "parquet"
        self._classes, self._task = list(class_names), task
        self._refs: list[Any] = []
        self._rows = 0

    def write_block(self, ref: Any, rows: int) -> None:
        """Take one finished block by reference."""
        self._refs.append(ref)
        self._rows += rows

    def write(self, predictions: Sequence[Prediction]) -> None:
        raise TypeError("the Parquet export takes blocks (write_block), not predictions")

    def close(self) -> dict[str, Any]:
        import json

        import ray

        self._folder.mkdir(parents=True, exist_ok=True)
        if self._refs:
            ray.data.from_arrow_refs(self._refs).write_parquet(str(self._folder))
        (self._folder.parent / "classes.json").write_text(
            json.dumps({"class_names": self._classes, "task": self._task})
        )
        files = sorted(p.name for p in self._folder.glob("*.parquet"))
        self._refs = []
        return {"folder": str(self._folder), "files": files, "rows": self._rows}


class _UploadSink:
    """A platform upload (connectors.runtime), sent in parallel while predictions come."""

    def __init__(
        self,
        spec: OutputSpec,
        job_id: str,
        class_names: list[str],
        task: str,
        sources: dict[str, Any],
    ) -> None:
        from connectors.base import UploadPlan
        from connectors.runtime import UploadJob

        options = spec.upload_options
        plan = UploadPlan(
            job_id=job_id,
            mode=str(spec.upload),
            class_names=list(class_names),
            task=task,
            options={
                k: v for k, v in options.items() if k not in (*_RUNTIME_OPTIONS, "journal_dir")
            },
            sources=sources,
        )
        runtime = {k: options[k] for k in _RUNTIME_OPTIONS if k in options}
        if "journal_dir" in options:
            runtime["root"] = options["journal_dir"]
        self.name = f"upload:{spec.to.name}"
        self._job = UploadJob.start(spec.to, plan, **runtime)

    def write(self, predictions: Sequence[Prediction]) -> None:
        self._job.submit(list(predictions))

    def close(self) -> dict[str, Any]:
        return self._job.finish()
