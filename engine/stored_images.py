"""Large in-memory images carried to the model workers through Ray's object store.

An in-memory image (a numpy array, a PIL image) travels inside its item, as raw bytes in
the Arrow block of its batch. For a large image that costs several copies of its pixels on
the way: into the block, out of it in the decode task, and into the call to the model
worker. `store_large_images` puts each large one in the object store once instead; its
item then carries no pixels, and the decode task hands the model worker a `StoredImage`,
which the worker reads where it lies (`fetch_stored`), without a copy.

The process that plans the job (the driver, or a detached session's actor) owns the
stored objects, so they live as long as its plan does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ray

from engine.sources.items import Item

#: In-memory images of at least this many bytes go through the object store, one object
#: each; smaller ones stay in the item blocks, where thousands of them cost one put.
STORED_IMAGE_BYTES = 1 << 20


@dataclass(frozen=True)
class StoredImage:
    """An in-memory RGB image held in Ray's object store, as its model worker reads it.

    Attributes:
        ref: The object reference to the (H, W, 3) uint8 array.
        shape: The array's shape, known without fetching it.
    """

    ref: Any
    shape: tuple[int, int, int]


def store_large_images(
    items: Sequence[Item], max_pixels: int, min_bytes: int = STORED_IMAGE_BYTES
) -> tuple[list[Item], dict[int, StoredImage]]:
    """Put the large in-memory images of ``items`` in the object store.

    An image over ``max_pixels`` stays in its item, whose decode then fails naming the
    limit, as for any other in-memory image.

    Args:
        items: The items of a plan.
        max_pixels: The job's pixel limit.
        min_bytes: The smallest image stored.

    Returns:
        The items, those stored without their pixels; and item index -> `StoredImage`.
    """
    kept: list[Item] = []
    stored: dict[int, StoredImage] = {}
    for item in items:
        shape = item.shape
        if (
            item.in_memory
            and item.pixels is not None
            and shape is not None
            and len(item.pixels) >= min_bytes
            and shape[0] * shape[1] <= max_pixels
        ):
            stored[item.index] = StoredImage(ray.put(item.image_array()), tuple(shape))
            item = dataclasses.replace(item, pixels=None)
        kept.append(item)
    return kept, stored


def fetch_stored(images: Sequence[Any]) -> list[Any]:
    """Replace each `StoredImage` in ``images`` by its array (read-only, not copied)."""
    refs = [image.ref for image in images if isinstance(image, StoredImage)]
    if not refs:
        return list(images)
    arrays = iter(ray.get(refs))
    return [next(arrays) if isinstance(image, StoredImage) else image for image in images]
