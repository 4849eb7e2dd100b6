"""The URLs of Acme images: ``acme://images/<id>``, what an Acme prediction's ``url`` holds."""

from __future__ import annotations

__all__ = ["SCHEME", "image_url", "parse_image_url"]

#: The scheme of Acme media URLs.
SCHEME = "acme"
_PREFIX = f"{SCHEME}://images/"


def image_url(image_id: int) -> str:
    """The URL of Acme image ``image_id``.

    Example:
        >>> image_url(7)
        'acme://images/7'
    """
    return f"{_PREFIX}{int(image_id)}"


def parse_image_url(url: str | None) -> int | None:
    """The image id of an ``acme://images/<id>`` URL; None for any other URL.

    Example:
        >>> parse_image_url("acme://images/7"), parse_image_url("https://example.com/7")
        (7, None)
    """
    if not url or not url.startswith(_PREFIX) or not url[len(_PREFIX) :].isdigit():
        return None
    return int(url[len(_PREFIX) :])
