"""Decode an item (file, URL, in-memory image) into an HWC RGB uint8 array, or say why not.

Conversion rules, shared by files and in-memory inputs:

- Alpha is dropped, keeping the stored colour (as OpenCV does); palette images with
  transparency go through RGBA, so a transparent pixel keeps its palette colour.
- 16-bit data is scaled to 8 bits by keeping the high byte (``>> 8``): 16-bit grayscale
  images and uint16 arrays. Pillow already opens 16-bit RGB(A) PNGs as 8-bit RGB(A) that
  way. 32-bit integer images (mode "I") are read as 16-bit when their values lie in
  0..65535, else scaled linearly from their min..max to 0..255.
- Float data (mode "F" images, float arrays) is refused with a clear error: its range is
  ambiguous ([0, 1] or [0, 255]), so the caller converts it explicitly.
- EXIF orientation is applied; multi-frame files (GIF, TIFF) give their first frame.
- The pixel limit (`max_pixels`) is checked from the header, before any pixel is decoded;
  Pillow's own decompression-bomb check is turned off while Tessera decodes, and truncated
  files always raise instead of being completed with grey.
"""

from __future__ import annotations

import io
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import numpy as np
import requests
import urllib3
from PIL import Image, ImageFile, ImageOps

from engine.sources.items import BUILTIN_SOURCES, Item

logger = logging.getLogger(__name__)

#: Default limit on width * height: twice Pillow's decompression-bomb warning threshold.
DEFAULT_MAX_PIXELS = 178_956_970

#: Largest HTTP response body `fetch_url` accepts.
MAX_URL_BYTES = 512 * 1024 * 1024

_CHUNK_BYTES = 1024 * 1024
#: Peak bytes a pixel takes while an image is decoded whole (decoder buffer + RGB copy).
DECODE_BYTES_PER_PIXEL = 6
#: Images of fewer pixels are not checked against free memory (about 100 MB at the peak).
MEMORY_CHECK_MIN_PIXELS = 16_000_000
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageLoadError(ValueError):
    """An image could not be read or decoded.

    The message starts with the item's path, URL or name and says what is wrong, e.g.
    ``"/data/a.jpg: cannot decode image: image file is truncated"``.
    """


# --------------------------------------------------------------------------- public API
def decode_item(
    item: Item,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    url_timeout: float = 30.0,
    fetch: Callable[[str], bytes] | None = None,
) -> np.ndarray:
    """Decode one item into an RGB image.

    Args:
        item: The item, as made by `resolve_input`.
        max_pixels: Refuse images with more than this many pixels (width * height).
        url_timeout: Seconds allowed for fetching a URL item (connect + whole body).
        fetch: Downloads the bytes of a platform image that has no local path (its
            ``url`` is in the platform's own scheme, e.g. ``acme://images/42``).

    Returns:
        A writable, C-contiguous (H, W, 3) uint8 RGB array.

    Raises:
        ImageLoadError: The item carries an error, or its image cannot be read or decoded,
            or it is too large (above ``max_pixels``, or than the memory free to decode it).

    Example:
        >>> image = decode_item(resolve_input("street.jpg").items[0])  # doctest: +SKIP
        >>> image.shape, image.dtype                                    # doctest: +SKIP
        ((720, 1280, 3), dtype('uint8'))

    """
    if item.error is not None:
        raise ImageLoadError(item.error)
    if item.source not in BUILTIN_SOURCES and item.path is None and item.url is not None:
        return decode_image_bytes(_fetched(item, fetch), item.name, max_pixels)  # a platform's
    if item.source == "file" or item.source not in BUILTIN_SOURCES:
        if item.path is None:
            raise ImageLoadError(f"{item.name}: {item.source} item has no path")
        return decode_image_file(item.path, max_pixels)
    if item.source == "url":
        if item.url is None:
            raise ImageLoadError(f"{item.name}: url item has no URL")
        return decode_image_bytes(fetch_url(item.url, url_timeout), item.url, max_pixels)
    if item.in_memory:
        try:
            image = item.image_array()
        except ValueError as e:
            raise ImageLoadError(str(e)) from e
        check_pixels(item.name, image.shape[1], image.shape[0], max_pixels)
        return image.copy()
    raise ImageLoadError(f"{item.name}: unknown item source {item.source!r}")


def _fetched(item: Item, fetch: Callable[[str], bytes] | None) -> bytes:
    if fetch is None:
        raise ImageLoadError(f"{item.name}: no client to download {item.url}")
    try:
        return fetch(str(item.url))
    except Exception as e:  # a failed download is this item's error, not the batch's
        raise ImageLoadError(f"{item.name} ({item.url}): download failed: {e}") from e


