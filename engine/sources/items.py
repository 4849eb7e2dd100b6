"""`Item`: one image to predict, as resolved from the user's input."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from engine.schemas import ITEM_SCHEMA

#: The values `Item.source` takes besides the names of platforms (`engine.plugins`).
BUILTIN_SOURCES = ("file", "url", "array", "pil", "video")

#: Keys of `Item.to_row()`, always all present (the names of `engine.schemas.ITEM_SCHEMA`).
ROW_KEYS: tuple[str, ...] = tuple(ITEM_SCHEMA.names)


@dataclass(frozen=True)
class Item:
    """One image to predict, or one keyframe-aligned segment of a video.

    An image item says where the image comes from, or holds its pixels when in memory; a
    segment item says which frames of its video to predict.

    Attributes:
        index: Position of the item in the resolved input (0, 1, 2, ...).
        source: "file", "url", "array", "pil" or "video"; or the name of the platform
            an image comes from.
        name: Display name: file name, URL's last path part (or host), ``array_<i>`` /
            ``pil_<i>`` for in-memory images, the image's name for a platform's items.
        path: Absolute local path for "file" and "video" items and a platform's local
            images.
        url: The http(s) URL for "url" items; a platform's media URL (in its own
            scheme) for a platform's items.
        dataset: The platform dataset's name (nested ones as "parent/child").
        pixels: Raw HWC RGB uint8 bytes of an in-memory image, already converted to RGB
            (a read-only memoryview over an Arrow buffer once read back from a table by
            `items_from_table`: never copied).
        shape: (height, width, 3) of `pixels`.
        error: A problem found while resolving; the item is not decoded and its
            prediction carries this error.
        frames: For a video segment, the source frame indices to predict, ascending
            (see `engine.sources.video.VideoSegment`); None for an image. A "video" item
            without frames is a whole video not yet split (or one that failed to open).
        seek_frame: For a video segment, the keyframe decoding starts from.
        seek_pts: That keyframe's presentation timestamp.
        last_frame: The last frame the segment decodes.

    Example:
        >>> item = Item(index=0, source="file", name="a.jpg", path="/data/a.jpg")
        >>> Item.from_row(item.to_row()) == item
        True

    """

    index: int
    source: str
    name: str
    path: str | None = None
    url: str | None = None
    dataset: str | None = None
    pixels: bytes | memoryview | None = None
    shape: tuple[int, int, int] | None = None
    error: str | None = None
    frames: tuple[int, ...] | None = None
    seek_frame: int | None = None
    seek_pts: int | None = None
    last_frame: int | None = None

    @property
    def num_rows(self) -> int:
        """Predictions this item produces: one per frame of a segment, else one."""
        return len(self.frames) if self.frames else 1

    def to_row(self) -> dict[str, Any]:
        """Return the item as a Ray Data row: every key of `ROW_KEYS`, Arrow-friendly values.

        Returns:
            A dict with ``shape`` as a list of ints (or None) and ``pixels`` as bytes (or None).

        Example:
            >>> Item(index=3, source="url", name="x.jpg", url="http://h/x.jpg").to_row()["url"]
            'http://h/x.jpg'

        """
        return {
            "index": self.index,
            "source": self.source,
            "name": self.name,
            "path": self.path,
            "url": self.url,
            "dataset": self.dataset,
            "pixels": self.pixels,
            "shape": None if self.shape is None else [int(s) for s in self.shape],
            "error": self.error,
            "frames": None if self.frames is None else [int(f) for f in self.frames],
            "seek_frame": self.seek_frame,
            "seek_pts": self.seek_pts,
            "last_frame": self.last_frame,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Item:
        """Build an item back from a row made by `to_row` (after a trip through Arrow).

        Accepts numpy scalars and arrays for ``index`` and ``shape``, and NaN for missing
        strings, as Ray Data may hand them back.

        Args:
            row: A mapping with the keys of `ROW_KEYS`.

        Returns:
            The item.

        Example:
            >>> Item.from_row({"index": 0, "source": "array", "name": "array_0",
            ...                "pixels": bytes(3), "shape": [1, 1, 3]}).shape
            (1, 1, 3)

        """
        shape = row.get("shape")
        pixels = row.get("pixels")
        frames = row.get("frames")
        return cls(
            index=int(row["index"]),
            source=str(row["source"]),
            name=str(row["name"]),
            path=_optional_str(row.get("path")),
            url=_optional_str(row.get("url")),
            dataset=_optional_str(row.get("dataset")),
            pixels=None if _is_missing(pixels) else _as_buffer(pixels),
            shape=None if _is_missing(shape) else tuple(int(s) for s in shape),
            error=_optional_str(row.get("error")),
            frames=None if _is_missing(frames) else tuple(int(f) for f in frames),
            seek_frame=_optional_int(row.get("seek_frame")),
            seek_pts=_optional_int(row.get("seek_pts")),
            last_frame=_optional_int(row.get("last_frame")),
        )

    @property
    def in_memory(self) -> bool:
        """True for items whose pixels travel with the item ("array" and "pil")."""
        return self.source in ("array", "pil")

    def image_array(self) -> np.ndarray:
        """Return the in-memory image as a read-only (H, W, 3) uint8 array (no copy).

        Raises:
            ValueError: The item holds no pixels (not an in-memory item, or it has an error).

        Example:
            >>> Item(index=0, source="array", name="array_0", pixels=bytes(12),
            ...      shape=(2, 2, 3)).image_array().shape
            (2, 2, 3)

        """
        if self.pixels is None or self.shape is None:
            raise ValueError(f"{self.name}: item holds no in-memory pixels")
        return np.frombuffer(self.pixels, dtype=np.uint8).reshape(self.shape)


def items_table(items: list[Item]) -> pa.Table:
    """The items as an Arrow table of `engine.schemas.ITEM_SCHEMA`, built column by column.

    Column by column, an in-memory image's pixels are copied once into the table's
    buffer (``Table.from_pylist`` takes several times as long on a 200 MB image).

    Example:
        >>> items_table([Item(index=0, source="file", name="a.png", path="/a.png")]).num_rows
        1
    """
    rows = [item.to_row() for item in items]
    return pa.Table.from_pydict(
        {name: [row[name] for row in rows] for name in ITEM_SCHEMA.names}, schema=ITEM_SCHEMA
    )


def items_from_table(table: pa.Table) -> list[Item]:
    """The items of a table made by `items_table`; in-memory pixels are not copied.

    Each item's ``pixels`` is a read-only memoryview over the table's own buffer (it keeps
    the buffer alive), so a decode task hands a large in-memory image on without copying.

    Example:
        >>> item = Item(index=0, source="array", name="array_0", pixels=bytes(12), shape=(2, 2, 3))
        >>> items_from_table(items_table([item]))[0].image_array().shape
        (2, 2, 3)
    """
    pixels = table.column("pixels")
    rows = table.drop_columns(["pixels"]).to_pylist()
    views = [
        None if not value.is_valid else memoryview(value.as_buffer())
        for chunk in pixels.chunks
        for value in chunk
    ]
    return [Item.from_row({**row, "pixels": view}) for row, view in zip(rows, views)]


def _as_buffer(pixels: Any) -> bytes | memoryview:
    return pixels if isinstance(pixels, (bytes, memoryview)) else bytes(pixels)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _optional_int(value: Any) -> int | None:
    return None if _is_missing(value) else int(value)


def _optional_str(value: Any) -> str | None:
    return None if _is_missing(value) else str(value)
