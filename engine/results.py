"""What a ``predict`` call returns: the whole list, or a stream read once.

`PredictionResults` is the list `predict` returns; `PredictionStream` is what
``predict(..., stream=True)`` returns: the Predictions one by one as they come, holding
none of them once handed out (only the failed ones, for `failed`), so that a job of a
million images costs the driver the same memory as a job of a thousand.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from engine.prediction import Prediction


class PredictionResults(list):
    """The Predictions of one `predict` call (a list), plus what was skipped.

    Attributes:
        skipped: Files inside input directories that were not images, so not predicted.
        outputs: Summary of each upload and export (``"upload:<platform>"``,
            ``"export:coco"``): delivered, dead, files written...; and, for a job with
            outputs, ``"job"``: its ``job_id``, ``directory`` and the items done.
    """

    def __init__(
        self,
        predictions: Iterable[Prediction],
        skipped: list[str],
        outputs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(predictions)
        self.skipped = skipped
        self.outputs = outputs or {}

    @property
    def failed(self) -> list[Prediction]:
        """The Predictions that carry an error."""
        return [p for p in self if p.error is not None]

    def summary(self) -> dict[str, Any]:
        """Counts of items, failures, skipped files and objects found."""
        return {
            "items": len(self),
            "predicted": len(self) - len(self.failed),
            "failed": len(self.failed),
            "skipped": len(self.skipped),
            "objects": sum(len(p) for p in self),
        }


class PredictionStream:
    """The Predictions of one ``predict(..., stream=True)`` call, as they come, in order.

    Iterate it once. Counts, failures and the outputs' summaries fill in as it is read:
    `summary()` and `outputs` are final once the iteration has ended.

    Attributes:
        skipped: Files inside input directories that were not images, so not predicted.
        total: Predictions the job will produce (one per image and per selected frame).
        outputs: As for `PredictionResults`, once the stream has ended.
        failed: The Predictions read so far that carry an error.

    Example:
        >>> for prediction in model.predict("tree/", recursive=True, stream=True):
        ...     save(prediction)                                   # doctest: +SKIP
    """

    def __init__(
        self, predictions: Iterator[Prediction], skipped: list[str], total: int, report: dict
    ) -> None:
        self._predictions = predictions
        self._report = report
        self.skipped = skipped
        self.total = total
        self.failed: list[Prediction] = []
        self._items = self._objects = 0

    @property
    def outputs(self) -> dict[str, Any]:
        """The uploads' and exports' summaries (complete once the stream has ended)."""
        return self._report.get("outputs") or {}

    def __iter__(self) -> Iterator[Prediction]:
        for prediction in self._predictions:
            self._items += 1
            self._objects += len(prediction)
            if prediction.error is not None:
                self.failed.append(prediction)
            yield prediction

    def __len__(self) -> int:
        return self.total

    def summary(self) -> dict[str, Any]:
        """Counts of the items read so far, failures, skipped files and objects found."""
        return {
            "items": self._items,
            "predicted": self._items - len(self.failed),
            "failed": len(self.failed),
            "skipped": len(self.skipped),
            "objects": self._objects,
        }
