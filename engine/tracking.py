"""Multi-object tracking of video predictions with boxmot, and tracked-video exports.

Pure Python over `boxmot <https://github.com/mikel-brostrom/boxmot>`_ (25.x); boxmot and
torch are imported lazily inside the functions that need them, so importing this module
stays cheap.

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
    >>> frames = list(track_predictions(predictions, tracker))        # doctest: +SKIP
    >>> video = VideoAnnotation.from_predictions(frames, fps=30)      # doctest: +SKIP
    >>> video.save("out")                                             # doctest: +SKIP
    {'annotation': PosixPath('out/clip.mp4.json'), 'mot': PosixPath('out/clip.txt')}
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from engine.annotation import box_to_rectangle
from engine.detections import Detections
from engine.prediction import Prediction

__all__ = [
    "TRACKERS",
    "VideoAnnotation",
    "draw_tracks",
    "from_boxmot",
    "make_tracker",
    "to_boxmot",
    "track_predictions",
]

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
_KEY_NAMESPACE = uuid.UUID("6f1c7c5e-2b1a-4c55-9b7e-0d5a3e7f2a10")


# ---------------------------------------------------------------------- boxmot arrays
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


# ---------------------------------------------------------------------- trackers
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
    name = tracker.strip().lower().replace("-", "").replace("_", "")
    if name not in TRACKERS:
        raise ValueError(f"unknown tracker {tracker!r}; valid names: {', '.join(TRACKERS)}")

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
            raise FileNotFoundError(
                f"ReID weights {str(reid_weights)!r} not found: pass the path of a local "
                "weights file (Tessera never downloads them)"
            )
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


def track_predictions(
    predictions: Iterable[Prediction],
    tracker: str | object,
    frame_loader: Callable[[Prediction], np.ndarray] | None = None,
) -> Iterator[Prediction]:
    """Feed one video's predictions, in frame order, to one tracker; yield them tracked.

    Each prediction is given to ``tracker.update`` and comes back as `from_boxmot` makes it
    (detector boxes, ``track_ids`` set, detections without a confirmed track dropped).
    Feeding every n-th frame (a stride) is fine; build the tracker with
    ``frame_rate = fps / stride`` so its time-based buffers stay right.

    Frames: trackers that read pixels (``tracker.requirements.frame``: BoT-SORT's camera
    motion compensation, ReID...) get ``frame_loader(prediction)`` when given, else
    ``prediction.image``, as RGB HWC uint8 (converted to boxmot's BGR here); if neither
    exists they get a black frame and a warning (ReID trackers raise instead). Trackers
    that only use the frame size (ByteTrack, OC-SORT, SFSORT) get a shared black frame of
    the prediction's size and ``frame_loader`` is not called.

    A prediction with an ``error`` is yielded unchanged (``track_ids`` None) and does not
    advance the tracker: it is treated like a skipped frame, not like a frame where every
    object vanished. Detections boxmot would reject (non-finite values, zero-size boxes,
    negative classes) are dropped from the tracked prediction. Use a fresh tracker (or
    ``tracker.reset()``) for each video.

    Args:
        predictions: The frames' predictions, in strictly increasing ``frame_index``
            (predictions without a ``frame_index`` are taken as the next frame).
        tracker: A tracker instance, or a name for `make_tracker`.
        frame_loader: Returns the RGB image of a prediction, for trackers that read
            pixels.

    Yields:
        The tracked predictions, in input order.

    Raises:
        ValueError: When a ``frame_index`` is not greater than the previous one (raised
            as that prediction is reached), or when a ReID tracker has no pixels.

    Example:
        >>> for p in track_predictions(video_predictions, "bytetrack"):  # doctest: +SKIP
        ...     print(p.frame_index, p.track_ids)

    """
    tracker = make_tracker(tracker)
    reads_pixels, warn_black, needs_pixels = _pixel_requirements(tracker)
    zero_frames: dict[tuple[int, int], np.ndarray] = {}
    warned = False
    last_index: int | None = None
    for prediction in predictions:
        if prediction.frame_index is not None:
            index = int(prediction.frame_index)
            if last_index is not None and index <= last_index:
                raise ValueError(
                    f"frames must be given in increasing frame_index order: got frame {index} "
                    f"after frame {last_index} ({prediction.name!r})"
                )
            last_index = index
        elif last_index is not None:
            last_index += 1
        if prediction.error is not None:
            yield prediction
            continue

        frame = None
        if reads_pixels:
            frame = _load_frame(prediction, frame_loader)
        if frame is None and prediction.height > 0 and prediction.width > 0:
            shape = (int(prediction.height), int(prediction.width))
            if shape not in zero_frames:
                zero_frames[shape] = np.zeros((*shape, 3), np.uint8)
            frame = zero_frames[shape]
            if warn_black:
                if needs_pixels:
                    raise ValueError(
                        f"{type(tracker).__name__} matches by appearance (ReID) and needs the "
                        f"frames' pixels: pass frame_loader= ({prediction.name!r} has no image)"
                    )
                if not warned:
                    warnings.warn(
                        f"{type(tracker).__name__} reads pixels (camera motion compensation) "
                        "but no frame_loader was given: it sees black frames",
                        stacklevel=2,
                    )
                    warned = True

        dets = to_boxmot(prediction)
        valid = np.flatnonzero(
            np.isfinite(dets).all(axis=1)
            & (dets[:, 2] > dets[:, 0])
            & (dets[:, 3] > dets[:, 1])
            & (dets[:, 5] >= 0)
        )
        source = prediction
        if len(valid) < len(dets):
            dets = dets[valid]
            source = dataclasses.replace(prediction, detections=prediction.detections[valid])
        update_kwargs = {}
        if getattr(tracker, "variable_dt", False):
            if prediction.timestamp is None:
                raise ValueError(
                    f"the tracker uses variable_dt but {prediction.name!r} has no timestamp"
                )
            update_kwargs["timestamp_s"] = float(prediction.timestamp)
        tracks = tracker.update(dets, frame, **update_kwargs)
        yield from_boxmot(tracks, source)


def _pixel_requirements(tracker: Any) -> tuple[bool, bool, bool]:
    """(load pixels, warn when only black frames, fail without pixels) for a tracker."""
    requirements = getattr(tracker, "requirements", None)
    if requirements is None:  # not a boxmot 25 tracker: give it the pixels if we have them
        return True, False, False
    reads = bool(requirements.frame) and not bool(
        getattr(requirements, "frame_dimensions_only", False)
    )
    return reads, reads, reads and bool(getattr(requirements, "embeddings", False))


def _load_frame(
    prediction: Prediction, frame_loader: Callable[[Prediction], np.ndarray] | None
) -> np.ndarray | None:
    """The prediction's image as a contiguous uint8 HWC BGR array, or None."""
    image = frame_loader(prediction) if frame_loader is not None else prediction.image
    if image is None:
        return None
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"frame of {prediction.name!r} must be HWC RGB, got {image.shape}")
    return np.ascontiguousarray(image[..., 2::-1], dtype=np.uint8)