def load_image(
    path_or_url: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, url_timeout: float = 30.0
) -> np.ndarray:
    """Load an image file or http(s) URL as an RGB array (EXIF orientation applied).

    Args:
        path_or_url: A local path, or an http/https URL.
        max_pixels: Refuse images with more than this many pixels.
        url_timeout: Seconds allowed for fetching a URL.

    Returns:
        An (H, W, 3) uint8 RGB array.

    Raises:
        ImageLoadError: The file or URL cannot be read or decoded, or is too large.

    Example:
        >>> load_image("street.jpg").shape                    # doctest: +SKIP
        (720, 1280, 3)

    """
    if isinstance(path_or_url, str) and has_url_scheme(path_or_url):
        scheme = urlsplit(path_or_url).scheme.lower()
        if scheme not in ("http", "https"):
            raise ImageLoadError(
                f"{path_or_url}: unsupported URL scheme {scheme!r}; only http and https "
                "are supported"
            )
        return decode_image_bytes(fetch_url(path_or_url, url_timeout), path_or_url, max_pixels)
    return decode_image_file(path_or_url, max_pixels)


def has_url_scheme(text: str) -> bool:
    """Tell whether a string starts with a URL scheme (``http://``, ``ftp://``, ...).

    Args:
        text: A path or URL.

    Returns:
        True for "<scheme>://..." strings, whatever the scheme.

    Example:
        >>> has_url_scheme("https://example.com/a.jpg"), has_url_scheme("photos/a.jpg")
        (True, False)

    """
    return _URL_RE.match(text) is not None


