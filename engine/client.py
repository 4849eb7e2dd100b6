"""`ModelClient` and `SessionClient`: what every way of reaching a model has in common.

A model deployed here (`engine.deploy` -> `engine.api.ModelAPI`), a Tessera server over
HTTP and a Ray Serve application by name (both through `engine.connect`) all answer the
same calls with the same `Prediction` objects, and their detached jobs the same session
calls. Code that takes "a model" should type it as `ModelClient`.

Example:
    >>> def count_objects(model: ModelClient, paths: list[str]) -> int:
    ...     return sum(len(p) for p in model.predict(paths))
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from engine.prediction import Prediction
    from engine.settings import ModelInfo


@runtime_checkable
class SessionClient(Protocol):
    """A detached prediction job: predictions as they are ready, progress, status, stop."""

    def __iter__(self) -> Iterator[Prediction]:
        """Predictions as they are ready."""

    def __next__(self) -> Prediction:
        """The next prediction; StopIteration once the job is done and all were read."""

    def progress(self) -> dict[str, int]:
        """``{"done": ..., "total": ...}``."""

    def status(self) -> dict[str, Any]:
        """The job's state (running, done, stopped, error) and what goes with it."""

    def stop(self) -> None:
        """End the job and free what it holds."""

    def __enter__(self) -> SessionClient: ...

    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class ModelClient(Protocol):
    """A model to predict with, wherever it runs."""

    info: ModelInfo

    @property
    def classes(self) -> list[str]:
        """The model's class names."""

    @property
    def task(self) -> str:
        """detection, instance_segmentation, keypoints or classification."""

    def predict(self, input: Any = None, **options: Any) -> list[Prediction]:  # noqa: A002
        """One Prediction per image or video frame, in input order."""

    def predict_detached(self, input: Any = None, **options: Any) -> SessionClient:  # noqa: A002
        """Start a job in the background; its session at once."""

    def close(self) -> None:
        """Free what the client holds (workers, connections)."""

    def __enter__(self) -> ModelClient: ...

    def __exit__(self, *exc: object) -> None: ...
