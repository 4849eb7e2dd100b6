"""Prediction sessions: a plan's results streamed through the object store.

`SessionCore` runs one Ray Data plan and keeps a bounded buffer of references to finished
result blocks; the producer stalls while the buffer is full, so a slow consumer slows
production instead of filling memory. It runs inside the caller's process for `predict`,
or inside `SessionActor`, a detached named Ray actor, for `predict_detached`, so that the
job outlives the process that started it and another process can `attach` to it.
`PredictionSession` is the consumer's side of either.
"""

from __future__ import annotations

import collections
import threading
import time
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import ray

from engine import local_ray
from engine.models.base import ModelAdapter
from engine.outputs import OutputSpec, open_sinks
from engine.pipeline import plan_predictions
from engine.prediction import Prediction
from engine.settings import ModelInfo, PredictSettings
from engine.sources.items import Item
from engine.worker import WorkerLayout, root_cause, start_model_workers

NAMESPACE = "tessera"
DEFAULT_MAX_BUFFERED_BLOCKS = 8

#: Platform image downloads of one job: requests started per second, and at once.
DEFAULT_DOWNLOAD_RPS = 10.0
DEFAULT_DOWNLOAD_IN_FLIGHT = 8

#: Seconds a closing session actor lets its producer finish the block in hand.
CLOSE_GRACE_S = 5.0


def session_actor_name(session_id: str) -> str:
    """Return the Ray actor name of a detached session."""
    return f"tessera-session-{session_id}"


class SessionError(RuntimeError):
    """A session failed as a whole (the model did not load, workers kept crashing)."""


@dataclass
class _Block:
    ref: Any
    rows: int
    size_bytes: int
    offset: int = 0


#: Most model batches in one plan of a growing session (`SessionCore` ``grow_plans``).
MAX_PLAN_BATCHES = 1024


