"""`VideoAnnotation`: one video's tracked predictions, as MOT text or a platform's JSON.

The MOTChallenge text is written here. Platform video formats plug in through
`engine.plugins` (a `engine.plugins.VideoAnnotationFormat` per format name) and are
reached by name: ``annotation.to_format("acme")`` or ``annotation.to_acme()``, and
``VideoAnnotation.from_format("acme", data, class_names)`` or
``VideoAnnotation.from_acme(data, class_names)``; `VideoAnnotation.save` writes the
default platform's format beside the MOT text.

Example:
    >>> video = VideoAnnotation.from_predictions(tracked_frames, fps=30)  # doctest: +SKIP
    >>> video.save("out")                                               # doctest: +SKIP
    {'annotation': PosixPath('out/clip.mp4.json'), 'mot': PosixPath('out/clip.txt')}
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine import plugins
from engine.prediction import Prediction

__all__ = ["VideoAnnotation"]

_ENCODE_PREFIX = "to_"
_DECODE_PREFIX = "from_"


def _format_name(attribute: str, prefix: str) -> str | None:
    """The format name in ``<prefix><name>``, or None for any other attribute."""
    if attribute.startswith("_") or not attribute.startswith(prefix):
        return None
    return attribute[len(prefix) :] or None


def _format_for(attribute: str, prefix: str, owner: str) -> tuple[str, Any]:
    """(format name, its `engine.plugins.VideoAnnotationFormat`) named by ``attribute``.

    Raises:
        AttributeError: ``attribute`` names no installed video annotation format.
    """
    name = _format_name(attribute, prefix)
    if name is None:
        raise AttributeError(f"{owner!r} object has no attribute {attribute!r}")
    try:
        return name, plugins.video_annotation_format(name)
    except plugins.PluginError as exc:
        raise AttributeError(f"{owner!r} object has no attribute {attribute!r}: {exc}") from None


class _FormatReaders(type):
    """Metaclass giving ``VideoAnnotation.from_<format>(...)`` for every installed format."""

    def __getattr__(cls, attribute: str) -> Any:
        name, _ = _format_for(attribute, _DECODE_PREFIX, cls.__name__)
        return functools.partial(cls.from_format, name)


@dataclass
class VideoAnnotation(metaclass=_FormatReaders):
    """One video's tracked predictions, exportable as MOT text and as platform formats.

    Beyond the fields, ``to_<format>()`` and ``from_<format>(data, class_names, **fields)``
    exist for every installed video annotation format (see `to_format`, `from_format`).

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

    def tracked_frames(self) -> list[tuple[int, Prediction]]:
        """(frame index, prediction) of every frame without an error, in order.

        A frame without a ``frame_index`` takes its position in `frames`.

        Raises:
            ValueError: A frame without an error has no ``track_ids``.

        Example:
            >>> [i for i, _ in video.tracked_frames()]                   # doctest: +SKIP
            [0, 2, 4]
        """
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
        for _, prediction in self.tracked_frames():
            ids.update(int(t) for t in prediction.track_ids)
        return sorted(ids)

    def frames_count(self) -> int:
        """The video's number of frames: `num_frames`, else one past the last tracked frame.

        Example:
            >>> VideoAnnotation("clip.mp4", 64, 48, ["car"], num_frames=80).frames_count()
            80
        """
        if self.num_frames:
            return int(self.num_frames)
        return max((i for i, _ in self.tracked_frames()), default=-1) + 1

    def to_format(self, format: str | None = None) -> dict[str, Any]:  # noqa: A002
        """Return this video's annotation in the installed video format ``format``.

        Args:
            format: A video annotation format of an installed platform; None gives the
                default platform's. ``annotation.to_<format>()`` is the same call.

        Returns:
            The format's JSON-serialisable dict.

        Raises:
            engine.plugins.PluginError: No such format is installed.
            ValueError: A frame is not tracked.

        Example:
            >>> video.to_format("acme") == video.to_acme()               # doctest: +SKIP
            True
        """
        return plugins.video_annotation_format(format).encode(self)

    @classmethod
    def from_format(
        cls,
        format: str | None,  # noqa: A002
        data: dict[str, Any],
        class_names: list[str],
        /,
        **fields: Any,
    ) -> VideoAnnotation:
        """Read a video annotation in the installed video format ``format``.

        Args:
            format: A video annotation format of an installed platform; None gives the
                default platform's. ``VideoAnnotation.from_<format>(data, ...)`` is the
                same call.
            data: The format's JSON dict.
            class_names: The class list the annotation's classes index into.
            **fields: What the JSON does not hold, given to the format's decoder (e.g.
                ``name``, ``path``, ``fps``).

        Returns:
            The tracked video.

        Raises:
            engine.plugins.PluginError: No such format is installed.

        Example:
            >>> VideoAnnotation.from_format("acme", data, ["car"], fps=30)  # doctest: +SKIP
            VideoAnnotation(name='clip.mp4', ...)
        """
        return plugins.video_annotation_format(format).decode(data, class_names, **fields)

    def __getattr__(self, attribute: str) -> Any:
        if _format_name(attribute, _DECODE_PREFIX) is not None:
            return getattr(type(self), attribute)
        name, _ = _format_for(attribute, _ENCODE_PREFIX, type(self).__name__)
        return functools.partial(self.to_format, name)

    def to_mot(self) -> str:
        """Return the tracks as MOTChallenge text, one line per tracked box.

        Lines are ``frame,id,bb_left,bb_top,bb_width,bb_height,conf,-1,-1,-1`` with frame
        1-based (frame_index + 1), the box in float pixels (2 decimals, width = x2 - x1),
        conf with 4 decimals, sorted by frame then id; the text ends with a newline (empty
        without tracks). Ids are the tracker's, unchanged.
        """
        lines = []
        for index, prediction in self.tracked_frames():
            dets = prediction.detections
            order = np.argsort(dets.track_ids, kind="stable")
            for i in order:
                x1, y1, x2, y2 = (float(v) for v in dets.xyxy[i])
                lines.append(
                    f"{index + 1},{int(dets.track_ids[i])},{x1:.2f},{y1:.2f},{x2 - x1:.2f},"
                    f"{y2 - y1:.2f},{float(dets.scores[i]):.4f},-1,-1,-1"
                )
        return "".join(line + "\n" for line in lines)

    def save(
        self,
        directory: str | Path,
        format: str | None = None,  # noqa: A002
        video: bool | None = None,
    ) -> dict[str, Path]:
        """Write the platform annotation JSON, the MOT text and the tracked video.

        The directory is created if needed. The annotation file is named by its format
        (e.g. ``clip.mp4.json``), the MOT file ``<stem>.txt`` (``clip.txt``), the video
        ``<stem>_tracks.mp4`` (the frames with their boxes labelled ``id:<n> <class>``,
        as ``tessera track`` writes it).

        Args:
            directory: Where to write.
            format: The video annotation format; None gives the default platform's.
            video: Also draw and encode the tracked video: None (the default) does when
                the annotation has tracked frames of a video file that is there (one
                rebuilt from JSON elsewhere has none), True insists, False skips it.

        Returns:
            ``{"annotation": json path, "mot": txt path, "video": mp4 path}`` (no
            ``"video"`` when it was skipped).

        Raises:
            engine.plugins.PluginError: No such format (or no default) is installed.
            ValueError: ``video=True`` for an annotation without tracked frames of a local
                video file (pass ``video=False``).
        """
        writer = plugins.video_annotation_format(format)
        drawable = (
            self.path is not None
            and Path(self.path).is_file()
            and any(f.frame_index is not None for f in self.frames)
        )
        if video is None:
            video = drawable
        if video and not drawable:
            raise ValueError(
                f"{self.name}: no tracked frames of a local video to draw; "
                "pass video=False to write the annotation and MOT files only"
            )
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        base = Path(self.name).name or "video"
        stem = Path(base).stem or base
        paths = {
            "annotation": directory / Path(writer.file_name(self)).name,
            "mot": directory / f"{stem}.txt",
        }
        paths["annotation"].write_text(json.dumps(writer.encode(self)), encoding="utf-8")
        paths["mot"].write_text(self.to_mot(), encoding="utf-8")
        if video:
            from engine.tracking.rendering import write_tracked_video

            paths["video"] = write_tracked_video(self, directory / f"{stem}_tracks.mp4")
        return paths
