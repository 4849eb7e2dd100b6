"""`AcmeUploader`: ``upload=..., to="acme"``, one annotation per Acme image, in a set.

Acme keeps annotations in named *sets*. ``upload="create"`` makes a new set (named by the
``set_name`` upload option, default ``tessera-<job id>``) holding the model's classes;
``upload="append"`` writes into the existing set ``set_name``, adding the model's classes
to it. Each prediction of an Acme image (``url == "acme://images/<id>"``) becomes one
annotation of that image, tagged with the job's id.

The upload runtime (`connectors.base.Connector.start_upload`) brings the rate limit, the
retries, the journal and the dead letter; this module only speaks Acme. Idempotency: a
delivery first asks which of its images already hold an annotation of this job and writes
only the others, so a retried batch whose first answer was lost creates no duplicate; a
set is looked up before it is created, for the same reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from connectors.base import Connector, DeliveryResult, RequestGate, UploadPlan
from engine.prediction import Prediction
from tessera_acme.client import AcmeClient
from tessera_acme.format import prediction_to_acme
from tessera_acme.urls import parse_image_url

__all__ = ["AcmeUploader"]

#: The upload options `AcmeUploader` takes (besides the runtime's).
OPTIONS = ("set_name",)


class AcmeUploader(Connector):
    """Uploads predictions of Acme images into an Acme annotation set.

    Args:
        client: The client to use; None builds one from ``server`` and ``token``.
        server: The server address (default ``$ACME_SERVER``).
        token: The API token (default ``$ACME_TOKEN``).

    Raises:
        tessera_acme.client.AcmeConfigError: No server or token was found.

    Example:
        >>> model.predict(acme_image_ids=[1, 2], upload="create", to="acme",
        ...               upload_options={"set_name": "run 1"})   # doctest: +SKIP
    """

    name = "acme"
    modes = ("create", "append")

    def __init__(
        self, client: AcmeClient | None = None, server: str | None = None, token: str | None = None
    ) -> None:
        super().__init__()
        self.client = client if client is not None else AcmeClient(server, token)
        self.set_id: int | None = None
        self.job_id: str | None = None

    def bind(self, gate: RequestGate) -> None:
        """Route the client's requests through ``gate`` too."""
        super().bind(gate)
        self.client.gate = gate

    def prepare(self, plan: UploadPlan) -> None:
        """Find or create the set of ``plan`` and make sure it knows the model's classes.

        Raises:
            ValueError: An unknown option; ``create`` of a set another job made;
                ``append`` without ``set_name`` or to a set that does not exist.
        """
        unknown = sorted(set(plan.options) - set(OPTIONS))
        if unknown:
            raise ValueError(f"unknown Acme upload options {unknown}; Acme takes: {list(OPTIONS)}")
        name = plan.options.get("set_name")
        if plan.mode == "create":
            found = self._create_set(name or f"tessera-{plan.job_id}", plan)
        else:
            if not name:
                raise ValueError("upload='append' to Acme needs upload_options={'set_name': ...}")
            existing = self.client.find_set(name)
            if existing is None:
                raise ValueError(f"no Acme set named {name!r} to append to")
            found = self.client.add_classes(existing["id"], plan.class_names)
        self.set_id, self.job_id = int(found["id"]), plan.job_id

    def _create_set(self, name: str, plan: UploadPlan) -> dict[str, Any]:
        def attempt() -> dict[str, Any]:  # a lost answer may have created it: look first
            found = self.client.find_set(name)
            return found or self.client.create_set(name, plan.job_id, plan.class_names)

        found = self.client.with_retries(attempt, f"Acme: create set {name!r}")
        if found.get("job") != plan.job_id:
            raise ValueError(
                f"an Acme set named {name!r} already exists; choose another set_name, "
                "or upload='append' to it"
            )
        return found

    def item_key(self, prediction: Prediction) -> str:
        """``"image:<id>"`` for an Acme image; a key naming the item for anything else."""
        image_id = parse_image_url(prediction.url)
        if image_id is None:
            return f"item:{prediction.index}:{prediction.name}"
        return f"image:{image_id}"

    def deliver(self, batch: Sequence[Prediction]) -> DeliveryResult:
        """Write the annotations of ``batch`` not yet in the set (two requests, once each)."""
        assert self.set_id is not None and self.job_id is not None, "prepare() first"
        failed: dict[str, str] = {}
        images: dict[int, Prediction] = {}
        for prediction in batch:
            image_id = parse_image_url(prediction.url)
            if image_id is None:
                failed[self.item_key(prediction)] = "not an Acme image (acme://images/<id>)"
            else:
                images[image_id] = prediction
        if images:
            done = self.client.annotated_images(self.set_id, self.job_id, images)
            todo = [(i, prediction_to_acme(p)) for i, p in images.items() if i not in done]
            if todo:
                rejected = self.client.add_annotations(self.set_id, self.job_id, todo)
                failed.update({f"image:{i}": reason for i, reason in rejected.items()})
        keys = [self.item_key(p) for p in batch]
        return DeliveryResult(delivered=[k for k in keys if k not in failed], failed=failed)

    def __repr__(self) -> str:
        return f"AcmeUploader(server={self.client.server!r}, set_id={self.set_id})"
