"""``encord://`` media URLs: the project and data unit a Prediction came from.

``encord://<project hash>/<data hash>`` names an image data unit of a project (a video
frame keeps its index in ``Prediction.frame_index``).

Example:
    >>> parse_data_url(data_url("p1", "d1"))
    ('p1', 'd1')
"""

from __future__ import annotations

__all__ = ["SCHEME", "data_url", "parse_data_url"]

#: The scheme of Encord media URLs.
SCHEME = "encord"


def data_url(project_hash: str, data_hash: str) -> str:
    """The URL naming data unit ``data_hash`` of ``project_hash``."""
    return f"{SCHEME}://{project_hash}/{data_hash}"


def parse_data_url(url: str | None) -> tuple[str, str] | None:
    """(project hash, data hash) of an ``encord://`` URL; None for any other URL."""
    if not url or not url.startswith(f"{SCHEME}://"):
        return None
    project, sep, data = url[len(SCHEME) + 3 :].partition("/")
    if not sep or not project or not data or "/" in data:
        return None
    return project, data
