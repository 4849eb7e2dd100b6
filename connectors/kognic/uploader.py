"""`KognicConnector`: ``upload="create"|"append", to="kognic"``: into a predictions group.

A job writes one OpenLABEL prediction (`connectors.kognic.format`) per Kognic scene into a
predictions group of a dataset:

1. ``prepare`` (once, in the driver) reads the dataset's scene list
   (`connectors.kognic.scenes`), finds the group (``append``: by ``predictions_group`` or
   ``predictions_group_uuid``) or makes it (``create``, `connectors.kognic.groups`), and lists
   the predictions the group already holds;
2. ``deliver`` (in the uploader actors) sends ``POST /v1/predictions-groups/{uuid}/predictions``
   with ``{"sceneUuid", "openlabelContent"}`` for each scene of its batch, several at once
   (one thread per connection the uploader may hold).

An item is a scene (``scene:<uuid>``). An image with no scene is dead ("no Kognic scene
..."); a second image that maps to a scene another image owns is dead too (Kognic holds one
prediction per scene). A scene the group already holds a prediction for is counted as
delivered and not sent again.

Exactly once: Kognic's client never retries a POST, and this connector retries 429, 5xx
and dropped connections itself (the runtime's retries). A POST whose answer was lost may
have landed, so before sending a scene again (any attempt after a failure in this process)
the connector lists the group's predictions and skips the scenes found there. A first
attempt needs no lookup: the listing ``prepare`` made is of this run, and within a run a
scene is one item, which one uploader delivers (a resume is a new run, whose ``prepare``
lists again). This holds while one run of a job is going at a time and nobody else writes
the same scenes of the group meanwhile.

Connections: Kognic advises at most 10 at once. ``max_in_flight`` defaults to 10 and a
higher value is refused; ``num_uploaders`` defaults to `DEFAULT_UPLOADERS`, and each
uploader's session holds at most ``10 // num_uploaders`` connections (a blocking pool), so
that the job never has more than 10 open, idle keep-alive connections included. A resumed
job (``tessera upload --resume``) runs with the runtime's defaults (4 uploaders), each
holding `connectors.kognic.client.DEFAULT_POOL_SIZE` (2) connections. The driver closes its
own connections once ``prepare`` is done.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from connectors.base import Connector, DeliveryError, DeliveryResult, RequestGate, UploadPlan
from connectors.formats.names import image_file_name
from connectors.kognic.client import KognicClient
from connectors.kognic.format import DEFAULT_STREAM, check_task, prediction_to_openlabel
from connectors.kognic.groups import (
    find_group,
    find_or_create_group,
    job_marker,
    list_groups,
    list_predictions,
)
from connectors.kognic.scenes import SceneIndex, list_scenes
from engine.prediction import Prediction

__all__ = [
    "DEFAULT_UPLOADERS",
    "MAX_CONNECTIONS",
    "OPTIONS",
    "KognicConnector",
    "check_runtime",
    "connections_per_uploader",
]

logger = logging.getLogger(__name__)

#: Kognic's advice: at most this many connections at once.
MAX_CONNECTIONS = 10
#: Uploader actors of a job, when the user does not say.
DEFAULT_UPLOADERS = 2
#: The upload options `KognicConnector` takes (besides the runtime's).
OPTIONS = (
    "dataset_uuid",
    "predictions_group",
    "predictions_group_uuid",
    "description",
    "scenes",
    "stream",
)
#: The description of a group ``create`` makes, when none is given.
DEFAULT_DESCRIPTION = "Predictions from Tessera"


def check_runtime(options: dict[str, Any]) -> None:
    """Refuse runtime options that would break Kognic's limit of 10 connections.

    Raises:
        ValueError: ``max_in_flight`` is unset (None) or above 10, or ``num_uploaders`` is
            above 10 (each uploader holds at least one connection).

    Example:
        >>> check_runtime({"max_in_flight": 12})
        Traceback (most recent call last):
        ...
        ValueError: max_in_flight=12 is above Kognic's limit of 10 connections at once

    """
    if "max_in_flight" in options:
        value = options["max_in_flight"]
        if value is None or int(value) > MAX_CONNECTIONS:
            raise ValueError(
                f"max_in_flight={value} is above Kognic's limit of {MAX_CONNECTIONS} "
                "connections at once"
            )
    if "num_uploaders" in options and int(options["num_uploaders"]) > MAX_CONNECTIONS:
        raise ValueError(
            f"num_uploaders={options['num_uploaders']} is above Kognic's limit of "
            f"{MAX_CONNECTIONS} connections at once (each uploader holds one at least)"
        )


def connections_per_uploader(num_uploaders: int, max_in_flight: int) -> int:
    """Connections each uploader may hold so that all of them hold at most 10.

    Example:
        >>> connections_per_uploader(2, 10), connections_per_uploader(3, 10)
        (5, 3)
    """
    return max(1, min(MAX_CONNECTIONS // max(int(num_uploaders), 1), int(max_in_flight)))


def _checked(mode: str, options: dict[str, Any]) -> dict[str, Any]:
    """The connector's own options, checked (runtime options are let through)."""
    from connectors.runtime import RUNTIME_OPTIONS

    unknown = sorted(set(options) - set(OPTIONS) - set(RUNTIME_OPTIONS))
    if unknown:
        raise ValueError(f"unknown Kognic upload options {unknown}; Kognic takes: {list(OPTIONS)}")
    if not options.get("dataset_uuid"):
        raise ValueError(
            "an upload to Kognic needs upload_options={'dataset_uuid': ...} (the dataset "
            "whose predictions group receives the predictions)"
        )
    if mode == "create" and options.get("predictions_group_uuid"):
        raise ValueError(
            "upload='create' makes a new predictions group: drop predictions_group_uuid, or "
            "use upload='append' to write into that group"
        )
    if mode == "append" and not (
        options.get("predictions_group") or options.get("predictions_group_uuid")
    ):
        raise ValueError(
            "upload='append' to Kognic needs upload_options={'predictions_group': NAME} or "
            "{'predictions_group_uuid': UUID}"
        )
    scenes = options.get("scenes")
    if scenes is not None and not (
        isinstance(scenes, dict) and all(isinstance(v, str) and v for v in scenes.values())
    ):
        raise ValueError("the Kognic option scenes must map image names to scene uuids (strings)")
    stream = options.get("stream", DEFAULT_STREAM)
    if not isinstance(stream, str) or not stream.strip():
        raise ValueError(f"the Kognic option stream must be a camera id (a string), got {stream!r}")
    for key in ("predictions_group", "description"):
        if key in options and not isinstance(options[key], str):
            raise ValueError(f"the Kognic option {key} must be a string, got {options[key]!r}")
    check_runtime(options)
    return {k: v for k, v in options.items() if k not in RUNTIME_OPTIONS}


