"""Sources: resolve the user's ``input=`` into items, and decode an item into an RGB image.

Example:
    >>> from engine.sources import decode_item, resolve_input
    >>> resolved = resolve_input(["street.jpg", "photos/"])      # doctest: +SKIP
    >>> image = decode_item(resolved.items[0])                    # doctest: +SKIP

"""

from __future__ import annotations

from engine.sources.decode import DEFAULT_MAX_PIXELS, ImageLoadError, decode_item, load_image
from engine.sources.items import Item
from engine.sources.resolve import IMAGE_EXTENSIONS, ResolvedInput, resolve_input

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ImageLoadError",
    "Item",
    "ResolvedInput",
    "decode_item",
    "load_image",
    "resolve_input",
]
