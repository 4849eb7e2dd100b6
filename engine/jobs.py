"""Resumable jobs: the record and journal that let a killed ``predict`` go on where it was.

Every ``predict`` (and ``predict_detached``) that has outputs (``out=``, ``upload=``) is a
job with an id. Its directory (default ``~/.tessera/jobs/<job_id>``, the root the upload
journal uses) holds::

    <root>/<job_id>/job.json       the record: inputs as given, options, validated
                                   settings, the model's identity, the outputs
    <root>/<job_id>/job.sqlite     the journal: every item of the resolved input (its key)
                                   and every item done, with its prediction (exact JSON)
    <root>/<job_id>/journal.sqlite the upload's own journal (when the job uploads)

An item is *done* once its prediction was handed to every sink of the job and every
sink's ``write`` returned; the job's own sink (`JobSink`) comes last and records the
block's items, with their predictions, in one SQLite transaction. A resume
(`engine.resume`) re-resolves the inputs, drops the done items, re-opens the outputs
*from nothing*, re-feeds them the kept predictions of the done items, then the new ones.
So every export ends with every item exactly once, whatever the crash left in its files
(lines written after the last journal commit are simply not re-fed), and an upload
skips, by its own journal, what it delivered before.

The item key is ``<row>:<path or url or name>:<frame>``: the row is the item's position
in the resolved input (a video frame's row), so a re-resolved input maps onto the same
keys. A resume whose inputs resolve to other items (a file added to or removed from a
folder) is refused, naming what changed.

Example:
    >>> model = engine.deploy("reference/color-boxes")                  # doctest: +SKIP
    >>> model.predict("folder/", out="out", job_id="nightly")           # doctest: +SKIP
    >>> engine.resume("nightly")  # after a crash: only what is missing  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sqlite3
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.prediction import Prediction
from engine.prediction_json import prediction_from_json, prediction_to_json
from engine.redaction import redact_secrets
from engine.sources.items import Item

__all__ = [
    "DEFAULT_ROOT",
    "JobJournal",
    "JobRecord",
    "JobSink",
    "JobSpec",
    "changed_items",
    "compare_model",
    "compare_settings",
    "describe_input",
    "item_keys",
    "job_dir",
    "new_job_id",
    "prediction_key",
    "refeed",
    "remaining_items",
    "weights_identity",
]

#: Where job directories live unless ``journal_dir`` (or ``$TESSERA_JOBS_DIR``) says otherwise.
DEFAULT_ROOT = Path("~/.tessera/jobs")
#: Environment variable naming another root of job directories.
JOBS_DIR_VARIABLE = "TESSERA_JOBS_DIR"
RECORD_FILE = "job.json"
JOURNAL_FILE = "job.sqlite"
#: Settings that do not change a prediction, so a resume may set them anew.
FREE_SETTINGS = frozenset({"progress"})

_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (key TEXT PRIMARY KEY, row INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS done (
    key TEXT PRIMARY KEY,
    row INTEGER NOT NULL,
    payload TEXT NOT NULL,
    done_at REAL NOT NULL
);
"""


def new_job_id() -> str:
    """A fresh job id (12 hex digits)."""
    return uuid.uuid4().hex[:12]


def job_dir(job_id: str, root: str | Path | None = None) -> Path:
    """The directory of job ``job_id`` under ``root``, shared by jobs and upload journals.

    ``root`` defaults to ``$TESSERA_JOBS_DIR``, else `DEFAULT_ROOT`.

    Raises:
        ValueError: ``job_id`` is not a safe file name (letters, digits, ``._-``).

    Example:
        >>> job_dir("nightly", "/tmp/jobs").as_posix()
        '/tmp/jobs/nightly'
    """
    if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
        raise ValueError(
            f"job_id {job_id!r} must be 1-200 letters, digits, '.', '_' or '-', "
            "not starting with '.', '_' or '-'"
        )
    if root is None:
        root = os.environ.get(JOBS_DIR_VARIABLE) or DEFAULT_ROOT
    return Path(root).expanduser() / job_id


# --------------------------------------------------------------------------- keys
def _where(path: str | None, url: str | None, name: str) -> str:
    return str(path or url or name)


