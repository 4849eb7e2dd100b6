"""Prediction settings: defined once, validated once at the API boundary.

`SETTINGS` describes every option `predict` accepts (its default, its check and its help
text); the CLI builds its options from the same list. `validate_settings` turns the user's
keywords into a frozen `PredictSettings` that inner code trusts without re-checking.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from engine.sources.decode import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from engine.sources.video_items import FrameOptions

DEFAULT_BATCH_SIZE = 8


@dataclass(frozen=True)
class ModelInfo:
    """What the settings need to know about the deployed model."""

    name: str
    task: str
    classes: list[str]
    default_conf: float
    input_size: tuple[int, int]


@dataclass(frozen=True)
class PredictSettings:
    """Validated settings of one `predict` call.

    Attributes:
        conf: Keep objects scoring at least this (the model's default when not given).
        batch_size: Images per model forward pass.
        img_size: (height, width) every image is resized to before the model; None keeps
            the original size. Results always come back in original-image pixels.
        class_idxs: Class indices to keep, or None for all.
        recursive: Descend into subdirectories of directory inputs.
        progress: Show a progress bar.
        max_pixels: Refuse images with more pixels than this (decompression bombs).
        url_timeout: Seconds to wait for a URL before giving up on it.
        sliding_window: Predict each image in overlapping tiles and merge the results.
        window_size: Tile (height, width); resolved to the model's input size when not
            given. A window larger than the image shrinks to it.
        overlap: Tile overlap: a float in [0, 1) is a fraction of the window, an int pixels.
        merge: How tiles' objects are merged: "nms", "nmm", "greedy_nmm" or "none".
        merge_metric: "iou" or "ios" (intersection over the smaller box).
        merge_threshold: Overlap at which two objects are the same object.
        class_agnostic: Merge objects across classes.
        full_image: Also predict the whole image and merge it with the tiles.
        stride: Predict every ``stride``-th frame of a video.
        start_frame: First video frame to consider.
        end_frame: Video frame to stop before (exclusive), or None.
        num_frames: Most video frames to predict (after the stride), or None.
        duration: Seconds of video to predict from ``start_frame``, or None.
    """

    conf: float
    batch_size: int = DEFAULT_BATCH_SIZE
    img_size: tuple[int, int] | None = None
    class_idxs: tuple[int, ...] | None = None
    recursive: bool = False
    progress: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS
    url_timeout: float = 30.0
    sliding_window: bool = False
    window_size: tuple[int, int] | None = None
    overlap: float | int = 0.2
    merge: str = "nms"
    merge_metric: str = "iou"
    merge_threshold: float = 0.5
    class_agnostic: bool = False
    full_image: bool = False
    stride: int = 1
    start_frame: int = 0
    end_frame: int | None = None
    num_frames: int | None = None
    duration: float | None = None

    @property
    def frames(self) -> FrameOptions:
        """The video frame selection these settings ask for."""
        from engine.sources.video_items import FrameOptions

        return FrameOptions(
            self.stride, self.start_frame, self.end_frame, self.num_frames, self.duration
        )

    def describe(self, classes: Sequence[str]) -> dict[str, Any]:
        """Return the settings as a JSON-friendly dict with class names instead of indices."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "class_idxs"}
        out["classes"] = (
            None if self.class_idxs is None else sorted({classes[i] for i in self.class_idxs})
        )
        return out


@dataclass(frozen=True)
class SettingSpec:
    """One user-facing option: how to check it and how the CLI spells it."""

    name: str
    help: str
    default: Any
    check: Callable[[str, Any], Any]
    cli_type: Callable[[str], Any] | None = None
    cli_flag: bool = False


def _number(name: str, value: Any, low: float, high: float, integer: bool) -> Any:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        want = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {want}, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value!r}")
    return value


def _check_conf(name: str, value: Any) -> float | None:
    return None if value is None else float(_number(name, value, 0.0, 1.0, integer=False))


def _check_batch_size(name: str, value: Any) -> int | None:
    return None if value is None else _number(name, value, 1, 4096, integer=True)