# ---------------------------------------------------------------------- video annotation
@dataclass
class VideoAnnotation:
    """One video's tracked predictions, exportable as Supervisely video JSON and MOT text.

    Attributes:
        name: The video's file name (``clip.mp4``).
        path: Local path of the video, if any.
        width: Frame width in pixels.
        height: Frame height in pixels.
        fps: Frames per second of the video (0 if unknown).
        num_frames: Number of frames of the video (0: one past the last tracked frame).
        class_names: The model's class list.
        frames: The tracked predictions, in frame order (predictions with an ``error``
            are skipped by the exports).
        error: Why the video could not be tracked at all (it could not be opened), or
            None.
    """

    name: str
    width: int
    height: int
    class_names: list[str]
    frames: list[Prediction] = field(default_factory=list)
    fps: float = 0.0
    num_frames: int = 0
    path: str | None = None
    error: str | None = None

    @classmethod
    def from_predictions(
        cls,
        frames: Iterable[Prediction],
        fps: float = 0.0,
        num_frames: int = 0,
        name: str | None = None,
        path: str | None = None,
    ) -> VideoAnnotation:
        """Collect tracked predictions; name, path, size and classes come from the frames."""
        frames = list(frames)
        first = next((p for p in frames if p.ok), frames[0] if frames else None)
        if first is None and name is None:
            raise ValueError("no frames: pass name= to build an empty VideoAnnotation")
        return cls(
            name=name if name is not None else first.name,
            path=path if path is not None else (first.path if first else None),
            width=int(first.width) if first else 0,
            height=int(first.height) if first else 0,
            class_names=list(first.class_names) if first else [],
            frames=frames,
            fps=float(fps),
            num_frames=int(num_frames),
        )

    def _tracked_frames(self) -> list[tuple[int, Prediction]]:
        """(frame index, prediction) of every frame without error; checks they're tracked."""
        out = []
        for position, prediction in enumerate(self.frames):
            if prediction.error is not None:
                continue
            if prediction.track_ids is None:
                raise ValueError(
                    f"frame {prediction.frame_index} ({prediction.name!r}) is not tracked: "
                    "run track_predictions first"
                )
            index = position if prediction.frame_index is None else int(prediction.frame_index)
            out.append((index, prediction))
        return out

    def track_ids(self) -> list[int]:
        """The sorted distinct track ids of all frames."""
        ids: set[int] = set()
        for _, prediction in self._tracked_frames():
            ids.update(int(t) for t in prediction.track_ids)
        return sorted(ids)

    def _frames_count(self, frames: list[tuple[int, Prediction]]) -> int:
        if self.num_frames:
            return int(self.num_frames)
        return max((i for i, _ in frames), default=-1) + 1

    def _key(self, *parts: object) -> str:
        return uuid.uuid5(_KEY_NAMESPACE, "/".join(str(p) for p in (self.name, *parts))).hex

    def to_supervisely(self) -> dict[str, Any]:
        """Return the Supervisely video annotation JSON dict.

        One object per track id (in increasing id order) and, for every tracked frame, one
        rectangle figure per tracked detection (integer pixels, right/bottom inclusive,
        as `engine.annotation.box_to_rectangle` does for images). An object's
        ``classTitle`` is its track's majority class over the frames (ties: the class seen
        first). The per-frame score is kept as the object's ``confidence`` tag (the tag
        meta of `engine.annotation.CONFIDENCE_TAG`) with a ``frameRange``; runs of
        adjacent frames with the same rounded score share one tag. Keys are
        deterministic UUID5 hex strings derived from the video name, track id and frame.
        Every tracked frame is listed, also with no figures; frames with an error are left
        out.
        """
        frames = self._tracked_frames()
        classes: dict[int, Counter] = {}
        scores: dict[int, list[tuple[int, float]]] = {}
        out_frames = []
        for index, prediction in frames:
            figures = []
            dets = prediction.detections
            for box, score, class_idx, track_id in zip(
                dets.xyxy, dets.scores, dets.class_idxs, dets.track_ids, strict=True
            ):
                tid = int(track_id)
                classes.setdefault(tid, Counter())[int(class_idx)] += 1
                scores.setdefault(tid, []).append((index, round(float(score), 4)))
                left, top, right, bottom = box_to_rectangle(box, self.height, self.width)
                figures.append(
                    {
                        "key": self._key("figure", tid, index),
                        "objectKey": self._key("object", tid),
                        "geometryType": "rectangle",
                        "geometry": {
                            "points": {"exterior": [[left, top], [right, bottom]], "interior": []}
                        },
                    }
                )
            out_frames.append({"index": index, "figures": figures})
        objects = [
            {
                "key": self._key("object", tid),
                "classTitle": self.class_names[classes[tid].most_common(1)[0][0]],
                "tags": _confidence_tags(scores[tid]),
            }
            for tid in sorted(classes)
        ]
        return {
            "size": {"height": int(self.height), "width": int(self.width)},
            "description": "",
            "key": self._key("video"),
            "tags": [],
            "objects": objects,
            "frames": out_frames,
            "framesCount": self._frames_count(frames),
        }

    @classmethod
    def from_supervisely(
        cls,
        annotation: dict[str, Any],
        class_names: list[str],
        name: str = "",
        path: str | None = None,
        fps: float = 0.0,
    ) -> VideoAnnotation:
        """Read a Supervisely video annotation back (rectangle figures only).

        Objects become track ids 0, 1, 2... in the order of ``objects`` (the original
        ids are not stored in the JSON, so `to_supervisely` then this gives the same
        tracks and boxes but renumbered ids). A figure's box is x2 = right + 1,
        y2 = bottom + 1, its class its object's class, its score the object's
        ``confidence`` tag covering that frame (1.0 without one). Each listed frame gives
        one prediction.

        Raises:
            ValueError: If an object's class is not in ``class_names``.
        """
        height = int(annotation["size"]["height"])
        width = int(annotation["size"]["width"])
        class_index = {n: i for i, n in reversed(list(enumerate(class_names)))}
        objects: dict[str, tuple[int, int, list[dict]]] = {}
        for tid, obj in enumerate(annotation.get("objects", [])):
            title = obj["classTitle"]
            if title not in class_index:
                raise ValueError(f"class {title!r} of the annotation is not in class_names")
            tags = [t for t in obj.get("tags", []) if t.get("name") == "confidence"]
            objects[obj["key"]] = (tid, class_index[title], tags)
        frames = []
        for frame in sorted(annotation.get("frames", []), key=lambda f: int(f["index"])):
            index = int(frame["index"])
            boxes, scores, labels, ids = [], [], [], []
            for figure in frame.get("figures", []):
                if figure.get("geometryType") != "rectangle":
                    continue
                tid, class_idx, tags = objects[figure["objectKey"]]
                (ax, ay), (bx, by) = figure["geometry"]["points"]["exterior"][:2]
                left, right = sorted((int(round(ax)), int(round(bx))))
                top, bottom = sorted((int(round(ay)), int(round(by))))
                boxes.append([left, top, right + 1, bottom + 1])
                scores.append(_tag_value_at(tags, index))
                labels.append(class_idx)
                ids.append(tid)
            detections = Detections(
                xyxy=np.asarray(boxes, np.float32).reshape(-1, 4),
                scores=np.asarray(scores, np.float32),
                class_idxs=np.asarray(labels, np.int64),
                track_ids=np.asarray(ids, np.int64),
            )
            frames.append(
                Prediction(
                    detections=detections,
                    class_names=list(class_names),
                    source="file" if path else "array",
                    name=name,
                    path=path,
                    frame_index=index,
                    timestamp=index / fps if fps else None,
                    height=height,
                    width=width,
                    index=len(frames),
                )
            )
        return cls(
            name=name,
            path=path,
            width=width,
            height=height,
            class_names=list(class_names),
            frames=frames,
            fps=float(fps),
            num_frames=int(annotation.get("framesCount") or 0),
        )

    def to_mot(self) -> str:
        """Return the tracks as MOTChallenge text, one line per tracked box.

        Lines are ``frame,id,bb_left,bb_top,bb_width,bb_height,conf,-1,-1,-1`` with frame
        1-based (frame_index + 1), the box in float pixels (2 decimals, width = x2 - x1),
        conf with 4 decimals, sorted by frame then id; the text ends with a newline (empty
        without tracks). Ids are the tracker's, unchanged.
        """
        lines = []
        for index, prediction in self._tracked_frames():
            dets = prediction.detections
            order = np.argsort(dets.track_ids, kind="stable")
            for i in order:
                x1, y1, x2, y2 = (float(v) for v in dets.xyxy[i])
                lines.append(
                    f"{index + 1},{int(dets.track_ids[i])},{x1:.2f},{y1:.2f},{x2 - x1:.2f},"
                    f"{y2 - y1:.2f},{float(dets.scores[i]):.4f},-1,-1,-1"
                )
        return "".join(line + "\n" for line in lines)

    def save(self, directory: str | Path) -> dict[str, Path]:
        """Write the Supervisely JSON and the MOT text into ``directory`` (created if needed).

        The annotation is ``<name>.json`` (as Supervisely video projects name them, e.g.
        ``clip.mp4.json``), the MOT file ``<stem>.txt`` (``clip.txt``).

        Returns:
            ``{"annotation": json path, "mot": txt path}``.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        base = Path(self.name).name or "video"
        paths = {
            "annotation": directory / f"{base}.json",
            "mot": directory / f"{Path(base).stem or base}.txt",
        }
        paths["annotation"].write_text(json.dumps(self.to_supervisely()), encoding="utf-8")
        paths["mot"].write_text(self.to_mot(), encoding="utf-8")
        return paths


def _confidence_tags(scores: list[tuple[int, float]]) -> list[dict[str, Any]]:
    """Frame-ranged confidence tags, merging adjacent frames of equal score."""
    tags: list[dict[str, Any]] = []
    for index, score in scores:
        last = tags[-1] if tags else None
        if last is not None and last["value"] == score and last["frameRange"][1] + 1 == index:
            last["frameRange"][1] = index
        else:
            tags.append({"name": "confidence", "value": score, "frameRange": [index, index]})
    return tags


def _tag_value_at(tags: list[dict], index: int) -> float:
    for tag in tags:
        start, end = tag.get("frameRange") or (-math.inf, math.inf)
        if start <= index <= end and tag.get("value") is not None:
            return float(tag["value"])
    return 1.0


# ---------------------------------------------------------------------- drawing
def draw_tracks(
    image: np.ndarray, prediction: Prediction, class_names: list[str] | None = None
) -> np.ndarray:
    """Draw a tracked prediction on ``image``: boxes labelled ``"id:<n> <class>"``.

    Each track gets its own color (`engine.visualize.class_color` of its id, so a track
    keeps its color across frames); masks and keypoints are drawn too. Boxes, masks and
    keypoints come from `engine.visualize.draw_prediction`; the labels are drawn here.
    An untracked prediction is labelled by class only; one with an ``error`` gives an
    unchanged copy of the image.

    Args:
        image: The frame, HWC RGB uint8.
        prediction: Its tracked prediction.
        class_names: Class list (default: ``prediction.class_names``).

    Returns:
        The drawn frame, HWC RGB uint8.
    """
    from PIL import Image, ImageDraw

    from engine.visualize import class_color, draw_label, draw_prediction, label_font

    if prediction.error is not None:
        return np.array(image, copy=True)
    names = list(prediction.class_names if class_names is None else class_names)
    dets = prediction.detections
    ids = dets.track_ids
    color_keys = dets.class_idxs if ids is None else ids
    # draw_prediction colors objects by class index: pass the track ids in its place.
    colored = dataclasses.replace(
        dets, class_idxs=np.asarray(color_keys, np.int64), track_ids=None, data={}
    )
    drawn = draw_prediction(
        dataclasses.replace(prediction, detections=colored, image=np.asarray(image)),
        fill_rectangles=False,
    )
    if not len(dets):
        return drawn
    out = Image.fromarray(drawn)
    draw = ImageDraw.Draw(out)
    height, width = drawn.shape[:2]
    font = label_font(max(10, round(min(height, width) / 40)))
    for i, box in enumerate(dets.xyxy):
        class_idx = int(dets.class_idxs[i])
        label = names[class_idx] if 0 <= class_idx < len(names) else str(class_idx)
        if ids is not None:
            label = f"id:{int(ids[i])} {label}"
        left = min(max(0, math.floor(float(box[0]))), width - 1)
        top = min(max(0, math.floor(float(box[1]))), height - 1)
        draw_label(draw, font, label, left, top, class_color(int(color_keys[i])))
    return np.asarray(out).copy()


def write_tracked_video(
    annotation: VideoAnnotation, path: str | Path, codec: str = "libx264"
) -> Path:
    """Encode the annotation's frames, drawn with `draw_tracks`, as a video file.

    The frames are decoded again from ``annotation.path``, in one pass, and written at the
    rate they were predicted (the video's fps over the frame step between predictions).

    Args:
        annotation: A tracked video (its ``path`` must be the local video).
        path: The video file to write (``.mp4``).
        codec: An encoder PyAV has (libx264 by default).

    Returns:
        The written path.

    Raises:
        ValueError: The annotation has no frames or no local video.
    """
    import av

    from engine.sources.video import decode_frames_sequential

    frames = [p for p in annotation.frames if p.frame_index is not None]
    if not frames or annotation.path is None:
        raise ValueError(f"{annotation.name}: no tracked frames of a local video to draw")
    indices = [int(p.frame_index) for p in frames]
    step = min((b - a for a, b in zip(indices, indices[1:])), default=1) or 1
    rate = Fraction(annotation.fps / step).limit_denominator(1001) if annotation.fps else 30
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    by_index = {int(p.frame_index): p for p in frames}
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = (
            annotation.width + annotation.width % 2,
            (annotation.height + annotation.height % 2),
        )
        stream.pix_fmt = "yuv420p"
        for decoded in decode_frames_sequential(annotation.path, indices):
            if decoded.image is None:
                continue
            drawn = draw_tracks(decoded.image, by_index[decoded.frame_index])
            drawn = np.pad(
                drawn,
                ((0, stream.height - drawn.shape[0]), (0, stream.width - drawn.shape[1]), (0, 0)),
            )
            for packet in stream.encode(av.VideoFrame.from_ndarray(drawn, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