def item_keys(item: Item) -> list[tuple[int, str]]:
    """The (row, key) of each prediction ``item`` gives: one, or one per video frame.

    Example:
        >>> item_keys(Item(index=3, source="file", name="a.png", path="/d/a.png"))
        [(3, '3:/d/a.png:')]
    """
    where = _where(item.path, item.url, item.name)
    if item.frames:
        return [
            (item.index + k, f"{item.index + k}:{where}:{f}") for k, f in enumerate(item.frames)
        ]
    return [(item.index, f"{item.index}:{where}:")]


def prediction_key(prediction: Prediction) -> str:
    """The key of the item ``prediction`` is the answer to (see `item_keys`)."""
    frame = "" if prediction.frame_index is None else int(prediction.frame_index)
    where = _where(prediction.path, prediction.url, prediction.name)
    return f"{int(prediction.index)}:{where}:{frame}"


def remaining_items(items: Sequence[Item], done: set[str]) -> list[Item]:
    """The items (or the runs of a video segment's frames) whose predictions are not done.

    A video segment partly done is cut into its runs of consecutive undone rows, each
    keeping the segment's keyframe, so every row keeps its number.
    """
    out: list[Item] = []
    for item in items:
        keys = item_keys(item)
        if not item.frames:
            if keys[0][1] not in done:
                out.append(item)
            continue
        run: list[int] = []
        for k, (_, key) in enumerate(keys):
            if key not in done:
                run.append(k)
                continue
            out.extend(_segment_run(item, run))
            run = []
        out.extend(_segment_run(item, run))
    return out


def _segment_run(item: Item, run: list[int]) -> list[Item]:
    if not run:
        return []
    frames = tuple(item.frames[k] for k in run)  # type: ignore[index]
    return [dataclasses.replace(item, index=item.index + run[0], frames=frames)]


def changed_items(recorded: Sequence[str], now: Sequence[str], limit: int = 5) -> str | None:
    """Say how the keys of a re-resolved input differ from the job's; None when equal."""
    if list(recorded) == list(now):
        return None
    before, after = set(recorded), set(now)
    new = [k for k in now if k not in before]
    gone = [k for k in recorded if k not in after]
    parts = [f"{len(recorded)} item(s) in the job, {len(now)} now"]
    if new:
        parts.append(f"new: {', '.join(new[:limit])}" + (" ..." if len(new) > limit else ""))
    if gone:
        parts.append(f"gone: {', '.join(gone[:limit])}" + (" ..." if len(gone) > limit else ""))
    return "; ".join(parts)


# --------------------------------------------------------------------------- record
def describe_input(value: Any) -> tuple[Any, str | None]:
    """The input as JSON a resume can resolve again, or None and why it cannot.

    Paths are made absolute (a resume may run from another folder); URLs stay as given.

    Example:
        >>> describe_input(["https://h/a.png"])
        (['https://h/a.png'], None)
        >>> describe_input(np.zeros((2, 2, 3), np.uint8))[1].startswith("in-memory images")
        True
    """
    if value is None:
        return None, None
    if isinstance(value, (list, tuple)):
        described = [describe_input(v) for v in value]
        reasons = [r for _, r in described if r]
        return (None, reasons[0]) if reasons else ([d for d, _ in described], None)
    if isinstance(value, os.PathLike):
        return os.path.abspath(os.fspath(value)), None
    if isinstance(value, str):
        return (value if "://" in value else os.path.abspath(value)), None
    return None, (
        "in-memory images (numpy arrays, PIL images) are not kept, so they cannot be "
        "predicted again"
    )


def redact(value: Any) -> Any:
    """A copy of ``value`` with secret-looking mapping entries replaced by ``REDACTED``."""
    return redact_secrets(value, urls=False)


def weights_identity(path: str | Path | None) -> dict[str, Any] | None:
    """``{"path", "sha256"}`` of a local weights file, or None when there is none."""
    if path is None or not Path(path).is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return {"path": os.path.abspath(path), "sha256": digest.hexdigest()}


