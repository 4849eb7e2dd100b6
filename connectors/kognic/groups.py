"""Kognic predictions groups: list a dataset's, find one by name or uuid, create one.

The calls (see ``../shared/FORMATS.md``, Kognic):

- ``GET /v1/datasets/{datasetUuid}/predictions-groups`` -> ``{"data": [{"uuid", "name",
  "description"}, ...]}``;
- ``POST /v1/datasets/{datasetUuid}/predictions-groups`` with ``{"name", "description"}``
  (and, for a segmentation dataset, ``"classMapping"``) -> ``{"data": {"uuid": ...}}``;
- assumed (not in Kognic's published API): ``GET /v1/predictions-groups/{groupUuid}/predictions``
  -> ``{"data": [{"uuid", "sceneUuid"}, ...]}``, used to find the predictions an earlier try
  made before sending again. The ``classMapping`` is assumed to be a list of
  ``{"annotatedClass", "predictedClass"}`` pairs.

A group that ``create`` makes carries the job's marker (`job_marker`) at the end of its
description: a resumed job recognises its own group by it, and a group of the same name
without it belongs to someone else.

Example:
    >>> [(m["annotatedClass"], m["predictedClass"]) for m in class_mapping(["car"])]
    [('car', 'car'), ('_background', '_background')]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from connectors.base import DeliveryError
from connectors.kognic.client import KognicClient

__all__ = [
    "BACKGROUND",
    "class_mapping",
    "create_group",
    "find_group",
    "find_or_create_group",
    "job_marker",
    "list_groups",
    "list_predictions",
]

#: The class every segmentation ``classMapping`` holds on both sides.
BACKGROUND = "_background"


def job_marker(job_id: str) -> str:
    """The text ending the description of a group job ``job_id`` created.

    Example:
        >>> job_marker("j1")
        '[tessera job j1]'
    """
    return f"[tessera job {job_id}]"


def class_mapping(class_names: Iterable[str]) -> list[dict[str, str]]:
    """Each class to itself, ``_background`` included (a segmentation dataset's mapping)."""
    names = list(dict.fromkeys([*map(str, class_names), BACKGROUND]))
    return [{"annotatedClass": n, "predictedClass": n} for n in names]


def _data(answer: Any, what: str, kind: type) -> Any:
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, kind):
        raise ValueError(f"{what}: unexpected answer {str(answer)[:200]}")
    return data


def list_groups(client: KognicClient, dataset_uuid: str) -> list[dict[str, Any]]:
    """The predictions groups of a dataset (a GET, retried).

    Raises:
        connectors.base.DeliveryError: Kognic refused (an unknown dataset: 404).
    """
    what = f"Kognic: list the predictions groups of dataset {dataset_uuid}"
    path = f"/v1/datasets/{dataset_uuid}/predictions-groups"
    return _data(client.call(what, lambda c: c.get(path, what)), what, list)


def find_group(
    groups: Iterable[dict[str, Any]], name: str | None = None, uuid: str | None = None
) -> dict[str, Any] | None:
    """The group of that uuid (when given), else of that name; None when there is none.

    Example:
        >>> find_group([{"uuid": "g1", "name": "run"}], name="run")["uuid"]
        'g1'
    """
    for group in groups:
        if uuid is not None and str(group.get("uuid")) == str(uuid):
            return group
        if uuid is None and name is not None and group.get("name") == name:
            return group
    return None


def create_group(
    client: KognicClient,
    dataset_uuid: str,
    name: str,
    description: str,
    class_names: list[str] | None = None,
) -> str:
    """Create a predictions group once (a POST, not retried); return its uuid.

    Args:
        client: The client.
        dataset_uuid: The dataset.
        name: The group's name.
        description: Its description.
        class_names: The classes of a segmentation model: sent as ``classMapping``
            (`class_mapping`); None for a detection dataset.

    Raises:
        connectors.base.DeliveryError: Kognic refused (409: the name is taken).
    """
    body: dict[str, Any] = {"name": name, "description": description}
    if class_names is not None:
        body["classMapping"] = class_mapping(class_names)
    what = f"Kognic: create predictions group {name!r} in dataset {dataset_uuid}"
    answer = client.post(f"/v1/datasets/{dataset_uuid}/predictions-groups", body, what)
    found = _data(answer, what, dict)
    if not found.get("uuid"):
        raise ValueError(f"{what}: the answer has no uuid: {str(answer)[:200]}")
    return str(found["uuid"])


def find_or_create_group(
    client: KognicClient,
    dataset_uuid: str,
    name: str,
    description: str,
    job_id: str,
    class_names: list[str] | None = None,
) -> str:
    """The uuid of job ``job_id``'s group ``name``: found (a resume), else created once.

    A create whose answer was lost (retryable failure, or 409 after one) is looked up again
    by name, so a retry never makes a second group.

    Raises:
        ValueError: A group of that name exists that this job did not create.
        connectors.base.DeliveryError: Kognic refused, or kept failing.
    """
    marker = job_marker(job_id)

    def lookup() -> str | None:
        group = find_group(list_groups(client, dataset_uuid), name=name)
        if group is None:
            return None
        if not str(group.get("description") or "").endswith(marker):
            raise ValueError(
                f"a Kognic predictions group named {name!r} already exists in dataset "
                f"{dataset_uuid} (uuid {group.get('uuid')}) and this job did not create it: "
                "use upload='append' to add to it, or choose another predictions_group"
            )
        return str(group["uuid"])

    def attempt() -> str:
        found = lookup()
        if found is not None:
            return found
        try:
            return create_group(client, dataset_uuid, name, description, class_names)
        except DeliveryError as error:
            if error.status == 409:  # an earlier try landed after all: find it
                found = lookup()
                if found is not None:
                    return found
            raise

    return client.call(f"Kognic: predictions group {name!r}", lambda _: attempt())


def list_predictions(client: KognicClient, group_uuid: str) -> dict[str, str]:
    """Scene uuid -> prediction uuid of what a group holds (a GET, retried; assumed API).

    Raises:
        connectors.base.DeliveryError: Kognic refused (an unknown group: 404).
    """
    what = f"Kognic: list the predictions of group {group_uuid}"
    path = f"/v1/predictions-groups/{group_uuid}/predictions"
    rows = _data(client.call(what, lambda c: c.get(path, what)), what, list)
    return {str(r["sceneUuid"]): str(r.get("uuid")) for r in rows if r.get("sceneUuid")}
