"""Turn whatever the user passes as ``input=`` into a list of `Item`.

Bad data never loses the other items and never disappears: a missing path, an empty
directory, an unsupported URL scheme or an unusable array becomes an `Item` carrying an
``error``, which the pipeline turns into a Prediction with that error. An input of an
unsupported Python type (an int, a dict, a nested list) is a programming error and raises
`TypeError` at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
from PIL import Image

from engine import plugins
from engine.sources.decode import ImageLoadError, array_to_rgb, has_url_scheme, pil_to_rgb
from engine.sources.items import Item
from engine.sources.video import VIDEO_EXTENSIONS, is_video_path

#: File extensions recognised as images inside directories (compared lower-case).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})


@dataclass
class ResolvedInput:
    """The items to predict, in input order, and what was left out on purpose.

    Attributes:
        items: One item per image, ``items[i].index == i``.
        skipped: Paths of non-image files found in directories (not errors).
        in_memory: Item index -> the RGB array of each array or PIL input, so the driver
            can attach the image to its Prediction without decoding it again.

    Example:
        >>> resolved = resolve_input(["a.jpg", "photos/"])    # doctest: +SKIP
        >>> [item.name for item in resolved.items]            # doctest: +SKIP
        ['a.jpg', 'b.png', 'c.jpg']

    """

    items: list[Item] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    in_memory: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def errors(self) -> list[Item]:
        """The items that carry an error."""
        return [item for item in self.items if item.error is not None]


def resolve_input(input: Any, recursive: bool = False) -> ResolvedInput:
    """Resolve the user's input into items, in input order (sorted within a directory).

    Accepted forms: a path (str or Path) to an image file, a directory, or a local
    platform's dataset (a layout an installed platform reads: `engine.plugins`); an
    http/https URL; a PIL image; a numpy array (HxW, HxWx1,
    HxWx3 RGB, HxWx4 RGBA; uint8, uint16, bool or small integers); or a list/tuple
    mixing these. Directories give their image files (by extension, case-insensitive;
    hidden files skipped), sorted by path; other files are listed in ``skipped``.

    Args:
        input: The input, as passed to ``model.predict(input=...)``.
        recursive: Descend into subfolders of directories.

    Returns:
        The items, skipped files and in-memory arrays.

    Raises:
        TypeError: An input (or list element) of an unsupported type; the message names
            the type and the position.

    Example:
        >>> resolved = resolve_input(["street.jpg", "https://example.com/cat.png"])
        >>> [(item.source, item.name) for item in resolved.items]
        [('file', 'street.jpg'), ('url', 'cat.png')]
        >>> resolve_input("missing.jpg").items[0].error
        'file not found: missing.jpg'

    """
    resolver = _Resolver(recursive=recursive)
    if isinstance(input, (list, tuple)):
        for position, element in enumerate(input):
            if isinstance(element, (list, tuple)):
                raise TypeError(
                    f"input[{position}]: nested {type(element).__name__} is not supported; "
                    "pass one flat list"
                )
            resolver.add(element, f"input[{position}]")
    else:
        resolver.add(input, "input")
    return resolver.result


class _Resolver:
    def __init__(self, recursive: bool) -> None:
        self.recursive = recursive
        self.result = ResolvedInput()

    @property
    def _next_index(self) -> int:
        return len(self.result.items)

    def _item(self, source: str, name: str, **fields: Any) -> Item:
        item = Item(index=self._next_index, source=source, name=name, **fields)
        self.result.items.append(item)
        return item

    def add(self, value: Any, position: str) -> None:
        if isinstance(value, os.PathLike):
            self._add_path(Path(os.fspath(value)), os.fspath(value))
        elif isinstance(value, str):
            self._add_string(value)
        elif isinstance(value, Image.Image):
            # no pixel limit here: decode_item applies the caller's max_pixels
            self._add_in_memory("pil", position, lambda name: pil_to_rgb(value, name, None))
        elif isinstance(value, np.ndarray):
            self._add_in_memory("array", position, lambda name: array_to_rgb(value, name))
        else:
            raise TypeError(
                f"{position}: unsupported input type {type(value).__module__}."
                f"{type(value).__qualname__}; expected a path, an http(s) URL, a directory, "
                "a PIL image, a numpy array, or a list of these"
            )

    # ------------------------------------------------------------------ strings and paths
    def _add_string(self, text: str) -> None:
        if has_url_scheme(text):
            self._add_url(text)
        else:
            self._add_path(Path(text), text)

    def _add_url(self, url: str) -> None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        name = unquote(parts.path.rstrip("/").rsplit("/", 1)[-1]) or parts.hostname or url
        if scheme not in ("http", "https"):
            error = f"{url}: unsupported URL scheme {scheme!r}; only http and https are supported"
            self._item("url", name, url=url, error=error)
        elif not parts.hostname:
            self._item("url", name, url=url, error=f"{url}: invalid URL, no host")
        else:
            self._item("url", name, url=url)

    def _add_path(self, path: Path, shown: str) -> None:
        path = path.expanduser()
        if path.is_dir():
            self._add_directory(path, shown)
        elif path.exists():
            source = "video" if is_video_path(path) else "file"
            self._item(source, path.name, path=str(path.absolute()))
        else:
            name = path.name or shown
            source = "video" if is_video_path(path) else "file"
            self._item(source, name, path=str(path), error=f"file not found: {shown}")

    # ------------------------------------------------------------------ directories
    def _add_directory(self, directory: Path, shown: str) -> None:
        if self._add_platform_dataset(directory, shown):
            return
        images, others = _list_directory(directory, self.recursive)
        self.result.skipped.extend(others)
        for image in images:
            name = os.path.basename(image)
            self._item("video" if _suffix(name) in VIDEO_EXTENSIONS else "file", name, path=image)
        if not images:
            self._item(
                "file",
                directory.name or shown,
                path=str(directory.absolute()),
                error=self._empty_message(directory, shown, len(others)),
            )

    def _empty_message(self, directory: Path, shown: str, num_skipped: int) -> str:
        message = f"{shown}: directory contains no images or videos"
        if num_skipped:
            message += f" ({num_skipped} non-image files skipped)"
        if not self.recursive and _has_images_below(directory):
            message += "; its subfolders contain images: pass recursive=True"
        return message

    def _add_platform_dataset(self, directory: Path, shown: str) -> bool:
        """Add the images of a platform's local dataset; False when it is not one."""
        name = directory.absolute().name
        try:
            found = plugins.read_local_dataset(directory)
        except plugins.LocalDatasetError as e:  # a platform's layout it cannot read: say why
            self._item(e.platform.name, name, path=str(directory.absolute()), error=str(e))
            return True
        if found is None:
            return False
        platform, refs = found
        images = 0
        for ref in refs:
            if ref.path is not None and _is_image(Path(ref.path)):
                images += 1
                self._item(platform.name, ref.name, path=ref.path, url=ref.url, dataset=ref.dataset)
            else:
                self.result.skipped.append(str(ref.path or ref.url))
        if not images:
            error = f"{shown}: {platform.title or platform.name} project contains no images"
            self._item(platform.name, name, path=str(directory.absolute()), error=error)
        return True

    # ------------------------------------------------------------------ in memory
    def _add_in_memory(
        self, source: str, position: str, convert: Callable[[str], np.ndarray]
    ) -> None:
        name = f"{source}_{self._next_index}"
        try:
            rgb = convert(f"{name} ({position})")
        except ImageLoadError as e:
            self._item(source, name, error=str(e))
            return
        item = self._item(source, name, pixels=rgb.tobytes(), shape=tuple(rgb.shape))
        self.result.in_memory[item.index] = rgb


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _is_media(path: Path) -> bool:
    return _is_image(path) or is_video_path(path)