@dataclass
class JobRecord:
    """What a job was started with (``job.json``), enough to run it again.

    Attributes:
        job_id: The job's id.
        directory: The job's directory.
        input: The input as given (absolute paths, URLs), JSON; None with only platform ids.
        platform: Platform name -> id keyword -> ids.
        options: The ``predict`` options as given (conf, batch_size...).
        settings: The validated settings (`PredictSettings.describe`).
        model: The model's identity: ``info`` (name, task, classes, default_conf,
            input_size), ``spec`` (how it was deployed, when known: ``model``, ``device``,
            ``options``) and ``weights`` (path and sha256 of a local weights file).
        outputs: ``upload``, ``to`` (the uploader's name), ``upload_options`` (secrets
            redacted), ``out``, ``format``.
        not_resumable: Why the job cannot be resumed (in-memory images), or None.
        created: When it started (epoch seconds).
    """

    job_id: str
    directory: str
    input: Any = None
    platform: dict[str, Any] = dataclasses.field(default_factory=dict)
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    model: dict[str, Any] = dataclasses.field(default_factory=dict)
    outputs: dict[str, Any] = dataclasses.field(default_factory=dict)
    not_resumable: str | None = None
    created: float = dataclasses.field(default_factory=time.time)

    def write(self) -> Path:
        """Write ``job.json`` (atomically, readable by its owner only)."""
        folder = Path(self.directory)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / RECORD_FILE
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=2, default=_json_default))
        os.chmod(tmp, 0o600)
        tmp.replace(path)
        return path

    @classmethod
    def exists(cls, job_id: str, root: str | Path | None = None) -> bool:
        """True when ``job_id`` has a record under ``root``."""
        return (job_dir(job_id, root) / RECORD_FILE).exists()

    @classmethod
    def load(cls, job_id: str, root: str | Path | None = None) -> JobRecord:
        """Read the record of ``job_id``.

        Raises:
            ValueError: No job ``job_id`` under ``root`` (the message names both).
        """
        folder = job_dir(job_id, root)
        path = folder / RECORD_FILE
        if not path.exists():
            raise ValueError(
                f"no job {job_id!r} in {folder.parent} (no {RECORD_FILE}); "
                "pass journal_dir= / --journal-dir if it was started with one"
            )
        data = json.loads(path.read_text())
        names = {f.name for f in dataclasses.fields(cls)}
        record = cls(**{k: v for k, v in data.items() if k in names})
        record.directory = str(folder)
        return record