def _check_img_size(name: str, value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, (int,)) and not isinstance(value, bool):
        value = (value, value)
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name} must be an int or a (height, width) pair, got {value!r}")
    h, w = (_number(name, v, 1, 100_000, integer=True) for v in value)
    return (h, w)


def _check_classes(name: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple, set)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name} must be a list of class names, got {value!r}")
    if not value:
        raise ValueError(f"{name} must name at least one class")
    return tuple(value)


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def _check_any(name: str, value: Any) -> Any:
    """Checked later, together (see `_check_frame_options`)."""
    return value


def _check_max_pixels(name: str, value: Any) -> int:
    return _number(name, value, 1, 10**12, integer=True)


def _check_timeout(name: str, value: Any) -> float:
    return float(_number(name, value, 0.001, 86_400, integer=False))


def _check_overlap(name: str, value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a fraction in [0, 1) or pixels (int), got {value!r}")
    if isinstance(value, float):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} as a fraction must be in [0, 1), got {value!r}")
        return value
    if value < 0:
        raise ValueError(f"{name} in pixels must not be negative, got {value!r}")
    return value


def _choice(*choices: str) -> Callable[[str, Any], str]:
    def check(name: str, value: Any) -> str:
        if value not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
        return value

    return check


def _check_fraction(name: str, value: Any) -> float:
    return float(_number(name, value, 0.0, 1.0, integer=False))


def _parse_overlap(text: str) -> float | int:
    return float(text) if any(c in text for c in ".eE") else int(text)


def _parse_img_size(text: str) -> int | tuple[int, int]:
    parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
    if len(parts) == 1:
        return int(parts[0])
    if len(parts) == 2:
        return (int(parts[0]), int(parts[1]))
    raise ValueError(f"--img-size takes N or H,W, got {text!r}")


