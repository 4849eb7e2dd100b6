"""Prediction settings: defined once, validated once at the API boundary.

A `PredictSettings` holds three frozen groups: `GeneralSettings`, `TilingSettings` and
`VideoSettings`. Each of their fields is declared with `setting`, which states in one place
its default, its check, its help text and how the CLI reads it. `SETTINGS` lists the
user-facing options read from those fields, in the order the CLI shows them; the CLI and
the server build their options from it. `validate_settings` turns the user's flat keywords
into a `PredictSettings` that inner code trusts without re-checking.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from engine import plugins
from engine.sources.decode import DEFAULT_MAX_PIXELS
from engine.sources.video import validate_frame_options

DEFAULT_BATCH_SIZE = 8
#: The IoU of ``agnostic_nms`` when no ``iou`` is given (Ultralytics' default).
DEFAULT_NMS_IOU = 0.7


@dataclass(frozen=True)
class ModelInfo:
    """What the settings need to know about the deployed model."""

    name: str
    task: str
    classes: list[str]
    default_conf: float
    input_size: tuple[int, int]

    @classmethod
    def of(cls, adapter: Any) -> ModelInfo:
        """Describe a `engine.models.base.ModelAdapter` (loaded or not).

        Example:
            >>> from engine.models.reference import ColorBoxDetector
            >>> ModelInfo.of(ColorBoxDetector()).input_size
            (512, 512)
        """
        return cls(
            name=str(adapter.name),
            task=str(adapter.task),
            classes=[str(c) for c in adapter.classes],
            default_conf=float(adapter.default_conf),
            input_size=(int(adapter.input_size[0]), int(adapter.input_size[1])),
        )

    def to_json(self) -> dict[str, Any]:
        """Return the description as JSON values (`from_json` reads it back).

        Example:
            >>> ModelInfo("m", "detection", ["cat"], 0.5, (640, 480)).to_json()["input_size"]
            [640, 480]
        """
        return {
            "name": self.name,
            "task": self.task,
            "classes": list(self.classes),
            "default_conf": self.default_conf,
            "input_size": list(self.input_size),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelInfo:
        """Read the description back from `to_json`'s dict; other keys are ignored.

        Example:
            >>> info = ModelInfo("m", "detection", ["cat"], 0.5, (640, 480))
            >>> ModelInfo.from_json({**info.to_json(), "device": "cpu"}) == info
            True
        """
        height, width = data["input_size"]
        return cls(
            name=str(data["name"]),
            task=str(data["task"]),
            classes=[str(c) for c in data["classes"]],
            default_conf=float(data["default_conf"]),
            input_size=(int(height), int(width)),
        )


# --------------------------------------------------------------------------- checks
#: ``check(name, value)``: returns the checked value or raises ValueError naming ``name``.
Check = Callable[[str, Any], Any]


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


def _check_max_det(name: str, value: Any) -> int | None:
    return None if value is None else _number(name, value, 1, 1_000_000, integer=True)


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


def _checked_with_its_group(name: str, value: Any) -> Any:
    """Checked later, with the other video fields (see `validate_frame_options`)."""
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


def _choice(*choices: str) -> Check:
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


# --------------------------------------------------------------------------- fields
_DECLARED = "tessera.setting"  # the metadata key of a field declared with `setting`


@dataclass(frozen=True)
class _Declared:
    """What `setting` records about a field besides its default."""

    help: str
    check: Check
    cli_type: Callable[[str], Any] | None
    cli_flag: bool
    option: str | None


def setting(
    default: Any = MISSING,
    *,
    help: str,
    check: Check,
    cli_type: Callable[[str], Any] | None = None,
    cli_flag: bool = False,
    option: str | None = None,
) -> Any:
    """Declare a settings field: its default, check, help and CLI reading in one place.

    Args:
        default: The value when the option is not given. Leave it out for a value resolved
            from the model (``conf``); the option's default is then None.
        help: Help text; `SETTINGS` adds " (default X)" for a default other than None or a
            boolean.
        check: Called as ``check(option, value)``; returns the checked value or raises
            ValueError.
        cli_type: Reads the CLI's (or a query string's) text into a value; None keeps the text.
        cli_flag: The CLI spells the option as a flag that takes no value.
        option: The keyword's name when it differs from the field's (``classes`` for the
            ``class_idxs`` field).

    Returns:
        A `dataclasses.field` carrying the declaration in its metadata.

    Example:
        >>> @dataclass(frozen=True)
        ... class Knobs:
        ...     depth: int = setting(3, help="how deep", check=_check_batch_size, cli_type=int)
        >>> [(spec.name, spec.help) for spec in _specs_of("knobs", Knobs)]
        [('depth', 'how deep (default 3)')]
    """
    declared = _Declared(help, check, cli_type, cli_flag, option)
    return field(default=default, metadata={_DECLARED: declared})


@dataclass(frozen=True)
class GeneralSettings:
    """Settings of every prediction.

    Attributes:
        conf: Keep objects scoring at least this (the model's default when not given).
        batch_size: Images per model forward pass.
        img_size: (height, width) every image is resized to before the model; None keeps
            the original size. Results always come back in original-image pixels.
        letterbox: With ``img_size``: keep the aspect ratio, scaling the image to fit and
            padding the rest with gray (114), as Ultralytics does; False (the default)
            stretches it to ``img_size``.
        class_idxs: Class indices to keep, or None for all (the ``classes`` option names
            them).
        recursive: Descend into subdirectories of directory inputs.
        progress: Show a progress bar.
        max_pixels: Refuse images with more pixels than this (decompression bombs).
        url_timeout: Seconds to wait for a URL before giving up on it.
        iou: Suppress a box overlapping a better-scoring box of its class by at least
            this IoU, after the model (Ultralytics' ``iou``); None: the model's own NMS
            alone (torchvision's detectors run theirs at 0.5, so ``iou`` can only
            suppress more).
        agnostic_nms: Suppress across classes too (at ``iou``, or `DEFAULT_NMS_IOU`).
        max_det: Keep at most this many objects per image, the best-scoring; None: all.
    """

    conf: float = setting(
        help="minimum score to keep (default: the model's)", check=_check_conf, cli_type=float
    )
    batch_size: int = setting(
        DEFAULT_BATCH_SIZE, help="images per model batch", check=_check_batch_size, cli_type=int
    )
    img_size: tuple[int, int] | None = setting(
        None,
        help="resize to N (square) or H,W before the model; boxes stay in original pixels",
        check=_check_img_size,
        cli_type=_parse_img_size,
    )
    letterbox: bool = setting(
        False,
        help="with --img-size: keep the aspect ratio and pad (default: stretch)",
        check=_check_bool,
        cli_flag=True,
    )
    class_idxs: tuple[int, ...] | None = setting(
        None,
        help="keep only these class names (comma separated on the CLI)",
        check=_check_classes,
        cli_type=_parse_classes,
        option="classes",
    )
    recursive: bool = setting(
        False, help="descend into subdirectories", check=_check_bool, cli_flag=True
    )
    progress: bool = setting(True, help="show a progress bar", check=_check_bool)
    max_pixels: int = setting(
        DEFAULT_MAX_PIXELS,
        help="refuse images above this many pixels",
        check=_check_max_pixels,
        cli_type=int,
    )
    url_timeout: float = setting(
        30.0, help="seconds to wait for a URL", check=_check_timeout, cli_type=float
    )
    iou: float | None = setting(
        None,
        help="suppress a box overlapping a better one of its class by this IoU, after the model",
        check=_check_conf,
        cli_type=float,
    )
    agnostic_nms: bool = setting(
        False,
        help="suppress overlapping boxes across classes too",
        check=_check_bool,
        cli_flag=True,
    )
    max_det: int | None = setting(
        None, help="keep at most this many objects per image", check=_check_max_det, cli_type=int
    )


@dataclass(frozen=True)
class TilingSettings:
    """How large images are cut into tiles and the tiles' objects merged.

    Attributes:
        sliding_window: Predict each image in overlapping tiles and merge the results.
        window_size: Tile (height, width); resolved to the model's input size when not
            given. A window larger than the image shrinks to it.
        overlap: Tile overlap: a float in [0, 1) is a fraction of the window, an int pixels.
        merge: How tiles' objects are merged: "nms", "nmm", "greedy_nmm" or "none"
            (default greedy NMM on IoS at 0.5, as SAHI's own default).
        merge_metric: "iou" or "ios" (intersection over the smaller box).
        merge_threshold: Overlap at which two objects are the same object.
        class_agnostic: Merge objects across classes.
        full_image: Also predict the whole image and merge it with the tiles.
        sahi_compatible: Merge exactly as SAHI does (score order only, no recognition of
            an object's pieces across tiles; see `engine.tiling.merge_detections`), to
            reproduce SAHI's output. By default whole boxes rank above pieces that an
            inner tile edge cuts, and each object is found once.
    """

    sliding_window: bool = setting(
        False, help="predict in overlapping tiles and merge", check=_check_bool, cli_flag=True
    )
    window_size: tuple[int, int] | None = setting(
        None,
        help="tile size N or H,W (default: the model's input size)",
        check=_check_img_size,
        cli_type=_parse_img_size,
    )
    overlap: float | int = setting(
        0.2,
        help="tile overlap: a fraction in [0, 1) or pixels",
        check=_check_overlap,
        cli_type=_parse_overlap,
    )
    merge: str = setting(
        "greedy_nmm",
        help="merge tiles' objects: nms, nmm, greedy_nmm or none",
        check=_choice("nms", "nmm", "greedy_nmm", "none"),
        cli_type=str,
    )
    merge_metric: str = setting(
        "ios", help="overlap measure: iou or ios", check=_choice("iou", "ios"), cli_type=str
    )
    merge_threshold: float = setting(
        0.5, help="overlap at which objects merge", check=_check_fraction, cli_type=float
    )
    class_agnostic: bool = setting(
        False, help="merge across classes", check=_check_bool, cli_flag=True
    )
    full_image: bool = setting(
        False, help="also predict the whole image and merge it in", check=_check_bool, cli_flag=True
    )
    sahi_compatible: bool = setting(
        False,
        help="merge exactly as SAHI does (score order only, no piece recognition)",
        check=_check_bool,
        cli_flag=True,
    )


@dataclass(frozen=True)
class VideoSettings:
    """Which frames of each video to predict (see `engine.sources.video.select_frames`).

    Attributes:
        stride: Predict every ``stride``-th frame of a video.
        start_frame: First video frame to consider.
        end_frame: Video frame to stop before (exclusive), or None.
        num_frames: Most video frames to predict (after the stride), or None.
        duration: Seconds of video to predict from ``start_frame``, or None.
    """

    stride: int = setting(
        1, help="videos: predict every N-th frame", check=_checked_with_its_group, cli_type=int
    )
    start_frame: int = setting(
        0, help="videos: first frame", check=_checked_with_its_group, cli_type=int
    )
    end_frame: int | None = setting(
        None,
        help="videos: stop before this frame (exclusive)",
        check=_checked_with_its_group,
        cli_type=int,
    )
    num_frames: int | None = setting(
        None, help="videos: most frames to predict", check=_checked_with_its_group, cli_type=int
    )
    duration: float | None = setting(
        None,
        help="videos: seconds to predict from start_frame",
        check=_checked_with_its_group,
        cli_type=float,
    )


@dataclass(frozen=True)
class PredictSettings:
    """Validated settings of one `predict` call, in groups.

    Attributes:
        general: Confidence, batching, resizing, class filter, input handling.
        tiling: Sliding-window prediction and merging.
        video: Video frame selection.

    Example:
        >>> settings = PredictSettings(GeneralSettings(conf=0.3), video=VideoSettings(stride=2))
        >>> settings.general.batch_size, settings.tiling.overlap, settings.video.stride
        (8, 0.2, 2)
    """

    general: GeneralSettings
    tiling: TilingSettings = field(default_factory=TilingSettings)
    video: VideoSettings = field(default_factory=VideoSettings)

    def describe(self, classes: Sequence[str]) -> dict[str, Any]:
        """Return the settings as one flat JSON-friendly dict, with class names for indices.

        Args:
            classes: The model's class names.

        Returns:
            Every field of every group by name, ``class_idxs`` replaced by ``classes``.

        Example:
            >>> PredictSettings(GeneralSettings(conf=0.3, class_idxs=(1,))).describe(
            ...     ["cat", "dog"])["classes"]
            ['dog']
        """
        out: dict[str, Any] = {}
        for group in fields(self):
            values = getattr(self, group.name)
            out.update((f.name, getattr(values, f.name)) for f in fields(values))
        class_idxs = out.pop("class_idxs")
        out["classes"] = None if class_idxs is None else sorted({classes[i] for i in class_idxs})
        return out


# --------------------------------------------------------------------------- options
@dataclass(frozen=True)
class SettingSpec:
    """One user-facing option of `predict`, read from the settings field it fills.

    Attributes:
        name: The keyword (``classes``); the CLI flag is ``--`` + name with dashes.
        group: The `PredictSettings` group holding the field: "general", "tiling", "video".
        attribute: The field within that group (``class_idxs``).
        help: Help text for the CLI and the API docs, ending with the default if shown.
        default: The value when the keyword is not given; None where the model decides
            (``conf``, ``window_size``) or where None is the value.
        check: ``check(name, value)`` returns the checked value or raises ValueError.
        cli_type: Reads the CLI's text into a value (None: the text itself).
        cli_flag: The CLI spells it as a flag that takes no value.
    """

    name: str
    group: str
    attribute: str
    help: str
    default: Any
    check: Check
    cli_type: Callable[[str], Any] | None = None
    cli_flag: bool = False


def _help(text: str, default: Any) -> str:
    """The help text, with the default unless it is None or a flag's (a boolean)."""
    if default is None or isinstance(default, bool):
        return text
    shown = f"{default:g}" if isinstance(default, float) else str(default)
    return f"{text} (default {shown})"


def _specs_of(group: str, settings_type: type) -> tuple[SettingSpec, ...]:
    """The options of a settings group, one per field, in field order."""
    specs = []
    for f in fields(settings_type):
        declared: _Declared = f.metadata[_DECLARED]
        default = None if f.default is MISSING else f.default
        specs.append(
            SettingSpec(
                name=declared.option or f.name,
                group=group,
                attribute=f.name,
                help=_help(declared.help, default),
                default=default,
                check=declared.check,
                cli_type=declared.cli_type,
                cli_flag=declared.cli_flag,
            )
        )
    return tuple(specs)


#: The groups of `PredictSettings`, by attribute name, in the order the CLI lists them.
_GROUPS: dict[str, type] = {
    "general": GeneralSettings,
    "tiling": TilingSettings,
    "video": VideoSettings,
}

#: Every option of `predict`, in the order the CLI lists them.
SETTINGS: tuple[SettingSpec, ...] = tuple(
    spec for group, settings_type in _GROUPS.items() for spec in _specs_of(group, settings_type)
)

_SPECS = {spec.name: spec for spec in SETTINGS}


# --------------------------------------------------------------------------- validation
def validate_settings(options: dict[str, Any], model: ModelInfo) -> PredictSettings:
    """Check the keywords of a `predict` call and resolve them against the model.

    Args:
        options: The keywords the user passed (besides ``input``), flat: ``conf``,
            ``window_size``, ``stride``... (see `SETTINGS`).
        model: The deployed model's description.

    Returns:
        The frozen, validated settings.

    Raises:
        TypeError: An unknown keyword (the message lists the valid ones).
        ValueError: A value of the wrong type or range, or an unknown class name (the
            message lists the model's classes).

    Example:
        >>> info = ModelInfo("m", "detection", ["cat", "dog"], 0.5, (640, 640))
        >>> validate_settings({"classes": ["dog"], "img_size": 320}, info).general.class_idxs
        (1,)
    """
    # 1) each value on its own, and the frame options together; 2) those that depend on
    #    the model
    values = _values_on_their_own(options)
    if values["class_idxs"] is not None:
        values["class_idxs"] = _class_indices(values["class_idxs"], model.classes)
    values["window_size"] = values["window_size"] or tuple(model.input_size)
    if values["sliding_window"]:
        _check_overlap_fits(values["overlap"], values["window_size"])
    if values["conf"] is None:
        values["conf"] = model.default_conf
    values["batch_size"] = values["batch_size"] or DEFAULT_BATCH_SIZE
    if values["duration"] is not None:
        values["duration"] = float(values["duration"])
    # 3) the groups
    groups = {
        group: settings_type(**{f.name: values[f.name] for f in fields(settings_type)})
        for group, settings_type in _GROUPS.items()
    }
    return PredictSettings(**groups)


def check_settings(options: dict[str, Any]) -> None:
    """Refuse, without the model, what `validate_settings` would refuse of ``options``.

    Unknown keywords, values of the wrong type or range, and video frame options that
    contradict each other are refused here; class names (the model's) are checked by
    `validate_settings`. The CLI calls this before it starts Ray or loads a model.

    Raises:
        TypeError: An unknown keyword.
        ValueError: A value wrong on its own.

    Example:
        >>> check_settings({"conf": 0.3, "merge": "nms"})
        >>> check_settings({"conf": 2})
        Traceback (most recent call last):
        ...
        ValueError: conf must be between 0.0 and 1.0, got 2
    """
    _values_on_their_own(options)


def _values_on_their_own(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(_SPECS))
    if unknown:
        inputs = ", ".join(sorted(plugins.input_keywords())) or "none installed"
        raise TypeError(
            f"predict() got unknown option(s) {', '.join(unknown)}; "
            f"valid options are: {', '.join(_SPECS)}; platform inputs: {inputs}"
        )
    values = {
        spec.attribute: spec.check(spec.name, options.get(spec.name, spec.default))
        for spec in SETTINGS
    }
    if values["letterbox"] and values["img_size"] is None:
        raise ValueError("letterbox=True needs img_size (the size to fit the image into)")
    if values["letterbox"] and values["sliding_window"]:
        raise ValueError(
            "letterbox applies to whole images; with sliding_window, img_size resizes the "
            "image before it is cut into tiles"
        )
    validate_frame_options(**{f.name: values[f.name] for f in fields(VideoSettings)})
    return values


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
