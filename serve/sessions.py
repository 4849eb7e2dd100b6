"""Detached prediction sessions behind the HTTP server's ``/sessions`` endpoints.

The ingress deploys the model with `engine.deploy` once, lazily, on the first session, and
starts each job with `ModelAPI.predict_detached` over input files it wrote into a
temporary folder (uploads, and URLs it downloaded after checking them). The registry
keeps each `PredictionSession` by id; results are pulled with `PredictionSession.next`.
Every blocking engine call runs in a worker thread, one at a time per session.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.prediction import Prediction
from engine.session import SessionError

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class SessionInput:
    """One input of a session: an uploaded (or downloaded) file's bytes.

    Attributes:
        name: The name the client knows it by (file name, or the URL's last part).
        data: The file's bytes (an image or a video).
        url: The URL it was downloaded from, if any.
    """

    name: str
    data: bytes
    url: str | None = None


@dataclass
class _Entry:
    session: Any
    folder: Path
    origins: dict[str, SessionInput]
    lock: threading.Lock = field(default_factory=threading.Lock)


class SessionRegistry:
    """The sessions one ingress replica started, by id.

    Args:
        deploy: Returns the deployed model (`engine.deploy(...)`); called once, lazily.
        workdir: Where the sessions' input folders are made (default: the system's temp).
    """

    def __init__(self, deploy: Callable[[], Any], workdir: str | None = None) -> None:
        self._deploy = deploy
        self._model: Any = None
        self._model_lock = asyncio.Lock()
        self._entries: dict[str, _Entry] = {}
        self._workdir = workdir

    async def model(self) -> Any:
        """The deployed model (`engine.api.ModelAPI`), deployed on first use."""
        async with self._model_lock:
            if self._model is None:
                self._model = await asyncio.to_thread(self._deploy)
            return self._model

    async def start(self, inputs: list[SessionInput], options: dict[str, Any]) -> str:
        """Write the inputs to a new folder and start a detached session over them.

        Args:
            inputs: The files to predict, in order.
            options: Validated-before `predict` settings (``progress`` is turned off).

        Returns:
            The session id.

        Raises:
            ValueError, TypeError: The engine refused the settings.
        """
        model = await self.model()
        folder = Path(tempfile.mkdtemp(prefix="tessera-session-", dir=self._workdir))
        try:
            origins = await asyncio.to_thread(_write_inputs, folder, inputs)
            session = await asyncio.to_thread(
                model.predict_detached, list(origins), **{**options, "progress": False}
            )
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self._entries[session.id] = _Entry(session, folder, origins)
        return session.id

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._entries

    async def status(self, session_id: str) -> dict[str, Any]:
        """``{"id", "state", "progress": {"done", "total"}, "message", "error", "failed"}``.

        Raises:
            KeyError: No such session.
        """
        entry = self._entries[session_id]
        report = await asyncio.to_thread(_locked, entry, entry.session.status)
        return {
            "id": session_id,
            "state": report["state"],
            "progress": report["progress"],
            "message": report["message"],
            "error": report["error"],
            "failed": report.get("failed", []),
        }

    async def results(
        self, session_id: str, max_results: int, wait_s: float
    ) -> tuple[list[Prediction], bool, str | None]:
        """Pull at most ``max_results`` predictions, waiting up to ``wait_s`` for the first.

        Returns:
            ``(predictions, done, error)``: ``done`` once the session has handed out
            everything; ``error`` when the session failed as a whole.

        Raises:
            KeyError: No such session.
        """
        entry = self._entries[session_id]
        pulled, done, error = await asyncio.to_thread(
            _locked, entry, _pull, entry.session, max_results, wait_s
        )
        return [_restore_origin(p, entry.origins) for p in pulled], done, error

    async def delete(self, session_id: str) -> None:
        """Stop the session, free what it holds and forget it.

        Raises:
            KeyError: No such session.
        """
        entry = self._entries.pop(session_id)
        try:
            await asyncio.to_thread(_locked, entry, entry.session.close)
        finally:
            shutil.rmtree(entry.folder, ignore_errors=True)

    def close(self) -> None:
        """Stop every session and the deployed model (the ingress is going away)."""
        for session_id in list(self._entries):
            entry = self._entries.pop(session_id)
            try:
                entry.session.close()
            except Exception:  # Ray may already be gone
                pass
            shutil.rmtree(entry.folder, ignore_errors=True)
        if self._model is not None:
            try:
                self._model.close()
            except Exception:
                pass
            self._model = None


def _locked(entry: _Entry, call: Callable[..., Any], *args: Any) -> Any:
    with entry.lock:
        return call(*args)


def _pull(session: Any, max_results: int, wait_s: float) -> tuple[list, bool, str | None]:
    pulled: list[Prediction] = []
    try:
        while len(pulled) < max_results:
            if pulled:
                prediction = session.next(block=False)
            else:
                prediction = session.next(timeout=wait_s)
            if prediction is None:
                break
            pulled.append(prediction)
    except StopIteration:
        return pulled, True, None
    except TimeoutError:
        pass
    except SessionError as exc:
        return pulled, True, str(exc)
    return pulled, False, None


def _write_inputs(folder: Path, inputs: list[SessionInput]) -> dict[str, SessionInput]:
    origins: dict[str, SessionInput] = {}
    for index, item in enumerate(inputs):
        safe = _UNSAFE_NAME.sub("_", Path(item.name).name).strip("._") or "input"
        path = folder / f"{index:05d}_{safe[-100:]}"
        path.write_bytes(item.data)
        origins[str(path)] = item
    return origins


def _restore_origin(prediction: Prediction, origins: dict[str, SessionInput]) -> Prediction:
    """Name a session's prediction as the client knows its input, not by the temp file."""
    origin = origins.get(str(prediction.path))
    if origin is not None:
        prediction.name = origin.name
        prediction.url = origin.url
        if prediction.frame_index is None:  # video frames keep "video"
            prediction.source = "url" if origin.url else "upload"
        prediction.path = None
    return prediction
