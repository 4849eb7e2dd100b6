"""Encord inputs: a project's image and video data units -> media, and the fetcher.

``encord_project="<hash>"`` predicts every image and video data unit of the project, in
the order the API lists them; each Prediction keeps the data unit's title as its ``name``
and ``encord://<project>/<data hash>`` as its ``url`` (a video's frames too, with their
``frame_index``), so ``upload=..., to="encord"`` needs no mapping. An image's bytes are
fetched in the decode tasks by `EncordFetcher`: a signed link from the SDK (``get_data``),
then the download, each through the job's gate and retried. A video is downloaded once, at
resolve time (through the client's gate, retried), into a local file, and then predicted
like a local video (the frame options apply).
"""

from __future__ import annotations

import copy
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from connectors.encord.client import EncordClient
from connectors.encord.urls import data_url, parse_data_url
from engine.plugins import InputRef, PlatformInputs

__all__ = ["EncordFetcher", "download_video", "resolve_project_hashes"]


class EncordFetcher:
    """A picklable ``url -> bytes`` for ``encord://<project>/<data hash>`` images.

    Args:
        client: The client to fetch with; None builds one from the environment.

    Example:
        >>> fetch = EncordFetcher()                                    # doctest: +SKIP
        >>> len(fetch("encord://0d6c.../5a1f..."))                     # doctest: +SKIP
        48213
    """

    def __init__(self, client: EncordClient | None = None) -> None:
        self.client = client if client is not None else EncordClient()
        self._limiter: Any = None

    def open(
        self, requests_per_second: float | None = 10.0, max_in_flight: int | None = 8
    ) -> EncordFetcher:
        """A copy whose requests share a new rate limiter; `close` the copy after the job.

        Args:
            requests_per_second: Requests started per second, over every decode task.
            max_in_flight: Requests running at once.
        """
        from connectors.runtime import LimiterGate, new_rate_limiter  # Ray: only in a job

        limiter = new_rate_limiter(requests_per_second, max_in_flight)
        client = copy.copy(self.client)
        client.gate = LimiterGate(limiter)
        opened = EncordFetcher(client)
        opened._limiter = limiter
        return opened

    def close(self) -> None:
        """Stop the rate limiter that `open` started (nothing for an unopened fetcher)."""
        if self._limiter is not None:
            import ray

            ray.kill(self._limiter)
            self._limiter = None

    def __call__(self, url: str) -> bytes:
        """Return the encoded image ``url`` names.

        Raises:
            ValueError: ``url`` is not an Encord data URL, or names no image.
        """
        parsed = parse_data_url(url)
        if parsed is None:
            raise ValueError(f"{url}: not an Encord data URL (encord://<project>/<data hash>)")
        project_hash, data_hash = parsed
        project = self.client.project(project_hash)
        _, images = self.client.with_retries(
            lambda: project.get_data(data_hash, get_signed_url=True), f"get data {data_hash}"
        )
        if not images:
            raise ValueError(f"{url}: the Encord data unit is not an image")
        link = str(images[0]["file_link"])
        return self.client.with_retries(
            lambda: self.client.download(link, f"media {data_hash}"), f"media {data_hash}"
        )

    def __repr__(self) -> str:
        return f"EncordFetcher(domain={self.client.domain!r})"


def download_video(
    client: EncordClient, project_hash: str, data_hash: str, path: str | Path
) -> Path:
    """Download video ``data_hash`` into ``path`` (a signed link, then the media; retried).

    The file appears under its final name only once complete.

    Raises:
        ValueError: The data unit is not a video.
        connectors.base.DeliveryError: The platform refused, or retries were spent.
    """
    path = Path(path)
    project = client.project(project_hash)
    video, _ = client.with_retries(
        lambda: project.get_data(data_hash, get_signed_url=True), f"get data {data_hash}"
    )
    if not video:
        raise ValueError(
            f"{data_url(project_hash, data_hash)}: the Encord data unit is not a video"
        )
    link = str(video["file_link"])
    return client.with_retries(
        lambda: client.download_to(link, path, f"video {data_hash}"), f"video {data_hash}"
    )


def _kind(row: Any) -> str:
    return str(getattr(row.data_type, "value", row.data_type)).lower()


def resolve_project_hashes(
    project_hashes: Sequence[str],
    client: EncordClient | None = None,
    video_dir: str | Path | None = None,
) -> PlatformInputs:
    """The image and video data units of ``project_hashes`` (one listing request a project).

    Each video is downloaded once into ``video_dir`` (default: a new temporary folder).

    Raises:
        ValueError: A project holds other media (image groups, DICOM...).
        connectors.base.DeliveryError: The platform refused (401, 403, no project).
    """
    client = client if client is not None else EncordClient()
    refs: list[InputRef] = []
    folder: Path | None = Path(video_dir) if video_dir else None
    for project_hash in project_hashes:
        project = client.project(str(project_hash))
        rows = client.with_retries(
            lambda p=project: p.list_label_rows_v2(branch_name="main"), "list label rows"
        )
        others = sorted({str(r.data_type) for r in rows if _kind(r) not in ("image", "video")})
        if others:
            raise ValueError(
                f"the Encord project {project_hash} holds {', '.join(others)} data units; "
                "only images and videos are predicted from Encord for now"
            )
        for row in rows:
            url = data_url(str(project_hash), row.data_hash)
            if _kind(row) != "video":
                refs.append(
                    InputRef(name=row.data_title, url=url, dataset=row.dataset_title or None)
                )
                continue
            if folder is None:
                folder = Path(tempfile.mkdtemp(prefix="tessera-encord-"))
            folder.mkdir(parents=True, exist_ok=True)
            safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(row.data_title)).name) or "video"
            path = download_video(
                client, str(project_hash), row.data_hash, folder / f"{row.data_hash}_{safe}"
            )
            refs.append(
                InputRef(
                    name=row.data_title,
                    url=url,
                    path=str(path),
                    dataset=row.dataset_title or None,
                    video=True,
                )
            )
    sources = {"encord_projects": [str(h) for h in project_hashes]}
    return PlatformInputs(refs=refs, fetch=EncordFetcher(client), sources=sources)
