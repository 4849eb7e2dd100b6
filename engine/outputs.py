"""Where a job's predictions go besides the caller: a platform upload, a local export.

`OutputSpec` is validated once, in the caller's process, from ``predict``'s ``upload=``,
``to=``, ``upload_options=``, ``out=`` and ``format=``. The process that runs the job
(the caller's for ``predict``, the session actor's for ``predict_detached``) opens one
`Sink` per output and hands it each block of predictions as the block finishes, so that
uploads and exports stream alongside the pipeline. Exporters and uploaders are plug-ins,
found through `engine.plugins` by the name the user gives.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from engine import plugins
from engine.jobs import JobJournal, JobSink, JobSpec, refeed
from engine.prediction import Prediction

#: Upload modes (``upload=``); each connector supports some of them.
UPLOAD_MODES = ("create", "append", "replace", "iou_merge")

#: The export format when ``out=`` is given without ``format=``.
DEFAULT_EXPORT_FORMAT = "jsonl"


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
        to: The uploader (`engine.plugins.Uploader`), or None.
        upload_options: Options for the connector and the upload runtime
            (``requests_per_second``, ``max_in_flight``, ``num_uploaders``,
            ``batch_size``, ``journal_dir``, and the connector's own, e.g.
            ``project_name``, ``iou_threshold``).
        out: Directory of a local export, or None.
        format: Its format, one of `engine.plugins.export_formats`.
        job: The job the outputs belong to (`engine.jobs.JobSpec`): its journal records
            each item once every other output took it, so that the job can be resumed.
    """

    upload: str | None = None
    to: Any = None
    upload_options: dict[str, Any] = field(default_factory=dict)
    out: Path | None = None
    format: str = DEFAULT_EXPORT_FORMAT
    job: JobSpec | None = None

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
    exist_ok: bool = False,
) -> OutputSpec:
    """Check the output keywords of a ``predict`` call.

    Args:
        upload: An upload mode; needs ``to``.
        to: An uploader instance, or the name of a platform that has one.
        upload_options: See `OutputSpec`.
        out: Export directory.
        format: Export format (default "jsonl"; `engine.plugins.export_formats`); needs
            ``out``.
        exist_ok: Let ``out`` name a folder that holds files already
            (`check_out_folder`).

    Returns:
        The spec; an uploader given by name is built here (its credentials are read now,
        so a missing token fails before anything runs), and the mode is checked against
        what the connector supports.

    Raises:
        ValueError: A missing pair (``upload`` without ``to``, ``format`` without
            ``out``), an unknown format or uploader (the message lists the installed
            ones), an unsupported mode, or an ``out`` folder that holds files.
    """
    options = dict(upload_options or {})
    if (upload is None) != (to is None):
        raise ValueError(
            "upload= and to= go together: upload='append', to=<platform> "
            f"(installed: {', '.join(plugins.uploader_names()) or 'none'})"
        )
    if format is not None and out is None:
        raise ValueError(f"format={format!r} needs out= (the directory to write to)")
    chosen = format or DEFAULT_EXPORT_FORMAT
    plugins.exporter(chosen)  # an unknown format fails now, listing the valid ones
    if out is not None:
        check_out_folder(out, exist_ok)
    connector = None
    if upload is not None:
        connector = plugins.uploader(to) if isinstance(to, str) else to
        connector.check_mode(upload)
        connector.validate()
        connector.check_options(upload, options)
    return OutputSpec(
        upload=upload,
        to=connector,
        upload_options=options,
        out=None if out is None else Path(out),
        format=chosen,
    )


def check_out_folder(out: str | Path, exist_ok: bool = False) -> None:
    """Refuse an export folder that already holds files, unless ``exist_ok``.

    A new job never writes over an earlier run's ``predictions.jsonl`` (or anything
    else) without being told to; a resumed job writes into its own folder again and is
    not checked.

    Args:
        out: The folder ``out=`` names.
        exist_ok: Write into a folder that holds files (same-named files are replaced).

    Raises:
        ValueError: ``out`` is a file, or a folder with files in it and not ``exist_ok``;
            the message names the folder and some of what is there.

    Example:
        >>> check_out_folder("/nonexistent/new-folder")
    """
    if not isinstance(exist_ok, bool):
        raise ValueError(f"exist_ok must be True or False, got {exist_ok!r}")
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"out={str(out)!r} is a file, not a folder: name a folder to write into")
    if exist_ok or not folder.is_dir():
        return
    with os.scandir(folder) as entries:
        found = sorted(entry.name for _, entry in zip(range(4), entries))
    if found:
        shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise ValueError(
            f"out={str(out)!r} already holds files ({shown}) and nothing was written: "
            "choose another folder, or pass exist_ok=True (tessera: --exist-ok) to write "
            "into it, replacing files of the same names"
        )


def open_sinks(
    spec: OutputSpec,
    job_id: str,
    class_names: list[str],
    task: str,
    sources: dict[str, Any] | None = None,
) -> list[Sink]:
    """Open the sinks of ``spec`` (an upload prepares its destination here).

    With a job (``spec.job``), the job's sink comes last: it journals each block once
    every other sink took it. A resumed job's exports start anew and are first re-fed
    the kept predictions of the items done before (`engine.jobs.refeed`); its upload
    skips, by its own journal, those it delivered.

    Args:
        spec: The validated outputs.
        job_id: Names the upload's journal (``tessera upload --resume JOB``); the job's
            id when the outputs belong to a job.
        class_names: The model's classes.
        task: The model's task.
        sources: What the inputs came from (a platform's ids), for ``create``.
    """
    sinks: list[Sink] = []
    if spec.out is not None:
        sinks.append(_ExportSink(spec, class_names, task))
    if spec.upload is not None:
        upload = spec.to.start_upload(
            job_id, str(spec.upload), list(class_names), task, spec.upload_options, sources or {}
        )
        sinks.append(_UploadSink(f"upload:{spec.to.name}", upload))
    if spec.job is not None:
        journal = JobJournal(spec.job.directory)
        try:
            refed = refeed(sinks, journal) if spec.job.resume else 0
        except BaseException:
            journal.close()
            for sink in sinks:  # stop what was opened (an upload's actors)
                with contextlib.suppress(Exception):
                    sink.close()
            raise
        sinks.append(JobSink(spec.job, journal, refed))
    return sinks


class _ExportSink:
    """A local export (an `engine.plugins.Exporter`), written as predictions stream.

    An exporter that has ``write_block(ref, rows)`` takes each finished block by
    reference instead (it writes blocks where they live, e.g. Parquet through Ray Data).
    """

    def __init__(self, spec: OutputSpec, class_names: list[str], task: str) -> None:
        self.name = f"export:{spec.format}"
        self._exporter = plugins.exporter(spec.format)(Path(spec.out), list(class_names), task)
        if hasattr(self._exporter, "write_block"):
            self.write_block = self._exporter.write_block

    def write(self, predictions: Sequence[Prediction]) -> None:
        for prediction in predictions:
            self._exporter.write(prediction)

    def close(self) -> dict[str, Any]:
        return self._exporter.close()


class _UploadSink:
    """A platform upload (an `engine.plugins.UploadSink`), sent while predictions come."""

    def __init__(self, name: str, upload: plugins.UploadSink) -> None:
        self.name = name
        self._upload = upload

    def write(self, predictions: Sequence[Prediction]) -> None:
        self._upload.write(list(predictions))

    def close(self) -> dict[str, Any]:
        return self._upload.close()
