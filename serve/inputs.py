"""Request bodies -> the images they carry and the settings they ask for.

`parse_predict_request` and `parse_session_request` are pure: they read a body that was
already read under the size limit, and raise `ApiError` (400 or 415) naming what is wrong.
`fetch_inputs` downloads the URL inputs under the server's URL policy, and
`decode_inputs` turns every input into an RGB array under the pixel limit.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np

from engine.sources.decode import ImageLoadError, decode_image_bytes
from serve.multipart import FormPart, MultipartError, parse_multipart
from serve.schema import ApiError, check_setting_names, parse_bool, settings_from_query
from serve.security import UnsafeURLError, URLFetchError, URLPolicy, fetch_url_safely

#: Form fields that carry files.
FILE_FIELDS = ("file", "files")
#: Query parameters of ``POST /predict`` that are not settings.
PREDICT_QUERY = ("annotation", "name")
#: Query parameters of ``POST /sessions`` that are not settings.
SESSION_QUERY = ("ordered",)

_PREDICT_KEYS = ("url", "image_base64", "name", "images", "settings", "annotation")
_SESSION_KEYS = ("inputs", "settings", "ordered")
_ITEM_KEYS = ("url", "image_base64", "name")


@dataclass(frozen=True)
class ImageInput:
    """One input of a request: bytes sent with it, or a URL to fetch.

    Attributes:
        name: What the prediction is called (file name, URL's last part, ``image_3``).
        data: The encoded file, when it came in the request.
        url: The http(s) URL to fetch, otherwise.
    """

    name: str
    data: bytes | None = None
    url: str | None = None

    @property
    def source(self) -> str:
        """Where the input comes from: "url" for fetched inputs, else "upload"."""
        return "url" if self.url is not None else "upload"


@dataclass
class ParsedRequest:
    """What a request asks for.

    Attributes:
        inputs: The images (or videos, for sessions), in order.
        options: Settings, unvalidated (query parameters, then the JSON ``settings``).
        annotation: Add each prediction's annotation (the default platform format).
        ordered: Sessions: hand results out in input order.
    """

    inputs: list[ImageInput] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    annotation: bool = False
    ordered: bool = True


def media_type(content_type: str | None) -> str:
    """The bare, lower-case media type of a ``Content-Type`` header ("" when absent).

    Example:
        >>> media_type("Multipart/Form-Data; boundary=x")
        'multipart/form-data'
    """
    return (content_type or "").split(";")[0].strip().lower()


def parse_predict_request(
    body: bytes, content_type: str | None, query: Iterable[tuple[str, str]]
) -> ParsedRequest:
    """Read a ``POST /predict`` request.

    The body is the image itself (``image/*``, ``application/octet-stream`` or no type),
    form data with files under ``file``/``files`` (and an optional JSON ``settings``
    field), or JSON: ``{"url"}``, ``{"image_base64"}`` or ``{"images": [...]}``, with
    optional ``"name"``, ``"settings"`` and ``"annotation"``.

    Raises:
        ApiError: 400 for malformed bodies, unknown fields and unreadable settings;
            415 for another content type.

    Example:
        >>> parsed = parse_predict_request(b"PNG...", "image/png", [("conf", "0.2")])
        >>> parsed.inputs[0].name, parsed.options
        ('image', {'conf': 0.2})
    """
    options, others = settings_from_query(query, PREDICT_QUERY)
    parsed = ParsedRequest(options=options)
    if "annotation" in others:
        parsed.annotation = parse_bool("annotation", others["annotation"])
    kind = media_type(content_type)
    if kind == "multipart/form-data":
        if "name" in others:
            raise ApiError(400, "query parameter 'name' only names a raw-body image")
        parsed.inputs = _form_inputs(body, content_type or "", parsed)
    elif kind == "application/json" or kind.endswith("+json"):
        if "name" in others:
            raise ApiError(400, "query parameter 'name' only names a raw-body image")
        payload = _json_object(body, _PREDICT_KEYS)
        parsed.options.update(check_setting_names(payload.get("settings")))
        if "annotation" in payload:
            parsed.annotation = _json_bool(payload["annotation"], "annotation")
        parsed.inputs = _json_predict_inputs(payload)
    elif kind in ("", "application/octet-stream") or kind.startswith("image/"):
        if not body:
            raise ApiError(400, "the request body is empty: send an image")
        parsed.inputs = [ImageInput(others.get("name") or "image", data=body)]
    else:
        raise ApiError(
            415,
            f"unsupported Content-Type {kind!r}: send an image (image/*, "
            "application/octet-stream), multipart/form-data or application/json",
        )
    return parsed


def parse_session_request(
    body: bytes, content_type: str | None, query: Iterable[tuple[str, str]]
) -> ParsedRequest:
    """Read a ``POST /sessions`` request.

    The body is JSON ``{"inputs": [url or {"url"|"image_base64", "name"}, ...],
    "settings": {...}, "ordered": true}``, or form data with files (images or videos)
    under ``file``/``files`` and an optional JSON ``settings`` field.

    Raises:
        ApiError: 400 for malformed bodies, unknown fields and unreadable settings;
            415 for another content type.

    Example:
        >>> parsed = parse_session_request(
        ...     b'{"inputs": ["https://example.com/a.png"], "settings": {"conf": 0.3}}',
        ...     "application/json", [])
        >>> parsed.inputs[0].url, parsed.options
        ('https://example.com/a.png', {'conf': 0.3})
    """
    options, others = settings_from_query(query, SESSION_QUERY)
    parsed = ParsedRequest(options=options)
    if "ordered" in others:
        parsed.ordered = parse_bool("ordered", others["ordered"])
    kind = media_type(content_type)
    if kind == "multipart/form-data":
        parsed.inputs = _form_inputs(body, content_type or "", parsed)
    elif kind == "application/json" or kind.endswith("+json"):
        payload = _json_object(body, _SESSION_KEYS)
        parsed.options.update(check_setting_names(payload.get("settings")))
        if "ordered" in payload:
            parsed.ordered = _json_bool(payload["ordered"], "ordered")
        entries = payload.get("inputs")
        if isinstance(entries, str):
            entries = [entries]
        if not isinstance(entries, list) or not entries:
            raise ApiError(400, '"inputs" must be a non-empty list of URLs or objects')
        parsed.inputs = [
            _json_item({"url": e} if isinstance(e, str) else e, f"inputs[{i}]", i)
            for i, e in enumerate(entries)
        ]
    else:
        raise ApiError(
            415, f"unsupported Content-Type {kind!r}: send application/json or multipart/form-data"
        )
    return parsed


def decode_base64(text: Any, where: str) -> bytes:
    """Decode a base64 string (a ``data:...;base64,`` prefix is allowed).

    Raises:
        ApiError: 400 when it is not a string of valid base64.

    Example:
        >>> decode_base64("data:image/png;base64,aGk=", "image_base64")
        b'hi'
    """
    if not isinstance(text, str):
        raise ApiError(400, f"{where} must be a base64 string, got {type(text).__name__}")
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, f"{where} is not valid base64: {exc}") from exc
    if not data:
        raise ApiError(400, f"{where} is empty")
    return data


#: Downloads running at once for one request.
MAX_PARALLEL_DOWNLOADS = 8
#: Most bytes the URL inputs of one request may total.
MAX_DOWNLOAD_BYTES = 256 * 2**20


@dataclass(frozen=True)
class InputFailure:
    """Why one input of a request gave no image; the request's other inputs go on.

    Its URL was refused or unreachable, or it is not an image, or it is above the
    pixel limit.

    Attributes:
        status: The HTTP status the failure alone would answer (400).
        message: What is wrong, naming the input.
    """

    status: int
    message: str


async def fetch_inputs(
    inputs: list[ImageInput],
    policy: URLPolicy,
    timeout: float,
    max_bytes: int,
    max_total_bytes: int = MAX_DOWNLOAD_BYTES,
) -> list[bytes | InputFailure]:
    """Return every input's bytes, downloading the URLs (a few at a time, in threads).

    Args:
        inputs: The request's inputs.
        policy: Where URLs may point.
        timeout: Seconds allowed per URL.
        max_bytes: Largest body of one URL.
        max_total_bytes: Most bytes all of the request's URLs may total.

    Returns:
        Each input's bytes, or an `InputFailure` naming the URL that is refused or
        cannot be fetched.

    Raises:
        ApiError: 413 when the downloads total more than ``max_total_bytes`` (the
            request as a whole is too large).
    """
    slots = asyncio.Semaphore(MAX_PARALLEL_DOWNLOADS)
    total = 0

    async def load(item: ImageInput) -> bytes | InputFailure:
        nonlocal total
        if item.url is None:
            return item.data or b""
        async with slots:
            try:
                data = await asyncio.to_thread(
                    fetch_url_safely, item.url, timeout, max_bytes, policy
                )
            except (UnsafeURLError, URLFetchError) as exc:
                return InputFailure(400, str(exc))
        total += len(data)
        if total > max_total_bytes:
            raise ApiError(413, f"the URL inputs total more than {max_total_bytes} bytes")
        return data

    return list(await asyncio.gather(*(load(item) for item in inputs)))


async def decode_inputs(
    inputs: list[ImageInput], data: list[bytes | InputFailure], max_pixels: int
) -> list[np.ndarray | InputFailure]:
    """Decode every input into an (H, W, 3) uint8 RGB array (each in a thread).

    Returns:
        Each input's image, or an `InputFailure`: the one its fetch gave, or one naming
        the input that is not an image or is above ``max_pixels`` (checked from the
        header, before decoding).
    """

    async def decode(item: ImageInput, raw: bytes | InputFailure) -> np.ndarray | InputFailure:
        if isinstance(raw, InputFailure):
            return raw
        try:
            return await asyncio.to_thread(decode_image_bytes, raw, item.name, max_pixels)
        except ImageLoadError as exc:
            return InputFailure(400, str(exc))

    return list(await asyncio.gather(*(decode(i, d) for i, d in zip(inputs, data))))


def raise_failures(results: Iterable[Any]) -> None:
    """Raise the failures among ``results`` as one `ApiError` (for all-or-nothing calls).

    Raises:
        ApiError: With the first failure's status and every failure's message.
    """
    failures = [r for r in results if isinstance(r, InputFailure)]
    if failures:
        raise ApiError(failures[0].status, "; ".join(f.message for f in failures))


def url_name(url: str) -> str:
    """The name a URL's prediction gets: its path's last part, else its host.

    Example:
        >>> url_name("https://example.com/photos/cat%201.jpg?size=2")
        'cat 1.jpg'
    """
    parts = urlsplit(url)
    return unquote(parts.path.rstrip("/").rsplit("/", 1)[-1]) or parts.hostname or url


# --------------------------------------------------------------------------- helpers
def _form_inputs(body: bytes, content_type: str, parsed: ParsedRequest) -> list[ImageInput]:
    try:
        parts = parse_multipart(body, content_type)
    except MultipartError as exc:
        raise ApiError(400, f"malformed form data: {exc}") from exc
    inputs: list[ImageInput] = []
    for part in parts:
        if part.name in FILE_FIELDS:
            inputs.append(_form_file(part, len(inputs)))
        elif part.name == "settings":
            parsed.options.update(check_setting_names(_loads(part.text, "form field settings")))
        else:
            raise ApiError(
                400,
                f"unknown form field {part.name!r}; expected files under 'file' or 'files' "
                "and an optional JSON 'settings' field",
            )
    if not inputs:
        raise ApiError(400, "the form holds no file: send images under 'file' or 'files'")
    return inputs


def _form_file(part: FormPart, index: int) -> ImageInput:
    if not part.data:
        raise ApiError(400, f"uploaded file {part.filename or part.name!r} is empty")
    return ImageInput(part.filename or f"image_{index}", data=part.data)


def _json_object(body: bytes, keys: tuple[str, ...]) -> dict[str, Any]:
    payload = _loads(body, "the request body")
    if not isinstance(payload, dict):
        raise ApiError(400, f"the JSON body must be an object, got {type(payload).__name__}")
    unknown = sorted(set(payload) - set(keys))
    if unknown:
        raise ApiError(
            400,
            f"unknown field(s) {', '.join(map(repr, unknown))} in the JSON body; "
            f"valid fields are: {', '.join(keys)}",
        )
    return payload


def _loads(text: bytes | str, where: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"{where} is not valid JSON: {exc}") from exc


def _json_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ApiError(400, f"{name} must be true or false, got {value!r}")
    return value


def _json_predict_inputs(payload: dict[str, Any]) -> list[ImageInput]:
    given = [key for key in ("url", "image_base64", "images") if key in payload]
    if len(given) != 1:
        raise ApiError(400, 'the JSON body needs exactly one of "url", "image_base64", "images"')
    if given[0] != "images":
        return [_json_item(payload, "the JSON body", 0, check_keys=False)]
    if "name" in payload:
        raise ApiError(400, '"name" goes inside each element of "images"')
    items = payload["images"]
    if not isinstance(items, list) or not items:
        raise ApiError(400, '"images" must be a non-empty list of objects')
    return [_json_item(item, f"images[{i}]", i) for i, item in enumerate(items)]


def _json_item(item: Any, where: str, index: int, check_keys: bool = True) -> ImageInput:
    if not isinstance(item, dict):
        raise ApiError(400, f"{where} must be an object with a url or an image_base64")
    unknown = sorted(set(item) - set(_ITEM_KEYS))
    if unknown and check_keys:
        raise ApiError(
            400,
            f"unknown field(s) {', '.join(map(repr, unknown))} in {where}; "
            f"valid fields are: {', '.join(_ITEM_KEYS)}",
        )
    name = item.get("name")
    if name is not None and not isinstance(name, str):
        raise ApiError(400, f"{where}.name must be a string")
    if ("url" in item) == ("image_base64" in item):
        raise ApiError(400, f"{where} needs exactly one of url and image_base64")
    if "url" in item:
        url = item["url"]
        if not isinstance(url, str) or not url.strip():
            raise ApiError(400, f"{where}.url must be a non-empty string")
        return ImageInput(name or url_name(url), url=url.strip())
    data = decode_base64(item["image_base64"], f"{where}.image_base64")
    return ImageInput(name or f"image_{index}", data=data)