class KognicConnector(Connector):
    """Uploads predictions into a Kognic predictions group (see the module docstring).

    Modes:
        create: a new group named ``predictions_group`` (default ``tessera-<job id>``);
            refused when a group of that name exists that this job did not create (a
            resumed job finds its own).
        append: into the existing group ``predictions_group`` (a name) or
            ``predictions_group_uuid``.

    Options:
        dataset_uuid: The dataset (required).
        predictions_group, predictions_group_uuid: The group (see the modes).
        description: The description of the group ``create`` makes.
        scenes: Image name -> scene uuid (default: by the dataset's scene list).
        stream: The camera id of the ``stream`` attribute (default ``"CAM"``).

    Credentials are never options: they come from the environment (`KognicClient`).

    Args:
        client: The client to use; None builds one from the environment and the arguments.
        client_id: The client id (default ``$KOGNIC_CLIENT_ID``...).
        client_secret: The client secret.
        host: The API host (default ``$KOGNIC_HOST``, else Kognic's).
        auth_host: The authentication host (default ``$KOGNIC_AUTH_HOST``).

    Example:
        >>> model.predict("images/", upload="create", to="kognic",
        ...               upload_options={"dataset_uuid": "5b0e..."})   # doctest: +SKIP
    """

    name = "kognic"
    modes = ("create", "append")

    def __init__(
        self,
        client: KognicClient | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        host: str | None = None,
        auth_host: str | None = None,
    ) -> None:
        super().__init__()
        self.client = (
            client
            if client is not None
            else KognicClient(client_id, client_secret, host=host, auth_host=auth_host)
        )
        self.job_id = ""
        self.dataset_uuid: str | None = None
        self.group_uuid: str | None = None
        self.stream = DEFAULT_STREAM
        self.scenes: SceneIndex | None = None
        self._existing: dict[str, str] = {}  # scene uuid -> prediction uuid, in the group
        self._tried: set[str] = set()  # scenes this process has sent (or tried to)
        self._refused: dict[str, str] = {}  # scene -> Kognic's refusal, in this process

    def bind(self, gate: RequestGate) -> None:
        """Route the client's requests through ``gate`` too."""
        super().bind(gate)
        self.client.gate = gate

    def validate(self) -> None:
        """Check the credentials were found and the hosts are URLs (no request is sent).

        Raises:
            connectors.kognic.client.KognicConfigError: What is missing, by variable name.
        """
        self.client.check()

    def check_options(self, mode: str, options: dict[str, Any]) -> None:
        """Refuse an unknown or missing option, or a limit above 10 connections, at once."""
        _checked(mode, options)

    def start_upload(
        self,
        job_id: str,
        mode: str,
        class_names: list[str],
        task: str,
        options: dict[str, Any],
        sources: dict[str, Any],
    ) -> Any:
        """`Connector.start_upload` with Kognic's connection limit as the defaults.

        ``max_in_flight`` defaults to 10 and ``num_uploaders`` to `DEFAULT_UPLOADERS`; each
        uploader holds `connections_per_uploader` connections at most.
        """
        options = {
            "max_in_flight": MAX_CONNECTIONS,
            "num_uploaders": DEFAULT_UPLOADERS,
            **options,
        }
        check_runtime(options)
        self.client.pool_size = connections_per_uploader(
            options["num_uploaders"], options["max_in_flight"]
        )
        return super().start_upload(job_id, mode, class_names, task, options, sources)

    def prepare(self, plan: UploadPlan) -> None:
        """Check the options and task; read the scenes; find or make the group.

        Raises:
            UnsupportedModeError: ``plan.mode`` is not supported.
            connectors.kognic.format.KognicTaskError: The model's task is not one Kognic
                takes predictions of (classification, keypoints).
            ValueError: An unknown or missing option; ``create`` of a name another group
                has; ``append`` to a group the dataset does not have.
            DeliveryError: Kognic refused (the credentials: 401; an unknown dataset: 404).
        """
        self.check_mode(plan.mode)
        options = _checked(plan.mode, plan.options)
        check_task(plan.task)
        self.client.check()
        self.job_id = plan.job_id
        self.dataset_uuid = str(options["dataset_uuid"])
        self.stream = str(options.get("stream", DEFAULT_STREAM))
        try:
            self.scenes = SceneIndex.build(
                list_scenes(self.client, self.dataset_uuid), options.get("scenes")
            )
            if plan.mode == "create":
                name = str(options.get("predictions_group") or f"tessera-{plan.job_id}")
                description = str(options.get("description") or DEFAULT_DESCRIPTION)
                masks = plan.task == "instance_segmentation"
                self.group_uuid = find_or_create_group(
                    self.client,
                    self.dataset_uuid,
                    name,
                    f"{description} {job_marker(plan.job_id)}",
                    plan.job_id,
                    list(plan.class_names) if masks else None,
                )
            else:
                self.group_uuid = self._existing_group(options)
            self._existing = list_predictions(self.client, self.group_uuid)
        finally:
            self.client.close()  # the uploaders hold the job's connections, not the driver

    def _existing_group(self, options: dict[str, Any]) -> str:
        assert self.dataset_uuid is not None
        groups = list_groups(self.client, self.dataset_uuid)
        uuid, name = options.get("predictions_group_uuid"), options.get("predictions_group")
        group = find_group(groups, name=name, uuid=uuid)
        if group is None:
            wanted = f"uuid {uuid}" if uuid else f"named {name!r}"
            names = sorted(str(g.get("name")) for g in groups)
            raise ValueError(
                f"upload='append': dataset {self.dataset_uuid} has no predictions group "
                f"{wanted}; its groups: {names or 'none'} (upload='create' makes one)"
            )
        return str(group["uuid"])

    # ------------------------------------------------------------------ items
    def _scenes(self) -> SceneIndex:
        if self.scenes is None:
            raise RuntimeError("KognicConnector.prepare() must run first")
        return self.scenes

    def item_key(self, prediction: Prediction) -> str:
        """``"scene:<uuid>"`` for the image that owns its scene; another key otherwise.

        ``"image:<name>"`` names an image with no scene, ``"scene:<uuid>:image:<name>"``
        one whose scene another image owns; both are dead on delivery, with the reason.
        """
        name = image_file_name(prediction)
        found = self._scenes().match(name)
        if found is None:
            return f"image:{name}"
        scene, matched = found
        if self._scenes().owner(scene) != matched:
            return f"scene:{scene}:image:{name}"
        return f"scene:{scene}"

    def _refusal(self, prediction: Prediction) -> tuple[str | None, str | None]:
        """(scene uuid, None) for an item to send, or (None, why it cannot go)."""
        name = image_file_name(prediction)
        found = self._scenes().match(name)
        if found is None:
            return None, (
                f"no Kognic scene for image {name!r} in dataset {self.dataset_uuid}: no scene "
                "has it (or its name without suffix) as externalId or name, and the scenes "
                "option does not map it"
            )
        scene, matched = found
        owner = self._scenes().owner(scene)
        if owner != matched:
            return None, (
                f"image {name!r} maps to Kognic scene {scene}, which {owner!r} maps to first: "
                "Kognic holds one prediction per scene"
            )
        return scene, None

    # ------------------------------------------------------------------ delivery
    def deliver(self, batch: Sequence[Prediction]) -> DeliveryResult:
        """Post the prediction of each scene of ``batch`` the group does not hold yet.

        Scenes are posted several at once (one per connection the uploader holds). When
        some fail retryably, the others are kept and a `DeliveryError` is raised: the
        retry lists the group first and sends only what is not there.

        Raises:
            DeliveryError: A retryable failure of at least one scene.
        """
        assert self.group_uuid is not None, "prepare() first"
        failed: dict[str, str] = {}
        delivered: list[str] = []
        todo: list[tuple[str, str, Prediction]] = []  # key, scene, prediction
        for prediction in batch:
            key = self.item_key(prediction)
            scene, reason = self._refusal(prediction)
            if scene is None:
                failed[key] = str(reason)
            elif scene in self._refused:
                failed[key] = self._refused[scene]
            else:
                todo.append((key, scene, prediction))
        if any(s in self._tried and s not in self._existing for _, s, _ in todo):
            # an earlier try may have landed without an answer: look before sending again
            self._existing.update(list_predictions(self.client, self.group_uuid))
        send: list[tuple[str, str, dict[str, Any]]] = []
        for key, scene, prediction in todo:
            if scene in self._existing:
                delivered.append(key)
                continue
            try:
                content = prediction_to_openlabel(prediction, self.stream, self.job_id, scene)
            except ValueError as error:
                failed[key] = f"{type(error).__name__}: {error}"
                continue
            send.append((key, scene, content))
        errors = self._post_all(send)
        retryable: list[DeliveryError] = []
        for (key, scene, _), error in zip(send, errors):
            if error is None:
                delivered.append(key)
            elif error.retryable:
                retryable.append(error)
            else:
                self._refused[scene] = str(error)
                failed[key] = str(error)
        if retryable:
            waits = [e.retry_after for e in retryable if e.retry_after is not None]
            raise DeliveryError(
                f"{len(retryable)} of {len(send)} Kognic predictions failed (retried, after "
                f"looking for what landed): {retryable[0]}",
                retryable=True,
                retry_after=max(waits) if waits else None,
                status=retryable[0].status,
            )
        return DeliveryResult(delivered=delivered, failed=failed)

    def _post_all(self, send: list[tuple[str, str, dict[str, Any]]]) -> list[DeliveryError | None]:
        if len(send) <= 1 or self.client.pool_size <= 1:
            return [self._post(scene, content) for _, scene, content in send]
        workers = min(self.client.pool_size, len(send))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kognic") as pool:
            return list(pool.map(lambda item: self._post(item[1], item[2]), send))

    def _post(self, scene: str, content: dict[str, Any]) -> DeliveryError | None:
        """Post one scene's prediction once; None when Kognic took it, else the error."""
        self._tried.add(scene)
        what = f"Kognic: post the prediction of scene {scene}"
        body = {"sceneUuid": scene, "openlabelContent": content}
        try:
            answer = self.client.post(
                f"/v1/predictions-groups/{self.group_uuid}/predictions", body, what
            )
        except DeliveryError as error:
            return error
        data = answer.get("data") if isinstance(answer, dict) else None
        self._existing[scene] = str(data.get("uuid")) if isinstance(data, dict) else ""
        return None

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()

    def __repr__(self) -> str:
        return (
            f"KognicConnector(host={self.client.host!r}, dataset_uuid={self.dataset_uuid!r}, "
            f"predictions_group_uuid={self.group_uuid!r})"
        )
