"""Which Kognic scene an image's prediction goes to: a dataset's scene list, or a mapping.

Every prediction is of one scene. An image finds its scene by the mapping the user gives
(``scenes``: image name -> scene uuid), else by the dataset's scene list: a scene whose
``externalId``, else whose ``name``, is the image's name (or the name without its suffix).
Kognic holds one prediction per scene, so each scene has one *owner*, the first name that
maps to it (the user's mapping in its order, then external ids, then names); another image
that maps to the same scene is refused (`SceneIndex.owner`).

The scene list is assumed to be ``GET /v1/datasets/{datasetUuid}/scenes`` answering
``{"data": [{"uuid", "externalId", "name"}, ...]}`` (not in Kognic's published API).

Example:
    >>> index = SceneIndex.build([{"uuid": "s1", "externalId": "a.png", "name": "A"}])
    >>> index.scene_of("a.png"), index.scene_of("b.png")
    ('s1', None)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from connectors.kognic.client import KognicClient

__all__ = ["SceneIndex", "list_scenes", "scenes_path"]


def scenes_path(dataset_uuid: str) -> str:
    """The path of a dataset's scene list.

    Example:
        >>> scenes_path("d1")
        '/v1/datasets/d1/scenes'
    """
    return f"/v1/datasets/{dataset_uuid}/scenes"


def list_scenes(client: KognicClient, dataset_uuid: str) -> list[dict[str, Any]]:
    """The scenes of a dataset (a GET, retried).

    Raises:
        connectors.base.DeliveryError: Kognic refused (an unknown dataset: 404).
        ValueError: The answer has no ``data`` list.
    """
    what = f"Kognic: list the scenes of dataset {dataset_uuid}"
    answer = client.call(what, lambda c: c.get(scenes_path(dataset_uuid), what))
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, list):
        raise ValueError(f"{what}: expected {{'data': [...]}}, got {str(answer)[:200]}")
    return data


@dataclass
class SceneIndex:
    """Image name -> scene uuid, and each scene's owner (the name that claims it first).

    Attributes:
        by_name: Name (image name, external id or scene name) -> scene uuid.
        owners: Scene uuid -> the name that owns it.
        known: The uuids of the dataset's scenes.
    """

    by_name: dict[str, str] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)
    known: set[str] = field(default_factory=set)

    @classmethod
    def build(
        cls, scenes: Iterable[Mapping[str, Any]], mapping: Mapping[str, str] | None = None
    ) -> SceneIndex:
        """Index ``scenes`` (the dataset's list) under the user's ``mapping``.

        Raises:
            ValueError: ``mapping`` is not image name -> scene uuid, or names a uuid that is
                not a scene of the dataset (the message lists them).
        """
        index = cls()
        listed = [dict(s) for s in scenes]
        index.known = {str(s["uuid"]) for s in listed if s.get("uuid")}
        if mapping is not None and not isinstance(mapping, Mapping):
            raise ValueError(
                "the Kognic option scenes must map image names to scene uuids, "
                f"got {type(mapping).__name__}"
            )
        unknown = sorted({str(v) for v in (mapping or {}).values()} - index.known)
        if unknown:
            raise ValueError(
                f"the Kognic option scenes names {len(unknown)} uuids that are not scenes of "
                f"the dataset: {unknown[:10]}"
            )
        for name, scene in (mapping or {}).items():
            index._claim(str(name), str(scene))
        for key in ("externalId", "name"):
            for scene in listed:
                if scene.get(key) and scene.get("uuid"):
                    index._claim(str(scene[key]), str(scene["uuid"]))
        return index

    def _claim(self, name: str, scene: str) -> None:
        if name not in self.by_name:
            self.by_name[name] = scene
            self.owners.setdefault(scene, name)

    def match(self, image_name: str) -> tuple[str, str] | None:
        """(scene uuid, the name it matched) of an image, or None when it has no scene.

        The image's name is tried as it is, then without its suffix (``a.png`` -> ``a``).

        Example:
            >>> SceneIndex.build([{"uuid": "s1", "externalId": "a"}]).match("a.png")
            ('s1', 'a')
        """
        for name in (image_name, PurePosixPath(image_name).stem):
            if name in self.by_name:
                return self.by_name[name], name
        return None

    def scene_of(self, image_name: str) -> str | None:
        """The scene uuid of an image, or None."""
        found = self.match(image_name)
        return found[0] if found else None

    def owner(self, scene: str) -> str | None:
        """The name that owns ``scene`` (the only one whose prediction goes there)."""
        return self.owners.get(scene)
