"""The URLs of Labelbox data rows: ``labelbox://datarows/<id>[?globalKey=<key>]``.

A Prediction of a Labelbox data row keeps its id and global key in ``url``, so the uploader
needs no mapping and `Prediction.load_image` fetches the media again.
"""

from __future__ import annotations

from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = ["SCHEME", "data_row_url", "parse_data_row_url"]

#: The scheme of Labelbox media URLs.
SCHEME = "labelbox"


def data_row_url(data_row_id: str, global_key: str | None = None) -> str:
    """The URL of data row ``data_row_id``.

    Example:
        >>> data_row_url("clx1", "street 1.png")
        'labelbox://datarows/clx1?globalKey=street%201.png'
    """
    url = f"{SCHEME}://datarows/{quote(str(data_row_id), safe='')}"
    return url + (f"?globalKey={quote(global_key, safe='')}" if global_key else "")


def parse_data_row_url(url: str | None) -> tuple[str, str | None] | None:
    """(data row id, global key or None) of a data row URL; None for any other URL.

    Example:
        >>> parse_data_row_url("labelbox://datarows/clx1?globalKey=a.png")
        ('clx1', 'a.png')
        >>> parse_data_row_url("https://example.com/a.png") is None
        True
    """
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme != SCHEME or parts.netloc != "datarows" or len(parts.path) < 2:
        return None
    keys = parse_qs(parts.query).get("globalKey")
    return unquote(parts.path[1:]), (keys[0] if keys else None)
