"""Where Acme inputs come from: image ids on the server, or a local Acme folder.

A local Acme folder holds ``acme.json`` beside its images::

    {"classes": ["car", ...],
     "images": [{"image": "a.png", "id": 7, "objects": [...]}, ...]}

``image`` is the file's name inside the folder and ``id`` (optional) the Acme image it is a
copy of, so that predictions made from the folder can be uploaded back. The Acme export
(`tessera_acme.exporter`) writes the same file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from engine.plugins import InputRef, PlatformInputs
from tessera_acme.client import AcmeClient
from tessera_acme.fetcher import AcmeFetcher
from tessera_acme.urls import image_url

__all__ = ["MANIFEST", "read_folder", "resolve_image_ids"]

#: The file that makes a folder an Acme folder.
MANIFEST = "acme.json"


def resolve_image_ids(image_ids: Sequence[int], client: AcmeClient | None = None) -> PlatformInputs:
    """List Acme images by id, in the order given, with the fetcher of their files.

    Args:
        image_ids: The images to predict.
        client: The client to ask; None builds one from the environment.

    Raises:
        ValueError: Some ids are not on the server (all of them are named).
    """
    client = client if client is not None else AcmeClient()
    found = {int(image["id"]): image for image in client.list_images(image_ids)}
    missing = [i for i in image_ids if i not in found]
    if missing:
        raise ValueError(f"Acme images not found on {client.server}: {missing}")
    refs = [
        InputRef(name=found[i]["name"], url=image_url(i), dataset=found[i].get("dataset"))
        for i in image_ids
    ]
    return PlatformInputs(
        refs=refs, fetch=AcmeFetcher(client), sources={"acme_image_ids": list(image_ids)}
    )


def read_folder(directory: Path) -> list[InputRef] | None:
    """The images of a local Acme folder, in manifest order; None if it is not one.

    An image listed but missing on disk keeps its ref (its prediction then says so).

    Raises:
        ValueError: ``acme.json`` is there but is not a valid manifest.
    """
    manifest = Path(directory) / MANIFEST
    if not manifest.is_file():
        return None
    try:
        entries = json.loads(manifest.read_text(encoding="utf-8"))["images"]
        return [_ref(Path(directory), entry) for entry in entries]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{manifest}: not an Acme manifest ({type(exc).__name__}: {exc})") from exc


def _ref(directory: Path, entry: dict[str, Any]) -> InputRef:
    name = str(entry["image"])
    relative = PurePosixPath(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"image {name!r} is not a file inside the folder")
    ident = entry.get("id")
    return InputRef(
        name=relative.name,
        path=str((directory / relative).absolute()),
        url=None if ident is None else image_url(int(ident)),
    )
