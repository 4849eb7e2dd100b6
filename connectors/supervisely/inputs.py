"""Supervisely inputs: project, dataset, image and video ids -> media, and their fetcher."""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connectors.supervisely.client import SuperviselyClient, parse_sly_url, video_url

__all__ = ["SuperviselyFetcher", "SuperviselyInputs", "resolve_supervisely_inputs"]


# ---------------------------------------------------------------------- inputs
class SuperviselyFetcher:
    """Downloads Supervisely images named by ``sly://images/<id>`` URLs (picklable).

    The engine's decode tasks call it, each holding its own copy; every download goes
    through the client's gate, so a job's downloads share its rate limit.

    Args:
        client: The client to download with; None builds one from the environment.

    Example:
        >>> fetch = SuperviselyFetcher()                    # doctest: +SKIP
        >>> len(fetch("sly://images/42"))                   # doctest: +SKIP
        48213
    """

    def __init__(self, client: SuperviselyClient | None = None) -> None:
        self.client = client if client is not None else SuperviselyClient()

    def open(
        self, requests_per_second: float | None = 10.0, max_in_flight: int | None = 8
    ) -> SuperviselyFetcher:
        """A copy whose downloads share a new rate limiter (a Ray actor); see `close`.

        Args:
            requests_per_second: Download requests started per second, across every
                decode task of the job.
            max_in_flight: Downloads running at once.
        """
        from connectors.runtime import LimiterGate, new_rate_limiter

        limiter = new_rate_limiter(requests_per_second, max_in_flight)
        client = copy.copy(self.client)
        client.gate = LimiterGate(limiter)
        opened = SuperviselyFetcher(client)
        opened._limiter = limiter
        return opened

    def close(self) -> None:
        """Stop the rate limiter that `open` started, if any."""
        limiter = getattr(self, "_limiter", None)
        if limiter is not None:
            import ray

            ray.kill(limiter)
            self._limiter = None

    def __call__(self, url: str) -> bytes:
        """Return the encoded image a ``sly://images/<id>`` URL names."""
        parsed = parse_sly_url(url)
        if parsed is None or parsed[0] != "images":
            raise ValueError(f"{url}: not a Supervisely image URL (sly://images/<id>)")
        return self.client.download_image(parsed[1])

    def __repr__(self) -> str:
        return f"SuperviselyFetcher(server={self.client.server_address!r})"


@dataclass
class SuperviselyInputs:
    """Supervisely images and videos resolved for prediction.

    Attributes:
        images: One dict per image (see `SuperviselyClient.list_images`).
        videos: One dict per video: ``id``, ``name``, ``path`` (the local copy), ``url``,
            ``dataset``.
        sources: What an upload needs to know about where the inputs came from
            (``project_id``, ``dataset_ids``, ``image_ids``).
        fetcher: Downloads the images (see `SuperviselyFetcher`).
    """

    images: list[dict[str, Any]]
    videos: list[dict[str, Any]]
    sources: dict[str, Any]
    fetcher: SuperviselyFetcher


def resolve_supervisely_inputs(
    project_ids: Sequence[int] = (),
    dataset_ids: Sequence[int] = (),
    image_ids: Sequence[int] = (),
    video_ids: Sequence[int] = (),
    video_dir: str | Path | None = None,
    client: SuperviselyClient | None = None,
) -> SuperviselyInputs:
    """List the images of projects, datasets and ids, and fetch each video once.

    Args:
        project_ids: Every image of these projects.
        dataset_ids: Every image of these datasets.
        image_ids: These images.
        video_ids: These videos; each is downloaded once into ``video_dir`` and then
            predicted like a local video (frame options apply).
        video_dir: Where videos are kept (default: a new temporary folder).
        client: The client; None builds one from the environment.

    Returns:
        The images (in project, dataset, id order), the videos and the sources.
    """
    client = client if client is not None else SuperviselyClient()
    images: list[dict[str, Any]] = []
    for project_id in project_ids:
        images.extend(client.list_images(project_id=int(project_id)))
    for dataset_id in dataset_ids:
        images.extend(client.list_images(dataset_id=int(dataset_id)))
    if image_ids:
        images.extend(client.list_images(image_ids=[int(i) for i in image_ids]))
    videos: list[dict[str, Any]] = []
    if video_ids:
        folder = Path(video_dir) if video_dir else Path(tempfile.mkdtemp(prefix="tessera-sly-"))
        folder.mkdir(parents=True, exist_ok=True)
        for video_id in video_ids:
            info = client.video_info(int(video_id))
            name = str(info.get("name") or f"video_{video_id}.mp4")
            path = client.download_video(int(video_id), folder / f"{int(video_id)}_{name}")
            videos.append(
                {"id": int(video_id), "name": name, "path": str(path), "url": video_url(video_id)}
            )
    projects = {image["project_id"] for image in images if image.get("project_id") is not None}
    sources: dict[str, Any] = {
        "dataset_ids": sorted({image["dataset_id"] for image in images}),
        "image_ids": [image["id"] for image in images],
    }
    if len(projects) == 1:
        sources["project_id"] = int(next(iter(projects)))
    return SuperviselyInputs(images, videos, sources, SuperviselyFetcher(client))
