"""The JSON the prediction server speaks: predictions out, settings in, errors.

A prediction travels as `engine.prediction_json.prediction_to_json` writes it, rounded
(coordinates to 2 decimals, scores to 4), every key always present::

    {"index": 0, "name": "a.png", "source": "upload", "path": null, "url": null,
     "dataset": null, "frame_index": null, "timestamp": null,
     "width": 640, "height": 480, "error": null,
     "latency_ms": 11.8,                      # the model's time for this image
     "boxes": [[x1, y1, x2, y2], ...],        # original-image pixels, x2/y2 exclusive
     "scores": [0.98, ...], "class_idxs": [2, ...], "classes": ["car", ...],
     "masks": [{"size": [h, w], "counts": "<COCO RLE string>"}, ...] | null,
     "keypoints": [[[x, y, score], ...], ...] | null, "num_keypoints": K | null,
     "track_ids": [...] | null,
     "annotation": {...}}                     # only with annotation=true (null on errors)

The model's task and class names are given once per response, beside the predictions;
`engine.prediction_json.prediction_from_json` rebuilds a `Prediction` from both.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from engine import prediction_json
from engine.prediction import Prediction
from engine.settings import SETTINGS

#: Settings a request may give (`engine.settings.SETTINGS` less the ones without meaning
#: on a server: progress bars and directory recursion).
SERVE_SETTINGS: tuple[str, ...] = tuple(
    spec.name for spec in SETTINGS if spec.name not in ("progress", "recursive")
)

_SPECS = {spec.name: spec for spec in SETTINGS if spec.name in SERVE_SETTINGS}
_BOOL_SETTINGS = {spec.name for spec in SETTINGS if spec.cli_flag}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class ApiError(Exception):
    """An error the server answers with ``{"error": message}`` and an HTTP status.

    Args:
        status: The HTTP status code (400, 401, 404, 413, 415, 503...).
        message: What went wrong, for the client.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_bool(name: str, text: str) -> bool:
    """Read a query parameter as a boolean ("true"/"false", "1"/"0", "yes"/"no").

    Raises:
        ApiError: 400 for any other text.

    Example:
        >>> parse_bool("annotation", "True"), parse_bool("annotation", "0")
        (True, False)
    """
    lowered = text.strip().lower()
    if lowered in _TRUE or lowered == "":
        return True
    if lowered in _FALSE:
        return False
    raise ApiError(400, f"{name} must be true or false, got {text!r}")


def settings_from_query(
    params: Iterable[tuple[str, str]], extra: Iterable[str] = ()
) -> tuple[dict[str, Any], dict[str, str]]:
    """Split query parameters into settings (typed like the CLI reads them) and the rest.

    Args:
        params: The query's (name, value) pairs, repeated names included.
        extra: Other names the endpoint accepts (returned as text, not as settings).

    Returns:
        ``(settings, others)``: the settings as values `validate_settings` checks, and
        the other accepted parameters as text.

    Raises:
        ApiError: 400 for an unknown name, a repeated one (``classes`` may repeat), or a
            value that cannot be read; the message names the parameter.

    Example:
        >>> settings_from_query([("conf", "0.3"), ("classes", "red,blue"), ("name", "a")],
        ...                     extra=["name"])
        ({'conf': 0.3, 'classes': ['red', 'blue']}, {'name': 'a'})
    """
    extra = tuple(extra)
    settings: dict[str, Any] = {}
    others: dict[str, str] = {}
    for name, text in params:
        if name in extra:
            if name in others:
                raise ApiError(400, f"query parameter {name!r} is given more than once")
            others[name] = text
            continue
        spec = _SPECS.get(name)
        if spec is None:
            valid = ", ".join([*SERVE_SETTINGS, *extra])
            raise ApiError(400, f"unknown query parameter {name!r}; valid ones are: {valid}")
        if name in settings and name != "classes":
            raise ApiError(400, f"query parameter {name!r} is given more than once")
        try:
            if name in _BOOL_SETTINGS:
                value: Any = parse_bool(name, text)
            elif spec.cli_type is not None:
                value = spec.cli_type(text)
            else:
                value = text
        except ValueError as exc:
            raise ApiError(400, f"setting {name}: cannot read {text!r}: {exc}") from exc
        if name == "classes" and name in settings:
            value = [*settings[name], *value]
        settings[name] = value
    return settings, others


def check_setting_names(settings: Any, where: str = "settings") -> dict[str, Any]:
    """Check that a JSON ``settings`` object names only settings a request may give.

    Raises:
        ApiError: 400 when it is not an object or names an unknown setting.

    Example:
        >>> check_setting_names({"conf": 0.2})
        {'conf': 0.2}
    """
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise ApiError(400, f"{where} must be a JSON object, got {type(settings).__name__}")
    unknown = sorted(set(settings) - set(SERVE_SETTINGS))
    if unknown:
        raise ApiError(
            400,
            f"unknown setting(s) {', '.join(map(repr, unknown))} in {where}; "
            f"valid settings are: {', '.join(SERVE_SETTINGS)}",
        )
    return dict(settings)


def prediction_to_json(prediction: Prediction, annotation: bool = False) -> dict[str, Any]:
    """Return a prediction as the server's JSON (see the module docstring).

    Args:
        prediction: The prediction.
        annotation: Add its annotation in the default platform format under
            ``"annotation"``.

    Example:
        >>> from engine.detections import Detections
        >>> p = Prediction(Detections.empty(), ["cat"], name="a.png", width=4, height=3)
        >>> payload = prediction_to_json(p)
        >>> payload["boxes"], payload["masks"], payload["width"], "class_names" in payload
        ([], None, 4, False)
    """
    out = prediction_json.prediction_to_json(prediction, rounded=True, self_contained=False)
    if annotation:
        out["annotation"] = prediction.annotation if prediction.error is None else None
    return out