def compare_settings(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """The settings that differ, as ``"conf: 0.25 in the job, 0.5 now"``.

    A setting the job's record lacks (recorded before the setting existed) differs only
    when it is set now: off (None or False) is what the job ran with.

    Example:
        >>> compare_settings({"conf": 0.25, "progress": True}, {"conf": 0.5, "progress": False})
        ['conf: 0.25 in the job, 0.5 now']
        >>> compare_settings({"conf": 0.25}, {"conf": 0.25, "max_det": None, "iou": 0.5})
        ['iou: None in the job, 0.5 now']
    """
    recorded, now = _jsonable(dict(recorded)), _jsonable(dict(now))
    return [
        f"{name}: {recorded.get(name)!r} in the job, {now.get(name)!r} now"
        for name in sorted(set(recorded) | set(now))
        if name not in FREE_SETTINGS
        and recorded.get(name) != now.get(name)
        and (name in recorded or now.get(name) not in (None, False))
    ]


def compare_model(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """How the model ``now`` differs from the job's (name, task, classes... weights).

    Example:
        >>> compare_model({"info": {"name": "a", "task": "detection"}},
        ...               {"info": {"name": "b", "task": "detection"}})
        ["model: 'a' in the job, 'b' now"]
    """
    out = []
    before, after = (
        _jsonable(dict(recorded.get("info") or {})),
        _jsonable(dict(now.get("info") or {})),
    )
    for name in ("name", "task", "classes", "default_conf", "input_size"):
        if before.get(name) != after.get(name):
            label = "model" if name == "name" else f"model {name}"
            out.append(f"{label}: {before.get(name)!r} in the job, {after.get(name)!r} now")
    weights_before = (recorded.get("weights") or {}).get("sha256")
    weights_after = (now.get("weights") or {}).get("sha256")
    if weights_before != weights_after and (weights_before or weights_after):
        out.append(
            f"model weights: sha256 {weights_before or 'unknown'} in the job, "
            f"{weights_after or 'unknown'} now"
        )
    return out


# --------------------------------------------------------------------------- journal
class JobJournal:
    """The SQLite journal of one job: its items and the done ones with their predictions.

    One writer (the process that runs the job's sinks); WAL mode, so others may read.

    Args:
        directory: The job's directory; ``job.sqlite`` is created there when missing.

    Example:
        >>> journal = JobJournal(tmp / "job-1")                    # doctest: +SKIP
        >>> journal.record_done(predictions); len(journal.done_keys())  # doctest: +SKIP
        8
    """

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / JOURNAL_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def record_items(self, keys: Iterable[tuple[int, str]]) -> None:
        """Record the job's items (row, key), once, when the job starts."""
        with self._transaction():
            self._db.execute("DELETE FROM items")
            # an iterator: a large job's keys are written as its items are listed
            self._db.executemany("INSERT INTO items (row, key) VALUES (?, ?)", iter(keys))

    def item_keys(self) -> list[str]:
        """The keys of the job's items, in row order."""
        return [r[0] for r in self._db.execute("SELECT key FROM items ORDER BY row")]

    def record_done(self, predictions: Sequence[Prediction]) -> int:
        """Record predictions as done, with their exact JSON, in one transaction.

        Returns:
            How many were new (a key recorded before keeps its first prediction).
        """
        now = time.time()
        rows = [
            (prediction_key(p), int(p.index), json.dumps(prediction_to_json(p)), now)
            for p in predictions
        ]
        with self._transaction():
            before = self._db.total_changes
            self._db.executemany(
                "INSERT OR IGNORE INTO done (key, row, payload, done_at) VALUES (?, ?, ?, ?)", rows
            )
            return self._db.total_changes - before

    def done_keys(self) -> set[str]:
        """The keys of the done items."""
        return {r[0] for r in self._db.execute("SELECT key FROM done")}

    def done_count(self) -> int:
        """How many items are done."""
        return int(self._db.execute("SELECT COUNT(*) FROM done").fetchone()[0])

    def done_predictions(self) -> Iterable[Prediction]:
        """The kept predictions of the done items, in row order."""
        for (payload,) in self._db.execute("SELECT payload FROM done ORDER BY row, key"):
            yield prediction_from_json(json.loads(payload))

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def __enter__(self) -> JobJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")


# --------------------------------------------------------------------------- sinks
@dataclass(frozen=True)
class JobSpec:
    """The job an `engine.outputs.OutputSpec` belongs to (it travels to the session).

    Attributes:
        job_id: The job's id.
        directory: Its directory (record and journal).
        resume: True when this run resumes the job: the outputs are re-fed the kept
            predictions of the done items before the new ones.
    """

    job_id: str
    directory: str
    resume: bool = False


class JobSink:
    """The job's own sink, written after every other: it journals the block as done.

    Args:
        spec: The job.
        journal: Its journal (the sink closes it).
        refed: Done items re-fed to the outputs when this run opened (a resume).
    """

    name = "job"

    def __init__(self, spec: JobSpec, journal: JobJournal, refed: int = 0) -> None:
        self._spec, self._journal = spec, journal
        self._refed, self._new = refed, 0

    def write(self, predictions: Sequence[Prediction]) -> None:
        """Record ``predictions`` done (one transaction)."""
        self._new += self._journal.record_done(predictions)

    def close(self) -> dict[str, Any]:
        """Return the job's summary: id, directory, done (over every run), this run's."""
        total = self._journal.done_count()
        self._journal.close()
        return {
            "job_id": self._spec.job_id,
            "directory": self._spec.directory,
            "resumed": self._spec.resume,
            "done_before": self._refed,
            "done_now": self._new,
            "done": total,
        }


def refeed(sinks: Sequence[Any], journal: JobJournal, batch: int = 256) -> int:
    """Hand the kept predictions of the done items to ``sinks``, in row order.

    A sink that takes whole blocks (``write_block``, the Parquet export) gets them as
    Arrow tables put in the object store.

    Returns:
        How many predictions were re-fed.
    """
    count = 0
    chunk: list[Prediction] = []
    for prediction in journal.done_predictions():
        chunk.append(prediction)
        if len(chunk) >= batch:
            _write_all(sinks, chunk)
            count += len(chunk)
            chunk = []
    if chunk:
        _write_all(sinks, chunk)
        count += len(chunk)
    return count


def _write_all(sinks: Sequence[Any], predictions: list[Prediction]) -> None:
    table = None
    for sink in sinks:
        if hasattr(sink, "write_block"):
            import pyarrow as pa
            import ray

            from engine.schemas import PREDICTION_SCHEMA

            if table is None:
                rows = [p.to_row() for p in predictions]
                table = pa.Table.from_pylist(rows, schema=PREDICTION_SCHEMA)
            sink.write_block(ray.put(table), table.num_rows)
        else:
            sink.write(predictions)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)
