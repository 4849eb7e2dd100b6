"""Turn whatever the user passes as ``input=`` into a list of `Item`.

Bad data never loses the other items and never disappears: a missing path, an empty
directory, an unsupported URL scheme or an unusable array becomes an `Item` carrying an
``error``, which the pipeline turns into a Prediction with that error. An input of an
unsupported Python type (an int, a dict, a nested list) is a programming error and raises
`TypeError` at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
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
    resolved = ResolvedInput()
    resolved.items.extend(iter_resolved(input, recursive, resolved))
    return resolved


def iter_resolved(
    input: Any,  # noqa: A002
    recursive: bool = False,
    found: ResolvedInput | None = None,
    cwd: str | None = None,
) -> Iterator[Item]:
    """Resolve the input lazily: yield its items one by one, listing folders as it goes.

    The same items as `resolve_input`, in the same order, without one list of them: a
    folder's files are listed (and sorted) one folder at a time, so a tree of a million
    images costs the memory of its largest folder's names.

    Args:
        input: As for `resolve_input`.
        recursive: Descend into subfolders of directories.
        found: Collects the skipped files and the in-memory arrays (``items`` untouched).
        cwd: The folder relative paths are taken from (default: this process's).

    Raises:
        TypeError: As for `resolve_input`, once the iteration reaches the element.

    Example:
        >>> [item.name for item in iter_resolved(["a.jpg", "https://h/b.png"])]
        ['a.jpg', 'b.png']
    """
    resolver = _Resolver(recursive, found if found is not None else ResolvedInput(), cwd)
    if isinstance(input, (list, tuple)):
        for position, element in enumerate(input):
            if isinstance(element, (list, tuple)):
                raise TypeError(
                    f"input[{position}]: nested {type(element).__name__} is not supported; "
                    "pass one flat list"
                )
            yield from resolver.add(element, f"input[{position}]")
    else:
        yield from resolver.add(input, "input")


def holds_in_memory(input: Any) -> bool:  # noqa: A002
    """True when the input is, or lists, a PIL image or a numpy array.

    Example:
        >>> holds_in_memory(["a.jpg", np.zeros((2, 2, 3), np.uint8)]), holds_in_memory("a.jpg")
        (True, False)
    """
    values = input if isinstance(input, (list, tuple)) else [input]
    return any(isinstance(value, (Image.Image, np.ndarray)) for value in values)


class _Resolver:
    def __init__(self, recursive: bool, found: ResolvedInput, cwd: str | None) -> None:
        self.recursive = recursive
        self.found = found
        self.cwd = Path(cwd) if cwd is not None else None
        self.count = 0

    def _item(self, source: str, name: str, **fields: Any) -> Item:
        item = Item(index=self.count, source=source, name=name, **fields)
        self.count += 1
        return item

    def add(self, value: Any, position: str) -> Iterator[Item]:
        if isinstance(value, os.PathLike):
            yield from self._add_path(Path(os.fspath(value)), os.fspath(value))
        elif isinstance(value, str):
            yield from self._add_string(value)
        elif isinstance(value, Image.Image):
            # no pixel limit here: decode_item applies the caller's max_pixels
            yield self._add_in_memory("pil", position, lambda name: pil_to_rgb(value, name, None))
        elif isinstance(value, np.ndarray):
            yield self._add_in_memory("array", position, lambda name: array_to_rgb(value, name))
        else:
            raise TypeError(
                f"{position}: unsupported input type {type(value).__module__}."
                f"{type(value).__qualname__}; expected a path, an http(s) URL, a directory, "
                "a PIL image, a numpy array, or a list of these"
            )

    # ------------------------------------------------------------------ strings and paths
    def _add_string(self, text: str) -> Iterator[Item]:
        if has_url_scheme(text):
            yield self._add_url(text)
        else:
            yield from self._add_path(Path(text), text)

    def _add_url(self, url: str) -> Item:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        name = unquote(parts.path.rstrip("/").rsplit("/", 1)[-1]) or parts.hostname or url
        if scheme not in ("http", "https"):
            error = f"{url}: unsupported URL scheme {scheme!r}; only http and https are supported"
            return self._item("url", name, url=url, error=error)
        if not parts.hostname:
            return self._item("url", name, url=url, error=f"{url}: invalid URL, no host")
        return self._item("url", name, url=url)

    def _add_path(self, given: Path, shown: str) -> Iterator[Item]:
        given = given.expanduser()
        path = given if self.cwd is None or given.is_absolute() else self.cwd / given
        if path.is_dir():
            yield from self._add_directory(path, shown)
        elif path.exists():
            source = "video" if is_video_path(path) else "file"
            yield self._item(source, path.name, path=str(path.absolute()))
        else:
            name = given.name or shown
            source = "video" if is_video_path(given) else "file"
            yield self._item(source, name, path=str(given), error=f"file not found: {shown}")

    # ------------------------------------------------------------------ directories
    def _add_directory(self, directory: Path, shown: str) -> Iterator[Item]:
        platform_items = self._add_platform_dataset(directory, shown)
        if platform_items is not None:
            yield from platform_items
            return
        images = others = 0
        for path, media in _walk_sorted(str(directory.absolute()), self.recursive):
            if not media:
                others += 1
                self.found.skipped.append(path)
                continue
            images += 1
            name = os.path.basename(path)
            yield self._item(
                "video" if _suffix(name) in VIDEO_EXTENSIONS else "file", name, path=path
            )
        if not images:
            yield self._item(
                "file",
                directory.name or shown,
                path=str(directory.absolute()),
                error=self._empty_message(directory, shown, others),
            )

    def _empty_message(self, directory: Path, shown: str, num_skipped: int) -> str:
        message = f"{shown}: directory contains no images or videos"
        if num_skipped:
            message += f" ({num_skipped} non-image files skipped)"
        if not self.recursive and _has_images_below(directory):
            message += "; its subfolders contain images: pass recursive=True"
        return message

    def _add_platform_dataset(self, directory: Path, shown: str) -> list[Item] | None:
        """The items of a platform's local dataset; None when it is not one."""
        name = directory.absolute().name
        try:
            found = plugins.read_local_dataset(directory)
        except plugins.LocalDatasetError as e:  # a platform's layout it cannot read: say why
            return [self._item(e.platform.name, name, path=str(directory.absolute()), error=str(e))]
        if found is None:
            return None
        platform, refs = found
        items = []
        for ref in refs:
            if ref.path is not None and _is_image(Path(ref.path)):
                items.append(
                    self._item(
                        platform.name, ref.name, path=ref.path, url=ref.url, dataset=ref.dataset
                    )
                )
            else:
                self.found.skipped.append(str(ref.path or ref.url))
        if not items:
            error = f"{shown}: {platform.title or platform.name} project contains no images"
            items.append(
                self._item(platform.name, name, path=str(directory.absolute()), error=error)
            )
        return items

    # ------------------------------------------------------------------ in memory
    def _add_in_memory(
        self, source: str, position: str, convert: Callable[[str], np.ndarray]
    ) -> Item:
        name = f"{source}_{self.count}"
        try:
            rgb = convert(f"{name} ({position})")
        except ImageLoadError as e:
            return self._item(source, name, error=str(e))
        item = self._item(source, name, pixels=rgb.tobytes(), shape=tuple(rgb.shape))
        self.found.in_memory[item.index] = rgb
        return item


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _is_media(path: Path) -> bool:
    return _is_image(path) or is_video_path(path)


def _suffix(name: str) -> str:
    """A file name's suffix, lower-case, as `Path.suffix` has it (no Path built)."""
    dot = name.rfind(".")
    return name[dot:].lower() if 0 < dot < len(name) - 1 else ""


def _walk_sorted(
    folder: str, recursive: bool, seen: set[str] | None = None
) -> Iterator[tuple[str, bool]]:
    """Visible regular files under ``folder`` as (path, is an image or video), sorted by path.

    One folder's names are listed and sorted at a time, and a subfolder's files come at
    its name's place: the order of sorting every file by its path's parts, without the
    list of every file. Symlinked folders are followed once.
    """
    seen = set() if seen is None else seen
    real = os.path.realpath(folder)
    if real in seen:
        return
    seen.add(real)
    try:
        with os.scandir(folder) as scan:
            entries = sorted(
                (entry.name, entry.path, entry.is_dir(), entry.is_file())
                for entry in scan
                if entry.name[0] != "."
            )
    except OSError:
        return
    for name, path, is_dir, is_file in entries:
        if is_dir:
            if recursive:
                yield from _walk_sorted(path, recursive, seen)
        elif is_file:
            suffix = _suffix(name)
            yield path, suffix in IMAGE_EXTENSIONS or suffix in VIDEO_EXTENSIONS


def _has_images_below(directory: Path) -> bool:
    for _folder, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if any(not f.startswith(".") and _is_media(Path(f)) for f in files):
            return True
    return False