def _suffix(name: str) -> str:
    """A file name's suffix, lower-case, as `Path.suffix` has it (no Path built)."""
    dot = name.rfind(".")
    return name[dot:].lower() if 0 < dot < len(name) - 1 else ""


def _list_directory(directory: Path, recursive: bool) -> tuple[list[str], list[str]]:
    """Return (image and video files, other files) under `directory`, sorted by path parts.

    Paths are strings (no `Path` per file): a folder of 100,000 images lists in a
    fraction of the time and memory.
    """
    media: list[tuple[tuple[str, ...], str]] = []
    others: list[tuple[tuple[str, ...], str]] = []
    for parts, path in _walk_files(directory.absolute(), recursive):
        suffix = _suffix(parts[-1])
        is_media = suffix in IMAGE_EXTENSIONS or suffix in VIDEO_EXTENSIONS
        (media if is_media else others).append((parts, path))
    media.sort()
    others.sort()
    return [path for _, path in media], [path for _, path in others]


def _walk_files(root: Path, recursive: bool) -> list[tuple[tuple[str, ...], str]]:
    """Visible regular files under `root`: (parts relative to `root`, path) each.

    Symlinked folders are followed once.
    """
    files: list[tuple[tuple[str, ...], str]] = []
    pending: list[tuple[str, tuple[str, ...]]] = [(str(root), ())]
    seen: set[str] = set()
    while pending:
        folder, parts = pending.pop()
        real = os.path.realpath(folder)
        if real in seen:
            continue
        seen.add(real)
        try:
            with os.scandir(folder) as scan:
                entries = list(scan)
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                if recursive:
                    pending.append((entry.path, (*parts, entry.name)))
            elif entry.is_file():
                files.append(((*parts, entry.name), entry.path))
    return files


def _has_images_below(directory: Path) -> bool:
    for _folder, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if any(not f.startswith(".") and _is_media(Path(f)) for f in files):
            return True
    return False
