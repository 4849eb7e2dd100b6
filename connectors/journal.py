"""The upload journal: one SQLite file per job recording every prediction's fate.

The driver of an upload job (`connectors.runtime.UploadJob`) is the journal's only
writer: uploader actors report outcomes back to it. Each item (a prediction, named by
its connector key) is ``pending`` from the moment it is accepted until it is
``delivered`` or ``dead`` (it can never be delivered; the reason is kept). Every item's
payload is stored as JSON, enough to rebuild the `Prediction` (`prediction_from_payload`),
so that a resumed job can re-send what was not delivered without the original inputs.
Dead items are also written to ``dead_letter.jsonl`` beside the journal.

Credentials never enter the journal: plan options whose names look secret are redacted,
and so are a URL's user info and its secret-looking query parameters.

Layout of a job directory (default root ``~/.tessera/jobs``)::

    <root>/<job_id>/journal.sqlite
    <root>/<job_id>/dead_letter.jsonl
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.jobs import job_dir
from engine.prediction import Prediction
from engine.prediction_json import prediction_from_json, prediction_to_json
from engine.redaction import redact_secrets, redact_url

JOURNAL_FILE = "journal.sqlite"
DEAD_LETTER_FILE = "dead_letter.jsonl"

#: The states an item can be in.
PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    key TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    payload TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS items_state ON items (state);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def prediction_payload(prediction: Prediction) -> dict[str, Any]:
    """Return the JSON-serialisable payload the journal stores for ``prediction``.

    It is the exact, self-contained JSON of `engine.prediction_json.prediction_to_json`
    (readable in the dead letter, and enough for `prediction_from_payload` to rebuild the
    prediction exactly), with the URL redacted (`redact_url`). An in-memory image is not
    kept.
    """
    out = prediction_to_json(prediction)
    out["url"] = redact_url(prediction.url)
    return out


def prediction_from_payload(payload: Mapping[str, Any]) -> Prediction:
    """Rebuild the `Prediction` that `prediction_payload` stored.

    Boxes, scores, classes, masks, keypoints and track ids come back exactly; origin
    fields, size, error, index and task as stored. Not kept: the in-memory image,
    ``Detections.data``, and redacted URL parts.
    """
    return prediction_from_json(payload)


@dataclass(frozen=True)
class JournalItem:
    """One row of the journal.

    Attributes:
        key: The connector's key for the item.
        state: ``pending``, ``delivered`` or ``dead``.
        attempts: Delivery attempts made for it, over every run of the job.
        reason: Why it is dead (or why it last failed), else None.
        payload: The stored payload (`prediction_payload`).
    """

    key: str
    state: str
    attempts: int
    reason: str | None
    payload: dict[str, Any]


class Journal:
    """The SQLite record of one upload job (one writer: the job's driver; WAL mode).

    Args:
        path: The ``journal.sqlite`` file; created with its tables when missing.

    Example:
        >>> j = Journal.open("job-1", root=tmp, connector="fake", mode="create", plan={})
        ...                                                          # doctest: +SKIP
        >>> j.record_pending([("image:1", payload)])                # doctest: +SKIP
        >>> j.mark_delivered(["image:1"]); j.counts()["delivered"]  # doctest: +SKIP
        1
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls,
        job_id: str,
        root: str | Path | None = None,
        *,
        connector: str,
        mode: str,
        plan: Mapping[str, Any],
    ) -> Journal:
        """Create the journal of ``job_id``, or reopen it for a re-run of the same job.

        The plan is stored with its secrets redacted. Reopening keeps every item (so
        delivered ones are skipped) and the creation time.

        Raises:
            ValueError: The existing journal belongs to another connector or mode.
        """
        journal = cls(job_dir(job_id, root) / JOURNAL_FILE)
        meta = journal.meta
        if meta:
            if meta.get("connector") != connector or meta.get("mode") != mode:
                journal.close()
                raise ValueError(
                    f"job {job_id!r} was started with connector={meta.get('connector')!r}, "
                    f"mode={meta.get('mode')!r}; it cannot continue with "
                    f"connector={connector!r}, mode={mode!r} (use another job_id)"
                )
        journal._set_meta(
            job_id=job_id,
            connector=connector,
            mode=mode,
            plan=json.dumps(redact_secrets(dict(plan)), default=_json_default),
            created=meta.get("created", time.time()),
        )
        return journal

    @classmethod
    def load(cls, job_id: str, root: str | Path | None = None) -> Journal:
        """Open the existing journal of ``job_id``.

        Raises:
            FileNotFoundError: No such job under ``root``.
        """
        path = job_dir(job_id, root) / JOURNAL_FILE
        if not path.exists():
            raise FileNotFoundError(f"no upload journal for job {job_id!r} at {path}")
        return cls(path)

    @property
    def meta(self) -> dict[str, Any]:
        """The job's metadata: job_id, connector, mode, plan (dict), created (epoch s)."""
        rows = dict(self._db.execute("SELECT name, value FROM meta").fetchall())
        out: dict[str, Any] = dict(rows)
        if "plan" in out:
            out["plan"] = json.loads(out["plan"])
        if "created" in out:
            out["created"] = float(out["created"])
        return out

    @property
    def dead_letter_path(self) -> Path:
        """Where `write_dead_letter` writes by default."""
        return self.path.with_name(DEAD_LETTER_FILE)

    # ------------------------------------------------------------------ writing
    def record_pending(self, keys_payloads: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        """Record items as pending with their payloads.

        An item recorded before (a dead one, on resume) is reset to pending with the new
        payload; its attempts are kept.
        """
        now = time.time()
        rows = [
            (key, json.dumps(payload, default=_json_default), now) for key, payload in keys_payloads
        ]
        with self._transaction():
            self._db.executemany(
                "INSERT INTO items (key, state, attempts, reason, payload, updated_at) "
                "VALUES (?, 'pending', 0, NULL, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET state = 'pending', reason = NULL, "
                "payload = excluded.payload, updated_at = excluded.updated_at",
                rows,
            )

    def mark_delivered(
        self, keys: Iterable[str], attempts: Mapping[str, int] | None = None
    ) -> None:
        """Mark recorded items delivered, adding ``attempts[key]`` to their attempts."""
        attempts = attempts or {}
        now = time.time()
        rows = [(int(attempts.get(k, 0)), now, k) for k in keys]
        with self._transaction():
            self._db.executemany(
                "UPDATE items SET state = 'delivered', reason = NULL, "
                "attempts = attempts + ?, updated_at = ? WHERE key = ?",
                rows,
            )

    def mark_dead(
        self, key_reasons: Mapping[str, str], attempts: Mapping[str, int] | None = None
    ) -> None:
        """Mark recorded items dead with their reasons, adding ``attempts[key]``."""
        attempts = attempts or {}
        now = time.time()
        rows = [(str(r), int(attempts.get(k, 0)), now, k) for k, r in key_reasons.items()]
        with self._transaction():
            self._db.executemany(
                "UPDATE items SET state = 'dead', reason = ?, "
                "attempts = attempts + ?, updated_at = ? WHERE key = ?",
                rows,
            )

    # ------------------------------------------------------------------ reading
    def pending(self) -> list[JournalItem]:
        """Items accepted but neither delivered nor dead (an interrupted run leaves these)."""
        return self._items("state = 'pending'")

    def dead(self) -> list[JournalItem]:
        """Items that could not be delivered, with their reasons."""
        return self._items("state = 'dead'")

    def undelivered(self) -> list[JournalItem]:
        """Pending and dead items, in the order they were first recorded (what resume sends)."""
        return self._items("state != 'delivered'")

    def delivered_keys(self) -> set[str]:
        """Keys of the delivered items."""
        return {r[0] for r in self._db.execute("SELECT key FROM items WHERE state = 'delivered'")}

    def counts(self) -> dict[str, int]:
        """Number of items in each state (every state present, zeros included)."""
        out = dict.fromkeys((PENDING, DELIVERED, DEAD), 0)
        out.update(self._db.execute("SELECT state, COUNT(*) FROM items GROUP BY state"))
        return out

    def write_dead_letter(self, path: str | Path | None = None) -> Path:
        """Write every dead item as a JSON line (key, reason, attempts, payload).

        The file is replaced as a whole, so it always lists exactly the items dead now
        (an item a resumed run delivered leaves it).
        """
        path = Path(path) if path is not None else self.dead_letter_path
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as out:
            for item in self.dead():
                line = {
                    "key": item.key,
                    "reason": item.reason,
                    "attempts": item.attempts,
                    "payload": item.payload,
                }
                out.write(json.dumps(line, default=_json_default) + "\n")
        tmp.replace(path)
        return path

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _items(self, where: str) -> list[JournalItem]:
        rows = self._db.execute(
            f"SELECT key, state, attempts, reason, payload FROM items WHERE {where} ORDER BY rowid"
        )
        return [JournalItem(k, s, a, r, json.loads(p)) for k, s, a, r, p in rows]

    def _set_meta(self, **values: Any) -> None:
        with self._transaction():
            self._db.executemany(
                "INSERT INTO meta (name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                [(k, str(v)) for k, v in values.items()],
            )

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN ... COMMIT (ROLLBACK on error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray)):
        return _plain(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return str(value)


def iter_dead_letter(path: str | Path) -> Iterator[dict[str, Any]]:
    """Read a dead-letter file back, one dict per dead item."""
    with Path(path).open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)