class SessionCore:
    """Produce one plan's prediction blocks into a bounded buffer of object references.

    Args:
        items: The resolved input items: a list, or an iterable read once, as the plans
            are made (`engine.sources.job_items.JobItems`, with ``items_total``).
        settings: Validated settings.
        model: The model's description.
        workers: Deployed model workers to use; None starts the session's own from
            ``adapter`` and ``layout`` (and stops them when the session ends).
        adapter: The model adapter, when the session starts its own workers.
        layout: Where its own workers run.
        ordered: Keep input order (else blocks come as they finish).
        max_buffered_blocks: Result blocks waiting for the consumer before production stalls.
        context: A description of the job for `status()`.
        name_prefix: Name of the session's own workers (for detached sessions).
        pace_batches: Model batches per plan (see `_chunks`); None runs one plan over every
            item, for a consumer that reads as fast as it can.
        grow_plans: Make each plan 4 times the last, up to `MAX_PLAN_BATCHES` batches: for
            a consumer that reads as results come (``predict``), since each plan costs
            Ray Data a start-up (about a second on 2 cores) and tiny images made many.
        videos: Path -> probed `VideoInfo` of the videos that ``items`` hold segments of.
        outputs: Uploads and exports that take each block of predictions as it finishes
            (see `engine.outputs`); their summaries appear in `status` under "outputs".
        job_id: Names the job's upload journal.
        fetch: Downloads platform media (their own URL schemes) in the decode tasks.
        sources: Where the inputs came from (platform ids), for uploads.
        items_total: Prediction rows ``items`` produce (counted from a list when None).
    """

    def __init__(
        self,
        items: Iterable[Item],
        settings: PredictSettings,
        model: ModelInfo | None,
        workers: list[Any] | None = None,
        adapter: ModelAdapter | None = None,
        layout: WorkerLayout | None = None,
        ordered: bool = True,
        max_buffered_blocks: int = DEFAULT_MAX_BUFFERED_BLOCKS,
        context: dict[str, Any] | None = None,
        name_prefix: str | None = None,
        pace_batches: int | None = None,
        grow_plans: bool = False,
        videos: dict[str, Any] | None = None,
        outputs: OutputSpec | None = None,
        job_id: str | None = None,
        fetch: Any = None,
        sources: dict[str, Any] | None = None,
        items_total: int | None = None,
    ) -> None:
        if items_total is None:
            items = list(items)
            items_total = sum(item.num_rows for item in items)
        self.items_total = items_total
        self._videos = videos or {}
        self._output_spec = outputs if outputs is not None and not outputs.empty else None
        self._job_id = job_id or "local"
        self._sinks: list[Any] = []
        self._outputs: dict[str, Any] = {}
        self._in_memory: dict[int, Item] = {}  # filled as the plans are made
        origins = items.origins() if hasattr(items, "origins") else _sources_of(list(items))
        self._sources = {**origins, **(sources or {})}
        self._fetch = fetch
        self._pace_batches = pace_batches
        self._grow_plans = grow_plans
        self.model = model
        self.context = context or {}
        self._items, self._settings, self._ordered = items, settings, ordered
        self._workers, self._owns_workers = workers, workers is None
        self._adapter, self._layout, self._name_prefix = adapter, layout, name_prefix
        self._max_blocks = max_buffered_blocks
        self._buffer: collections.deque[_Block] = collections.deque()
        self._cond = threading.Condition()
        self._state, self._message, self._error = "running", "starting", None
        self._done_rows = 0
        self._failed: list[dict[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="tessera-session", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ producer
    def _produce(self) -> None:
        try:
            # 1) model workers: the deployed ones, or the session's own
            if self._workers is None:
                self._set_message("loading the model")
                self._workers, info = start_model_workers(
                    self._adapter, self._layout, self._name_prefix
                )
                with self._cond:
                    self.model = info
            # 2) platform downloads share one rate limiter; uploads and exports are ready
            #    before the first prediction
            if hasattr(self._fetch, "open"):
                limits = self._output_spec.upload_options if self._output_spec else {}
                self._fetch = self._fetch.open(
                    requests_per_second=limits.get("requests_per_second", DEFAULT_DOWNLOAD_RPS),
                    max_in_flight=limits.get("max_in_flight", DEFAULT_DOWNLOAD_IN_FLIGHT),
                )
            if self._output_spec is not None:
                self._set_message("preparing the outputs")
                self._sinks = open_sinks(
                    self._output_spec,
                    self._job_id,
                    list(self.model.classes),
                    self.model.task,
                    self._sources,
                )
            # 3) the plan, then its blocks into the bounded buffer as they finish
            self._set_message("predicting")
            ray.data.DataContext.get_current().execution_options.preserve_order = self._ordered
            self._videos = {path: ray.put(info) for path, info in self._videos.items()}
            chunks = self._chunks()
            current = self._start_plan(next(chunks))
            last_planned = current is None
            while current is not None:
                running, rows = current
                upcoming, offered = None, 0
                for bundle in running:
                    for entry in bundle.blocks:
                        self._offer(entry.ref)
                        if self._stop.is_set():
                            return
                        offered += entry.metadata.num_rows or 0
                    if upcoming is None and not last_planned and offered * 2 >= rows:
                        upcoming = self._start_plan(next(chunks, None))  # overlap the next
                        last_planned = upcoming is None
                if upcoming is None and not last_planned:
                    upcoming = self._start_plan(next(chunks, None))
                current = upcoming
            self._close_sinks()
            self._finish("done", "every prediction produced")
        except Exception as exc:
            self._close_sinks()
            if self._stop.is_set():
                return
            self._finish("error", f"the session failed: {root_cause(exc)}", traceback.format_exc())
        finally:
            self._release_workers()
            if hasattr(self._fetch, "close"):
                self._fetch.close()

    def _start_plan(self, chunk: list[Item] | None) -> tuple[Iterator[Any], int] | None:
        """Start executing the plan of ``chunk``; return its block iterator and row count."""
        if not chunk:  # no items at all (an empty input): nothing to plan
            return None
        dataset = plan_predictions(chunk, self._workers, self._settings, self._videos, self._fetch)
        return iter(dataset.iter_internal_ref_bundles()), sum(item.num_rows for item in chunk)

    def _chunks(self) -> Iterator[list[Item]]:
        """Cut the items into plans of a few buffers' worth of batches (all, unpaced).

        Ray Data runs a plan ahead of its consumer as far as its memory budget allows, and
        prediction blocks are small, so one plan over a large job would predict it all while
        nobody reads. Plans of ``pace_batches`` batches, each started only when the buffer
        has taken half of the last one's blocks, bound what is produced ahead of the
        consumer to two plans while leaving no gap between them.
        """
        items, self._items = self._items, []
        if self._pace_batches is None:
            items = list(items)
            self._in_memory.update((item.index, item) for item in items if item.in_memory)
            yield items
            return
        size = self._pace_batches * self._settings.general.batch_size  # prediction rows per plan
        chunk: list[Item] = []
        rows = 0
        empty = True
        for item in items:
            empty = False
            if item.in_memory:
                self._in_memory[item.index] = item
            chunk.append(item)
            rows += item.num_rows
            if rows >= size:
                yield chunk
                chunk, rows = [], 0
                if self._grow_plans:
                    size = min(4 * size, MAX_PLAN_BATCHES * self._settings.general.batch_size)
        if chunk or empty:
            yield chunk

    def _offer(self, ref: Any) -> None:
        table: pa.Table = ray.get(ref)
        if table.num_rows == 0:  # an empty block carries no schema and no predictions
            return
        predictions = None
        for sink in self._sinks:
            if hasattr(sink, "write_block"):  # takes the block where it lives (Parquet)
                sink.write_block(ref, table.num_rows)
                continue
            if predictions is None:
                predictions = self._predictions(table)
            sink.write(predictions)
        failed = [
            {"name": name, "error": error}
            for name, error in zip(
                table.column("name").to_pylist(), table.column("error").to_pylist()
            )
            if error is not None
        ]
        block = _Block(ref, table.num_rows, int(table.nbytes))
        with self._cond:
            while len(self._buffer) >= self._max_blocks and not self._stop.is_set():
                self._cond.wait(0.5)
            if self._stop.is_set():
                return
            self._buffer.append(block)
            self._done_rows += block.rows
            self._failed.extend(failed)
            self._cond.notify_all()

    def _predictions(self, table: pa.Table) -> list[Prediction]:
        """A block's rows as Predictions, with in-memory images attached (for exports)."""
        predictions = []
        for row in table.to_pylist():
            prediction = Prediction.from_arrow(row, list(self.model.classes), self.model.task)
            item = self._in_memory.get(prediction.index)
            if item is not None and item.pixels is not None:
                prediction.image = item.image_array()
            predictions.append(prediction)
        return predictions

    def _close_sinks(self) -> None:
        """Finish every output (uploads wait for their last batch) and keep the summaries."""
        sinks, self._sinks = self._sinks, []
        failures = []
        for sink in sinks:
            try:
                summary = sink.close()
            except Exception as exc:  # one output failing must not hide the others
                summary = {"error": root_cause(exc)}
                failures.append(f"{sink.name}: {root_cause(exc)}")
            with self._cond:
                self._outputs[sink.name] = summary
        if failures:
            raise RuntimeError("; ".join(failures))

    def _finish(self, state: str, message: str, error: str | None = None) -> None:
        with self._cond:
            if self._state == "running":
                self._state, self._message, self._error = state, message, error
            self._cond.notify_all()

    def _set_message(self, message: str) -> None:
        with self._cond:
            self._message = message

    def _release_workers(self) -> None:
        if self._owns_workers and self._workers:
            for worker in self._workers:
                ray.kill(worker)
            self._workers = []

    # ------------------------------------------------------------------ consumer side
    def take(self, max_blocks: int = 1, timeout: float | None = 0.0) -> dict[str, Any]:
        """Hand out up to ``max_blocks`` finished blocks, waiting up to ``timeout`` seconds.

        Returns:
            ``{"blocks": [(ref, offset), ...], "finished": bool, "state": str,
            "error": str | None}``; ``finished`` means nothing more will come.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._buffer and self._state == "running":
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._cond.wait(remaining)
            blocks = []
            while self._buffer and len(blocks) < max_blocks:
                block = self._buffer.popleft()
                blocks.append((block.ref, block.offset))
            self._cond.notify_all()
            return {
                "blocks": blocks,
                "finished": not self._buffer and self._state != "running",
                "state": self._state,
                "message": self._message,
                "error": self._error,
            }

    def give_back(self, refs: list[Any], offset: int, rows: int) -> None:
        """Return a partly consumed block to the front of the buffer (a consumer detaching).

        Args:
            refs: A one-element list holding the block's reference (in a list, so that Ray
                passes the reference rather than the block it points to).
            offset: Rows of the block already handed out.
            rows: Rows in the block.
        """
        with self._cond:
            self._buffer.appendleft(_Block(refs[0], rows, 0, offset))
            self._cond.notify_all()

    def stop(self) -> None:
        """End production and free the session's workers; buffered blocks stay."""
        with self._cond:
            if self._state == "running":
                self._state, self._message = "stopped", "stopped by the user"
            self._stop.set()
            self._cond.notify_all()
        self._release_workers()

    def is_done(self) -> bool:
        """True once every prediction is produced, or the session stopped or failed."""
        with self._cond:
            return self._state != "running"

    def progress(self) -> dict[str, int]:
        """``{"done": predictions produced, "total": items}``."""
        with self._cond:
            return {"done": self._done_rows, "total": self.items_total}

    def status(self) -> dict[str, Any]:
        """State, progress, message, error, failed items, context and resources."""
        with self._cond:
            buffered = sum(b.size_bytes for b in self._buffer)
            report = {
                "state": self._state,
                "progress": {"done": self._done_rows, "total": self.items_total},
                "message": self._message,
                "error": self._error,
                "failed": list(self._failed),
                "context": dict(self.context),
                "outputs": dict(self._outputs),
            }
        report["resources"] = self._resources(buffered)
        return report

    def describe(self) -> dict[str, Any]:
        """The model's classes and task, for a consumer that attaches."""
        with self._cond:
            while self.model is None and self._state == "running":
                self._cond.wait(0.5)
            if self.model is None:
                return {"classes": [], "task": "detection", "error": self._error}
            return {"classes": list(self.model.classes), "task": self.model.task}

    def _resources(self, buffered_bytes: int) -> dict[str, Any]:
        import psutil

        memory = psutil.virtual_memory()
        workers = list(self._workers or [])
        try:
            gpus = [g for g in ray.get([w.resources.remote() for w in workers], timeout=5)]
        except Exception:
            gpus = []
        return {
            "gpu": [g for g in gpus if "total" in g],
            "ram": {"used": int(memory.total - memory.available), "total": int(memory.total)},
            "object_store": {
                "used": buffered_bytes,
                "total": int(ray.cluster_resources().get("object_store_memory", 0)),
            },
        }


def _sources_of(items: list[Item]) -> dict[str, Any]:
    """Where the items came from, for an upload that mirrors its sources (``create``)."""
    datasets = sorted({item.dataset for item in items if item.dataset})
    return {"datasets": datasets, "sources": sorted({item.source for item in items})}


class SessionActor(SessionCore):
    """`SessionCore` as a detached, named Ray actor that ends itself when left idle.

    Args:
        idle_timeout_s: Seconds without any consumer call, once production has ended,
            after which the session frees everything it holds.
        **kwargs: As for `SessionCore`.
    """

    def __init__(self, idle_timeout_s: float = 3600.0, **kwargs: Any) -> None:
        local_ray.hold_lease_if_owned()  # Tessera's local Ray stays up while this lives
        self._last_call = time.monotonic()
        self._idle_timeout_s = idle_timeout_s
        super().__init__(**kwargs)
        threading.Thread(target=self._watch_idle, name="tessera-idle", daemon=True).start()

    def take(self, max_blocks: int = 1, timeout: float | None = 0.0) -> dict[str, Any]:
        """See `SessionCore.take`."""
        self._last_call = time.monotonic()
        return super().take(max_blocks, timeout)

    def close(self) -> None:
        """Stop, free the workers and end this actor (buffered blocks are dropped).

        The producer gets `CLOSE_GRACE_S` to leave its current block; then the actor is
        killed rather than exited gracefully, because a graceful exit first drains every
        task the session submitted, and Ray Data's retries of calls to the workers just
        killed can keep that drain (and the actor) going for a long time.
        """
        self.stop()
        self._thread.join(timeout=CLOSE_GRACE_S)
        ray.kill(ray.get_runtime_context().current_actor)

    def _watch_idle(self) -> None:
        while True:
            time.sleep(min(self._idle_timeout_s, 5.0))
            idle = time.monotonic() - self._last_call
            if self.is_done() and idle > self._idle_timeout_s:
                self.stop()
                ray.kill(ray.get_runtime_context().current_actor)
                return


class PredictionSession:
    """The consumer's handle on a running prediction job.

    Iterate it for Predictions as they are ready (in input order unless the session was
    started with ``ordered=False``). Obtain one from `ModelAPI.predict_detached` or
    `engine.attach`. Use it as a context manager, or drop it, to free what it holds.

    Example:
        >>> with model.predict_detached("big_folder/", recursive=True) as session:  # doctest: +SKIP
        ...     for prediction in session:
        ...         print(prediction.name, len(prediction), session.progress())
    """

    def __init__(
        self,
        backend: Any,
        session_id: str,
        in_memory: dict[int, Any] | None = None,
        remote: bool = True,
    ) -> None:
        self.id = session_id
        #: The Ray cluster the session runs on: ``engine.attach(id, address=...)`` from
        #: another machine (on this one, ``engine.attach(id)`` finds it).
        self.address: str = ray.get_runtime_context().gcs_address
        self._backend = backend
        self._remote = remote
        self._in_memory = in_memory or {}
        self._pending: collections.deque[Prediction] = collections.deque()
        self._current: tuple[Any, int, int] | None = None  # ref, rows consumed, rows
        self._closed = False
        self._final_status: dict[str, Any] | None = None
        self._owner = True
        self._finished = False
        description = self._call("describe")
        self._classes, self._task = description["classes"], description["task"]

    # ------------------------------------------------------------------ backend calls
    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self._remote:
            return ray.get(getattr(self._backend, method).remote(*args, **kwargs))
        return getattr(self._backend, method)(*args, **kwargs)

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[Prediction]:
        return self

    def __next__(self) -> Prediction:
        return self.next()

    def next(self, timeout: float | None = None, block: bool = True) -> Prediction | None:
        """Return the next Prediction.

        Args:
            timeout: With ``block=True``, seconds to wait (None: as long as it takes).
            block: False returns None at once when nothing is ready.

        Raises:
            TimeoutError: Nothing arrived within ``timeout``.
            StopIteration: The session is done and every prediction was handed out.
            SessionError: The session failed as a whole (the error carries the traceback).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._pending:
                return self._pop()
            if self._finished:
                raise StopIteration
            if not block:
                wait = 0.0
            elif deadline is None:
                wait = 1.0
            else:
                wait = max(0.0, min(1.0, deadline - time.monotonic()))
            reply = self._call("take", 1, wait)
            for ref, offset in reply["blocks"]:
                self._load(ref, offset)
            if self._pending:
                continue
            if reply["finished"]:
                if reply["state"] == "error":
                    raise SessionError(f"session {self.id}: {reply['message']}\n{reply['error']}")
                self._finished = True
                raise StopIteration
            if not block:
                return None
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"no prediction arrived within {timeout} s")

    def _load(self, ref: Any, offset: int) -> None:
        table: pa.Table = ray.get(ref)
        rows = table.to_pylist()
        for row in rows[offset:]:
            prediction = Prediction.from_arrow(row, self._classes, self._task)
            prediction.image = self._in_memory.get(prediction.index)
            self._pending.append(prediction)
        self._current = (ref, offset, len(rows))

    def _pop(self) -> Prediction:
        prediction = self._pending.popleft()
        if self._current is not None:
            ref, consumed, rows = self._current
            self._current = (ref, consumed + 1, rows) if self._pending else None
        return prediction

    # ------------------------------------------------------------------ control
    def is_done(self) -> bool:
        """True when every prediction has been produced, or the session was stopped."""
        return self._closed or self._call("is_done")

    def progress(self) -> dict[str, int]:
        """``{"done": predictions produced, "total": items}``."""
        if self._final_status is not None:
            return dict(self._final_status["progress"])
        return self._call("progress")

    def status(self) -> dict[str, Any]:
        """The session's state, progress, message, error, failed items, context, resources.

        After `stop` or `close` it is the last status the session reported.
        """
        if self._final_status is not None:
            return dict(self._final_status)
        return self._call("status")

    def stop(self) -> None:
        """End the execution and free its actors; predictions already buffered stay here."""
        if self._closed:
            return
        self._call("stop")
        while True:  # bring every buffered block into this process, then free the session
            reply = self._call("take", 1 << 30, 0.0)
            for ref, offset in reply["blocks"]:
                self._load(ref, offset)
            if not reply["blocks"]:
                break
        self._current = None
        self._finished = True
        self._final_status = self._call("status")
        self._end_backend()

    def detach(self) -> str:
        """Give up this handle without stopping the job; return the id to `attach` with.

        Predictions this handle received but did not hand out go back to the session.
        """
        if self._current is not None:
            ref, consumed, rows = self._current
            self._call("give_back", [ref], consumed, rows)
        self._pending.clear()
        self._current = None
        self._owner = False
        self._closed = True
        return self.id

    def close(self) -> None:
        """Stop the job and free everything the session holds (unread results too)."""
        if self._closed:
            return
        self._pending.clear()
        self._current = None
        try:
            self._final_status = self._call("status")
        except Exception:  # the session already ended (idle timeout, cluster gone)
            pass
        self._end_backend()

    def _end_backend(self) -> None:
        self._closed = True
        if not self._remote:
            self._backend.stop()
            return
        try:
            self._backend.close.remote()
        except Exception:  # Ray already shut down: nothing left to free
            pass

    def __enter__(self) -> PredictionSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_owner", False) and not getattr(self, "_closed", True):
            try:
                self.close()
            except Exception:
                pass

    def __repr__(self) -> str:
        return f"PredictionSession(id={self.id!r}, closed={self._closed})"