def _parse_classes(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


#: Every option of `predict`, in the order the CLI lists them.
SETTINGS: tuple[SettingSpec, ...] = (
    SettingSpec("conf", "minimum score to keep (default: the model's)", None, _check_conf, float),
    SettingSpec(
        "batch_size",
        f"images per model batch (default {DEFAULT_BATCH_SIZE})",
        None,
        _check_batch_size,
        int,
    ),
    SettingSpec(
        "img_size",
        "resize to N (square) or H,W before the model; boxes stay in original pixels",
        None,
        _check_img_size,
        _parse_img_size,
    ),
    SettingSpec(
        "classes",
        "keep only these class names (comma separated on the CLI)",
        None,
        _check_classes,
        _parse_classes,
    ),
    SettingSpec("recursive", "descend into subdirectories", False, _check_bool, cli_flag=True),
    SettingSpec("progress", "show a progress bar", True, _check_bool),
    SettingSpec(
        "max_pixels",
        f"refuse images above this many pixels (default {DEFAULT_MAX_PIXELS})",
        DEFAULT_MAX_PIXELS,
        _check_max_pixels,
        int,
    ),
    SettingSpec(
        "url_timeout", "seconds to wait for a URL (default 30)", 30.0, _check_timeout, float
    ),
    SettingSpec(
        "sliding_window",
        "predict in overlapping tiles and merge",
        False,
        _check_bool,
        cli_flag=True,
    ),
    SettingSpec(
        "window_size",
        "tile size N or H,W (default: the model's input size)",
        None,
        _check_img_size,
        _parse_img_size,
    ),
    SettingSpec(
        "overlap",
        "tile overlap: a fraction in [0, 1) or pixels (default 0.2)",
        0.2,
        _check_overlap,
        _parse_overlap,
    ),
    SettingSpec(
        "merge",
        "merge tiles' objects: nms, nmm, greedy_nmm or none (default nms)",
        "nms",
        _choice("nms", "nmm", "greedy_nmm", "none"),
        str,
    ),
    SettingSpec(
        "merge_metric",
        "overlap measure: iou or ios (default iou)",
        "iou",
        _choice("iou", "ios"),
        str,
    ),
    SettingSpec(
        "merge_threshold",
        "overlap at which objects merge (default 0.5)",
        0.5,
        _check_fraction,
        float,
    ),
    SettingSpec("class_agnostic", "merge across classes", False, _check_bool, cli_flag=True),
    SettingSpec(
        "full_image",
        "also predict the whole image and merge it in",
        False,
        _check_bool,
        cli_flag=True,
    ),
    SettingSpec("stride", "videos: predict every N-th frame (default 1)", 1, _check_any, int),
    SettingSpec("start_frame", "videos: first frame (default 0)", 0, _check_any, int),
    SettingSpec("end_frame", "videos: stop before this frame (exclusive)", None, _check_any, int),
    SettingSpec("num_frames", "videos: most frames to predict", None, _check_any, int),
    SettingSpec("duration", "videos: seconds to predict from start_frame", None, _check_any, float),
)

_SPECS = {spec.name: spec for spec in SETTINGS}


def validate_settings(options: dict[str, Any], model: ModelInfo) -> PredictSettings:
    """Check the keywords of a `predict` call and resolve them against the model.

    Args:
        options: The keywords the user passed (besides ``input``).
        model: The deployed model's description.

    Returns:
        The frozen, validated settings.

    Raises:
        TypeError: An unknown keyword (the message lists the valid ones).
        ValueError: A value of the wrong type or range, or an unknown class name (the
            message lists the model's classes).

    Example:
        >>> info = ModelInfo("m", "detection", ["cat", "dog"], 0.5, (640, 640))
        >>> validate_settings({"classes": ["dog"], "img_size": 320}, info).class_idxs
        (1,)
    """
    unknown = sorted(set(options) - set(_SPECS))
    if unknown:
        raise TypeError(
            f"predict() got unknown option(s) {', '.join(unknown)}; "
            f"valid options are: {', '.join(_SPECS)}"
        )
    values = {
        name: spec.check(name, options.get(name, spec.default)) for name, spec in _SPECS.items()
    }
    class_idxs = None
    if values["classes"] is not None:
        class_idxs = _class_indices(values["classes"], model.classes)
    _check_frame_options(values)
    window = values["window_size"] or tuple(model.input_size)
    if values["sliding_window"]:
        _check_overlap_fits(values["overlap"], window)
    return PredictSettings(
        sliding_window=values["sliding_window"],
        window_size=window,
        overlap=values["overlap"],
        merge=values["merge"],
        merge_metric=values["merge_metric"],
        merge_threshold=values["merge_threshold"],
        class_agnostic=values["class_agnostic"],
        full_image=values["full_image"],
        conf=model.default_conf if values["conf"] is None else values["conf"],
        batch_size=values["batch_size"] or DEFAULT_BATCH_SIZE,
        img_size=values["img_size"],
        class_idxs=class_idxs,
        recursive=values["recursive"],
        progress=values["progress"],
        max_pixels=values["max_pixels"],
        url_timeout=values["url_timeout"],
        stride=values["stride"],
        start_frame=values["start_frame"],
        end_frame=values["end_frame"],
        num_frames=values["num_frames"],
        duration=None if values["duration"] is None else float(values["duration"]),
    )


def _check_frame_options(values: dict[str, Any]) -> None:
    from engine.sources.video import validate_frame_options

    validate_frame_options(
        stride=values["stride"],
        start_frame=values["start_frame"],
        end_frame=values["end_frame"],
        num_frames=values["num_frames"],
        duration=values["duration"],
    )


def _check_overlap_fits(overlap: float | int, window: tuple[int, int]) -> None:
    if isinstance(overlap, int) and overlap >= min(window):
        raise ValueError(
            f"overlap of {overlap} pixels must be smaller than the window {window[0]}x{window[1]}"
        )


def _class_indices(names: Sequence[str], classes: Sequence[str]) -> tuple[int, ...]:
    missing = [n for n in names if n not in classes]
    if missing:
        valid = [c for c in dict.fromkeys(classes) if c not in ("__background__", "N/A")]
        raise ValueError(
            f"unknown class name(s) {', '.join(map(repr, missing))}; "
            f"this model's classes are: {', '.join(valid)}"
        )
    wanted = set(names)
    return tuple(i for i, c in enumerate(classes) if c in wanted)
