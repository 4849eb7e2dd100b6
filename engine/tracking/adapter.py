"""The boxmot adapter: detections to and from boxmot's arrays, and trackers by name.

Pure Python over `boxmot <https://github.com/mikel-brostrom/boxmot>`_ (25.x); boxmot is
imported lazily inside `make_tracker`, so importing this module stays cheap.

Facts about boxmot 25.0.0 this module relies on:

- ``tracker.update(dets, frame)`` takes an (N, 6) array ``x1, y1, x2, y2, conf, cls``
  (scores in [0, 1], non-negative integer classes, x2 > x1 and y2 > y1) and an optional
  uint8 HWC **BGR** frame, and returns an (M, 8) float64 array
  ``x1, y1, x2, y2, track_id, conf, cls, det_ind`` where ``det_ind`` is the row of the
  input the track was matched to in this frame (-1 if none). Track ids start at 0.
- ``tracker.requirements.frame`` tells whether the tracker reads pixels: ByteTrack and
  OC-SORT do not (a frame only gives them its size); BoT-SORT, BoostTrack, DeepOCSORT and
  HybridSORT read pixels for camera-motion compensation (and ReID when embeddings are
  on); StrongSORT always needs ReID; SFSORT only needs the frame size.
- ``frame_rate`` is a constructor argument of ByteTrack and BoT-SORT only (it scales
  ``track_buffer``); the other trackers count ``max_age`` in frames.
- ReID is switched off with ``use_embeddings=False`` (BoT-SORT, DeepOCSORT, HybridSORT,
  OccluBoost, BoostTrack); a ReID tracker built without local weights downloads default
  weights on its first update, which `make_tracker` never lets happen.

Example:
    >>> tracker = make_tracker("bytetrack", frame_rate=30)            # doctest: +SKIP
    >>> tracks = tracker.update(to_boxmot(prediction), frame)        # doctest: +SKIP
    >>> from_boxmot(tracks, prediction).track_ids                    # doctest: +SKIP
    array([0, 1])
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from engine.detections import Detections
from engine.prediction import Prediction

__all__ = ["TRACKERS", "check_tracker", "from_boxmot", "make_tracker", "to_boxmot"]

#: Tracker names `make_tracker` accepts and the boxmot class each stands for.
TRACKERS: dict[str, str] = {
    "bytetrack": "ByteTrack",
    "ocsort": "OcSort",
    "botsort": "BotSort",
    "boosttrack": "BoostTrack",
    "deepocsort": "DeepOcSort",
    "hybridsort": "HybridSort",
    "occluboost": "OccluBoost",
    "sfsort": "SFSORT",
    "strongsort": "StrongSort",
}

_OUTPUT_COLUMNS = 8  # x1, y1, x2, y2, id, conf, cls, det_ind


def to_boxmot(detections: Prediction | Detections) -> np.ndarray:
    """Return detections as boxmot's (N, 6) float32 input ``x1, y1, x2, y2, conf, cls``.

    Scores are clipped to [0, 1], the range boxmot accepts. Rows are not filtered:
    `track_predictions` drops rows boxmot would reject (non-finite values, empty boxes).

    Args:
        detections: A `Prediction` or its `Detections`.

    Returns:
        (N, 6) float32 array; shape (0, 6) when there are no detections.

    Example:
        >>> to_boxmot(Detections.empty()).shape
        (0, 6)

    """
    dets = detections.detections if isinstance(detections, Prediction) else detections
    out = np.zeros((len(dets), 6), np.float32)
    if len(dets):
        out[:, :4] = dets.xyxy
        out[:, 4] = np.clip(dets.scores, 0.0, 1.0)
        out[:, 5] = dets.class_idxs
    return out


def from_boxmot(tracks: np.ndarray, prediction: Prediction) -> Prediction:
    """Return a copy of ``prediction`` holding the tracked detections, with ``track_ids``.

    ``tracks`` is boxmot's ``update()`` output for this prediction's detections, rows
    ``x1, y1, x2, y2, track_id, conf, cls, det_ind``. Each row is mapped back to the
    detection at ``det_ind``, whose **detector box**, score, class, mask and keypoints are
    kept (exact geometry; the tracker's Kalman-smoothed box is discarded). Track ids are
    boxmot's, unchanged.

    Detections the tracker did not output (tracks not yet confirmed, low-score detections
    it ignored) are dropped, and so are rows without a detection in this frame
    (``det_ind`` -1: a track coasting on its motion model). The kept detections stay in
    the detector's order.

    Args:
        tracks: (M, 8) array from ``tracker.update``; (0, 8) or empty for no tracks.
        prediction: The prediction whose detections were passed to ``update``.

    Returns:
        A new `Prediction` (same origin fields) whose detections carry ``track_ids``
        ((0,) int64 when nothing is tracked).

    Raises:
        ValueError: If ``tracks`` does not have 8 columns or a ``det_ind`` is out of range.

    Example:
        >>> tracked = from_boxmot(tracker.update(to_boxmot(p), frame), p)  # doctest: +SKIP
        >>> tracked.track_ids                                              # doctest: +SKIP
        array([0, 1])

    """
    tracks = np.asarray(tracks, dtype=np.float64)
    if tracks.size == 0:
        tracks = tracks.reshape(0, _OUTPUT_COLUMNS)
    if tracks.ndim != 2 or tracks.shape[1] != _OUTPUT_COLUMNS:
        raise ValueError(
            "tracks must have shape (M, 8): x1, y1, x2, y2, track_id, conf, cls, det_ind "
            f"(boxmot >= 10 AABB output), got {tracks.shape}"
        )
    det_inds = tracks[:, 7].astype(np.int64)
    if np.any(det_inds >= len(prediction.detections)):
        raise ValueError(
            f"tracks refer to detection {int(det_inds.max())} but the prediction has "
            f"{len(prediction.detections)} detections"
        )
    rows = np.flatnonzero(det_inds >= 0)
    rows = rows[np.argsort(det_inds[rows], kind="stable")]
    kept = prediction.detections[det_inds[rows]]
    kept = dataclasses.replace(kept, track_ids=tracks[rows, 4].astype(np.int64))
    return dataclasses.replace(prediction, detections=kept)


def check_tracker(
    tracker: str | object,
    reid_weights: str | Path | None = None,
    tracker_options: Any = None,
) -> None:
    """Refuse what `make_tracker` would refuse that needs no tracker built (nor boxmot).

    A job checks its tracker with this before it starts, so that a bad name, a missing
    weights file or options that are not a mapping fail at once, not in a tracker actor
    after the detector has run.

    Raises:
        ValueError: An unknown tracker name, or ``tracker_options`` not a mapping.
        TypeError: A tracker that is neither a name nor has ``update(dets, frame)``.
        FileNotFoundError: ``reid_weights`` is not an existing file.

    Example:
        >>> check_tracker("ByteTrack")
        >>> check_tracker("nosuch")
        Traceback (most recent call last):
        ...
        ValueError: unknown tracker 'nosuch'; valid names: bytetrack, ocsort, botsort, \
boosttrack, deepocsort, hybridsort, occluboost, sfsort, strongsort
    """
    if tracker_options is not None and not isinstance(tracker_options, Mapping):
        raise ValueError(
            f"tracker_options must be a dict of tracker arguments, got {tracker_options!r}"
        )
    if not isinstance(tracker, str):
        if not callable(getattr(tracker, "update", None)):
            raise TypeError(
                f"tracker must be a name or an object with update(dets, frame), got {tracker!r}"
            )
        return
    _tracker_name(tracker)
    if reid_weights is not None and not Path(reid_weights).expanduser().is_file():
        raise FileNotFoundError(_missing_weights(reid_weights))


def _tracker_name(tracker: str) -> str:
    name = tracker.strip().lower().replace("-", "").replace("_", "")
    if name not in TRACKERS:
        raise ValueError(f"unknown tracker {tracker!r}; valid names: {', '.join(TRACKERS)}")
    return name


def _missing_weights(reid_weights: str | Path) -> str:
    return (
        f"ReID weights {str(reid_weights)!r} not found: pass the path of a local "
        "weights file (Tessera never downloads them)"
    )


def make_tracker(
    tracker: str | object,
    reid_weights: str | Path | None = None,
    device: str = "cpu",
    **kwargs: Any,
) -> Any:
    """Build a boxmot tracker by name; a tracker instance is returned unchanged.

    Trackers that need no appearance model are the default. ReID-capable trackers
    (botsort, boosttrack, deepocsort, hybridsort, occluboost, strongsort) run with ReID
    only when ``reid_weights`` names a local weights file; without one they are built
    with ``use_embeddings=False`` (BoT-SORT is then motion + camera-motion compensation),
    and strongsort, which cannot run without ReID, raises. Nothing is ever downloaded.

    Args:
        tracker: One of `TRACKERS` (case-insensitive; "-" and "_" ignored), or an object
            with an ``update(dets, frame)`` method, returned as is.
        reid_weights: Local ReID weights file (e.g. ``osnet_x0_25_msmt17.pt``).
        device: Device of the ReID model (only used with ``reid_weights``).
        **kwargs: Constructor arguments of the boxmot class (e.g. ``track_thresh``,
            ``max_age``, ``min_hits``, ``use_cmc``). ``frame_rate`` (the rate of the
            frames you will feed, i.e. video fps / stride) goes to trackers that take it
            (bytetrack, botsort); for the others, unless ``max_age`` is given, it scales
            ``max_age`` from 30 frames at 30 fps. ``with_reid`` is an alias of
            ``use_embeddings``.

    Returns:
        The tracker instance.

    Raises:
        ValueError: On an unknown name, ReID requested without weights, or weights given
            to a tracker that has no ReID.
        FileNotFoundError: If ``reid_weights`` is not an existing file.

    Example:
        >>> make_tracker("ocsort", frame_rate=15).max_age                # doctest: +SKIP
        15

    """
    if not isinstance(tracker, str):
        if not callable(getattr(tracker, "update", None)):
            raise TypeError(
                f"tracker must be a name or an object with update(dets, frame), got {tracker!r}"
            )
        if reid_weights is not None or kwargs:
            raise ValueError("reid_weights and tracker arguments only apply to a tracker name")
        return tracker
    name = _tracker_name(tracker)

    import boxmot

    cls = getattr(boxmot, TRACKERS[name])
    params = _init_params(cls)
    kwargs = dict(kwargs)
    if "with_reid" in kwargs:
        kwargs["use_embeddings"] = bool(kwargs.pop("with_reid"))
    frame_rate = kwargs.pop("frame_rate", None)
    if frame_rate is not None:
        if not isinstance(frame_rate, (int, float)) or not frame_rate > 0:
            raise ValueError(f"frame_rate must be a positive number, got {frame_rate!r}")
        if "frame_rate" in params:
            kwargs["frame_rate"] = frame_rate
        elif "max_age" not in kwargs:  # boxmot's default: 30 frames, meant for 30 fps
            kwargs["max_age"] = max(1, round(30 * frame_rate / 30.0))

    accepts_reid = bool(getattr(cls, "accepts_embeddings", False))
    requires_reid = bool(getattr(cls, "requires_embeddings", False))
    wants_reid = kwargs.get("use_embeddings", requires_reid or reid_weights is not None)
    if reid_weights is not None:
        if not accepts_reid:
            raise ValueError(f"tracker {name!r} does not use ReID: do not pass reid_weights")
        if not wants_reid:
            raise ValueError("reid_weights given together with use_embeddings=False")
        weights = Path(reid_weights).expanduser()
        if not weights.is_file():
            raise FileNotFoundError(_missing_weights(reid_weights))
        kwargs.update(reid_weights=weights, device=device)
        if "use_embeddings" in params:
            kwargs["use_embeddings"] = True
    elif accepts_reid and wants_reid:
        raise ValueError(
            f"tracker {name!r} needs ReID weights for appearance matching: pass "
            "reid_weights=<local weights file, e.g. osnet_x0_25_msmt17.pt>"
            + ("" if requires_reid else ", or leave ReID off (use_embeddings=False)")
        )
    elif "use_embeddings" in params:
        kwargs["use_embeddings"] = False
    return cls(**kwargs)


def _init_params(cls: type) -> set[str]:
    """Names of the explicit constructor parameters of ``cls`` and its bases."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            names.update(
                p.name
                for p in inspect.signature(init).parameters.values()
                if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
            )
    return names