def decode_image_file(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file; only its header is read before the pixel limit is checked.

    Args:
        path: The file.
        max_pixels: Refuse images with more than this many pixels.

    Returns:
        An (H, W, 3) uint8 RGB array.

    Raises:
        ImageLoadError: "file not found: <path>", or a message starting with the path.

    Example:
        >>> decode_image_file("street.jpg").shape             # doctest: +SKIP
        (720, 1280, 3)

    """
    name = str(path)
    try:
        with open(path, "rb") as fp:
            return _decode(fp, name, max_pixels)
    except FileNotFoundError as e:
        raise ImageLoadError(f"file not found: {name}") from e
    except IsADirectoryError as e:
        raise ImageLoadError(f"{name}: is a directory, not an image file") from e
    except OSError as e:
        raise ImageLoadError(f"{name}: cannot read file: {e.strerror or e}") from e


def decode_image_bytes(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, ...) held in memory.

    Args:
        data: The encoded file's bytes.
        name: What to call the image in error messages (its path, URL or name).
        max_pixels: Refuse images with more than this many pixels; checked from the
            header before decoding.

    Returns:
        An (H, W, 3) uint8 RGB array.

    Raises:
        ImageLoadError: The bytes are not a decodable image, or it is too large.

    Example:
        >>> decode_image_bytes(open("a.png", "rb").read(), "a.png").dtype  # doctest: +SKIP
        dtype('uint8')

    """
    return _decode(io.BytesIO(data), name, max_pixels)


def fetch_url(url: str, timeout: float, max_bytes: int = MAX_URL_BYTES) -> bytes:
    """Download a URL's body, streamed, with an overall deadline and a size cap.

    Args:
        url: An http or https URL.
        timeout: Seconds allowed for connecting and for the whole body.
        max_bytes: Refuse bodies larger than this.

    Returns:
        The response body.

    Raises:
        ImageLoadError: Non-2xx status ("<url>: HTTP 404 Not Found"), timeout
            ("<url>: timed out after 2.0 s"), connection failure, or too large a body.

    Example:
        >>> len(fetch_url("https://example.com/a.jpg", timeout=10.0))  # doctest: +SKIP
        48213

    """
    deadline = time.monotonic() + timeout
    timed_out = f"{url}: timed out after {float(timeout)} s"
    try:
        with requests.get(url, stream=True, timeout=(timeout, timeout)) as response:
            if not 200 <= response.status_code < 300:
                raise ImageLoadError(f"{url}: HTTP {response.status_code} {response.reason}")
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > max_bytes:
                raise ImageLoadError(f"{url}: response of {length} bytes is above {max_bytes}")
            return _read_body(response.raw, url, deadline, max_bytes, timed_out)
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
        if _is_timeout(e):
            raise ImageLoadError(timed_out) from e
        if isinstance(e, requests.ConnectionError):
            raise ImageLoadError(f"{url}: cannot connect: {_short_reason(e)}") from e
        if isinstance(e, urllib3.exceptions.ProtocolError):
            raise ImageLoadError(f"{url}: connection broken: {_short_reason(e)}") from e
        raise ImageLoadError(f"{url}: request failed: {_short_reason(e)}") from e


def _read_body(
    raw: urllib3.response.BaseHTTPResponse,
    url: str,
    deadline: float,
    max_bytes: int,
    timed_out: str,
) -> bytes:
    # read1 returns as soon as some data arrives, so a body that trickles in slowly still
    # meets the overall deadline (the socket timeout only bounds each wait)
    read = getattr(raw, "read1", raw.read)
    body = bytearray()
    while chunk := read(_CHUNK_BYTES, decode_content=True):
        body += chunk
        if len(body) > max_bytes:
            raise ImageLoadError(f"{url}: response is above {max_bytes} bytes")
        if time.monotonic() > deadline:
            raise ImageLoadError(timed_out)
    return bytes(body)


def pil_to_rgb(
    image: Image.Image, name: str, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Convert a PIL image to an RGB array: loads it, applies EXIF orientation and mode rules.

    Args:
        image: Any PIL image (loaded or not); for multi-frame images, the current frame.
        name: What to call the image in error messages.
        max_pixels: Refuse images with more than this many pixels; None for no limit.

    Returns:
        An (H, W, 3) uint8 RGB array.

    Raises:
        ImageLoadError: The image cannot be decoded, is too large, or is a float image.

    Example:
        >>> pil_to_rgb(Image.new("L", (4, 2)), "gray").shape
        (2, 4, 3)

    """
    with strict_pillow():
        if max_pixels is not None:
            check_pixels(name, image.width, image.height, max_pixels)
        check_memory(name, image.width, image.height)
        try:
            image.load()
        except Exception as e:
            raise ImageLoadError(f"{name}: cannot decode image: {_short_reason(e)}") from e
        return _to_rgb(_exif_transpose(image, name), name)


def array_to_rgb(array: np.ndarray, name: str) -> np.ndarray:
    """Convert an in-memory image array to a C-contiguous (H, W, 3) uint8 RGB array.

    Accepted: HxW and HxWx1 (grayscale), HxWx3 (RGB), HxWx4 (RGBA, alpha dropped); dtypes
    uint8, bool (0/255), uint16 (``>> 8``), and other integer types whose values lie in
    0..255. Float arrays are refused (convert them explicitly, e.g.
    ``(a * 255).round().astype(np.uint8)`` for values in [0, 1]).

    Args:
        array: The image.
        name: What to call the image in error messages (e.g. "array_3 (input[1])").

    Returns:
        The RGB array (a view when the input already is one).

    Raises:
        ImageLoadError: Unsupported shape or dtype; the message names both.

    Example:
        >>> array_to_rgb(np.zeros((2, 4), np.uint16), "array_0").shape
        (2, 4, 3)

    """
    array = np.asarray(array)
    array = _to_uint8(array, name)
    shape = array.shape
    if array.ndim == 3 and shape[2] in (3, 4):
        rgb = array[:, :, :3]
    elif array.ndim == 2 or (array.ndim == 3 and shape[2] == 1):
        gray = array.reshape(shape[:2])
        rgb = np.repeat(gray[:, :, None], 3, axis=2)
    else:
        hint = ""
        if array.ndim == 3 and shape[0] in (1, 3, 4):
            hint = "; it looks channels-first, pass array.transpose(1, 2, 0)"
        elif array.ndim == 4:
            hint = "; pass a batch as a list of arrays"
        raise ImageLoadError(
            f"{name}: unsupported array shape {shape}; expected HxW, HxWx1, HxWx3 (RGB) "
            f"or HxWx4 (RGBA){hint}"
        )
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageLoadError(f"{name}: empty image of shape {shape}")
    return np.ascontiguousarray(rgb)


# --------------------------------------------------------------------------- decoding
def _decode(fp: IO[bytes], name: str, max_pixels: int) -> np.ndarray:
    with strict_pillow():
        try:
            image = Image.open(fp)
        except Exception as e:
            raise ImageLoadError(f"{name}: cannot decode image: {_open_reason(e)}") from e
        with image:
            return pil_to_rgb(image, name, max_pixels)


def _open_reason(error: Exception) -> str:
    if isinstance(error, Image.UnidentifiedImageError):
        return "not a recognised image format"
    return _short_reason(error)


def check_memory(name: str, width: int, height: int, available: int | None = None) -> None:
    """Raise `ImageLoadError` when decoding a width x height image whole cannot fit in memory.

    A whole decode holds about `DECODE_BYTES_PER_PIXEL` bytes a pixel at its peak (the
    decoder's buffer and the RGB copy). Without this check an image with a raised
    ``max_pixels`` would be decoded until the node ran out of memory, and Ray would kill
    (and retry) its task.

    Args:
        name: The image, for the message.
        width: Its width in pixels.
        height: Its height in pixels.
        available: Bytes free for it (default: `available_memory`, checked only for
            images of `MEMORY_CHECK_MIN_PIXELS` or more).

    Example:
        >>> try:
        ...     check_memory("a.png", 100_000, 100_000, available=8 * 2**30)
        ... except ImageLoadError as error:
        ...     print(str(error)[:67])
        a.png: decoding its 100000x100000 pixels whole needs about 55.9 GiB
    """
    pixels = int(width) * int(height)
    if available is None:
        if pixels < MEMORY_CHECK_MIN_PIXELS:
            return
        available = available_memory()
    needed = pixels * DECODE_BYTES_PER_PIXEL
    if needed > available:
        raise ImageLoadError(
            f"{name}: decoding its {width}x{height} pixels whole needs about "
            f"{needed / 2**30:.1f} GiB of memory, more than the {available / 2**30:.1f} GiB "
            "free here; predict it in tiles (sliding_window=True), which reads a large file "
            "band by band, or on a node with more memory"
        )


def available_memory() -> int:
    """Bytes of memory this process can still take: the machine's, or its cgroup's if less."""
    import psutil

    available = int(psutil.virtual_memory().available)
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit.isdigit():
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(0, available)


def check_pixels(name: str, width: int, height: int, max_pixels: int) -> None:
    """Raise `ImageLoadError` naming the image when width * height is above ``max_pixels``."""
    pixels = int(width) * int(height)
    if pixels > max_pixels:
        raise ImageLoadError(
            f"{name}: image is {width}x{height} = {pixels} pixels, above the limit of "
            f"{max_pixels} (max_pixels)"
        )


def _exif_transpose(image: Image.Image, name: str) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception as e:  # a broken EXIF block must not lose an otherwise good image
        logger.warning("%s: EXIF orientation ignored: %s", name, e)
        return image


def _to_rgb(image: Image.Image, name: str) -> np.ndarray:
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image, dtype=np.uint8).copy()
    if mode == "F":
        raise ImageLoadError(
            f"{name}: 32-bit float images (mode F) are not supported; save it as 8- or 16-bit"
        )
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        gray = _int_gray_to_uint8(np.asarray(image))
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    try:
        if mode == "La":  # premultiplied: Pillow converts it only to LA
            image = image.convert("LA")
        if image.mode in ("LA", "PA") or (mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA")
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except (ValueError, OSError) as e:
        raise ImageLoadError(f"{name}: unsupported image mode {mode}: {e}") from e


def _int_gray_to_uint8(gray: np.ndarray) -> np.ndarray:
    gray = gray.astype(np.int64, copy=False)
    low, high = (int(gray.min()), int(gray.max())) if gray.size else (0, 0)
    if 0 <= low and high <= 0xFFFF:
        return (gray >> 8).astype(np.uint8)
    scaled = (gray - low) * 255 // max(high - low, 1)
    return scaled.astype(np.uint8)


def _to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    dtype = array.dtype
    if dtype == np.uint8:
        return array
    if dtype == np.bool_:
        return array.astype(np.uint8) * np.uint8(255)
    if dtype == np.uint16:
        return (array >> 8).astype(np.uint8)
    if np.issubdtype(dtype, np.floating):
        raise ImageLoadError(
            f"{name}: float arrays are not accepted (dtype {dtype}, shape {array.shape}); "
            "expected uint8 RGB, e.g. (array * 255).round().astype(np.uint8) for values "
            "in [0, 1]"
        )
    if np.issubdtype(dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ImageLoadError(
                f"{name}: {dtype} array has values outside 0..255 (shape {array.shape}); "
                "expected uint8 RGB"
            )
        return array.astype(np.uint8)
    raise ImageLoadError(f"{name}: unsupported array dtype {dtype}; expected uint8 RGB")


# --------------------------------------------------------------------------- Pillow settings
_pillow_lock = threading.Lock()
_pillow_users = 0
_pillow_saved: tuple[int | None, bool] = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)


@contextmanager
def strict_pillow() -> Iterator[None]:
    """Turn off Pillow's bomb check (we check `max_pixels`) and forbid truncated loads.

    Both are Pillow module globals; concurrent decodes share one override, counted, and
    the last one out restores the caller's values.
    """
    global _pillow_users, _pillow_saved
    with _pillow_lock:
        if _pillow_users == 0:
            _pillow_saved = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
            Image.MAX_IMAGE_PIXELS = None
            ImageFile.LOAD_TRUNCATED_IMAGES = False
        _pillow_users += 1
    try:
        yield
    finally:
        with _pillow_lock:
            _pillow_users -= 1
            if _pillow_users == 0:
                Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = _pillow_saved


# --------------------------------------------------------------------------- errors
_ERRNO_RE = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")


def _short_reason(error: BaseException) -> str:
    text = str(error)
    match = _ERRNO_RE.search(text)
    if match:
        return match.group(1).strip()
    text = text or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _is_timeout(error: Exception) -> bool:
    if isinstance(error, (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)):
        return True
    return any(
        "timed out" in str(arg).lower() or "timeout" in type(arg).__name__.lower()
        for arg in error.args
    )
