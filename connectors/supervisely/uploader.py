"""`SuperviselyConnector`: uploads predictions into a Supervisely project.

`SuperviselyConnector.item_key` gives ``"image:<image_id>"`` for a prediction of a
Supervisely image (the id of the *source* image, also in ``create`` mode).

Idempotency: every object the connector writes carries the tag
``{"name": "tessera_job", "value": <job id>}``. An ``append`` or ``iou_merge`` write reads
the image's annotation, drops the objects of this job found there, and writes the rest
plus this job's objects (``annotations.bulk.add`` replaces an image's annotation), so a
write repeated after a lost answer, or a batch delivered twice, never duplicates objects.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import logging
import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from connectors.base import (
    UPLOAD_MODES,
    Connector,
    DeliveryError,
    DeliveryResult,
    RequestGate,
    UploadPlan,
)
from connectors.supervisely.annotation import (
    mask_to_bitmap,
    prediction_to_supervisely,
    supervisely_meta,
)
from connectors.supervisely.client import (
    JOB_TAG,
    JOB_TAG_META,
    MAX_ANNOTATIONS_PER_CALL,
    SuperviselyClient,
    parse_sly_url,
)
from engine.prediction import Prediction

__all__ = ["SuperviselyConnector"]

logger = logging.getLogger(__name__)

_SERVER_FIELDS = {"id", "classId", "labelerLogin", "createdAt", "updatedAt", "tagId"}


# ---------------------------------------------------------------------- geometry helpers
def _object_box(obj: dict[str, Any]) -> tuple[float, float, float, float] | None:
    """Exclusive xyxy box of a rectangle, bitmap or polygon object; None for others."""
    geometry = obj.get("geometryType")
    try:
        if geometry == "rectangle":
            (ax, ay), (bx, by) = obj["points"]["exterior"][:2]
            return min(ax, bx), min(ay, by), max(ax, bx) + 1, max(ay, by) + 1
        if geometry == "polygon":
            xs = [p[0] for p in obj["points"]["exterior"]]
            ys = [p[1] for p in obj["points"]["exterior"]]
            return min(xs), min(ys), max(xs) + 1, max(ys) + 1
        if geometry == "bitmap":
            data = zlib.decompress(base64.b64decode(obj["bitmap"]["data"]))
            with Image.open(io.BytesIO(data)) as png:
                width, height = png.size
            x, y = obj["bitmap"]["origin"]
            return x, y, x + width, y + height
    except (KeyError, TypeError, ValueError, OSError):
        return None
    return None


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _signature(obj: dict[str, Any]) -> str:
    """What an object is, without the fields the server adds (ids, dates, logins)."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in _SERVER_FIELDS}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(obj), sort_keys=True)


def _rectangle_as(obj: dict[str, Any], shape: str) -> dict[str, Any]:
    """Turn a rectangle object into the same area as a ``bitmap`` or ``polygon``."""
    (left, top), (right, bottom) = obj["points"]["exterior"][:2]
    out = {k: v for k, v in obj.items() if k != "points"}
    out["geometryType"] = shape
    if shape == "polygon":
        corners = [[left, top], [right, top], [right, bottom], [left, bottom]]
        out["points"] = {"exterior": corners, "interior": []}
    else:
        bitmap = mask_to_bitmap(np.ones((bottom - top + 1, right - left + 1), bool))
        bitmap["origin"] = [left, top]
        out["bitmap"] = bitmap
    return out


# ---------------------------------------------------------------------- connector
@dataclass
class _Target:
    key: str
    dataset_id: int
    image_id: int
    annotation: dict[str, Any]


class SuperviselyConnector(Connector):
    """Upload predictions to a Supervisely instance.

    Modes:
        create: a new project in the source project's workspace (or
            ``options["workspace_id"]``), named ``options["project_name"]`` or
            ``"<source> predictions"`` (a free variant when taken), mirroring the source
            datasets (nested ones too) with the images copied by hash; predictions are
            the copies' annotations. A resumed job finds its project again (its
            description is ``"tessera job <job id>"``).
        append: objects are added to each image's annotation in the source project.
        replace: each image's annotation is overwritten with the prediction.
        iou_merge: a predicted object whose box IoU with an existing object of the same
            class is at least ``options["iou_threshold"]`` (default 0.9) is dropped; the
            rest are appended.

    ``plan.sources`` keys: ``project_id`` (the source project), ``dataset_ids`` (optional:
    the datasets the items come from; default every dataset of the project) and
    ``image_ids`` (optional: in ``create`` only these images are copied). For modes other
    than ``create``, ``options["project_id"]`` may name the project instead.

    Before any annotation, the project meta gets the model's classes, the ``confidence``
    tag and the ``tessera_job`` tag (existing classes are kept). A class that exists with
    another shape is an error, except that rectangles are written as filled bitmaps or
    4-corner polygons into a class declared "bitmap" or "polygon" (so a segmentation
    object whose mask came out empty still fits a bitmap class).

    Args:
        client: The client to use; by default one is made from ``client_options``
            (``server_address``, ``token``, ``retry``, ``timeout``...) when first needed.
        **client_options: Passed to `SuperviselyClient`.

    Example:
        >>> connector = SuperviselyConnector()                        # doctest: +SKIP
        >>> connector.prepare(UploadPlan("job1", "append", ["car"],
        ...                              sources={"project_id": 12}))  # doctest: +SKIP
        >>> connector.deliver(predictions).delivered                  # doctest: +SKIP
        ['image:101', 'image:102']
    """

    name = "supervisely"
    modes = UPLOAD_MODES

    def __init__(self, client: SuperviselyClient | None = None, **client_options: Any) -> None:
        super().__init__()
        self._client = client
        self._client_options = client_options
        self.project_id: int | None = None
        self.job_id: str = ""
        self.mode: str = ""
        self.task: str = "detection"
        self.iou_threshold: float = 0.9
        self.keypoint_names: list[str] | None = None
        self._class_shapes: dict[str, str] = {}
        self._image_datasets: dict[int, int] = {}
        self._copies: dict[int, tuple[int, int]] = {}

    @property
    def client(self) -> SuperviselyClient:
        """The HTTP client, made on first use; its requests go through this connector's gate."""
        if self._client is None:
            self._client = SuperviselyClient(**self._client_options)
        self._client.gate = self.gate
        return self._client

    def validate(self) -> None:
        """Find the server address and token now (a missing one is a clear error)."""
        _ = self.client

    def bind(self, gate: RequestGate) -> None:
        """Route this connector's requests through ``gate`` (the runtime calls this)."""
        super().bind(gate)
        if self._client is not None:
            self._client.gate = gate

    def __repr__(self) -> str:
        return f"SuperviselyConnector(project_id={self.project_id!r}, mode={self.mode!r})"

    # ------------------------------------------------------------------ prepare
    def prepare(self, plan: UploadPlan) -> None:
        """Find or create the project, merge the meta, copy images (``create``).

        Raises:
            UnsupportedModeError: If ``plan.mode`` is not one of `modes`.
            ValueError: If the project is not known, a class exists with an incompatible
                shape, or a tag exists with another value type.
            DeliveryError: A request failed.
        """
        self.check_mode(plan.mode)
        self.job_id, self.mode, self.task = plan.job_id, plan.mode, plan.task
        self.iou_threshold = float(plan.options.get("iou_threshold", 0.9))
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {self.iou_threshold}")
        self.keypoint_names = plan.options.get("keypoint_names")
        if plan.task == "keypoints" and self.keypoint_names is None:
            raise ValueError(
                "the supervisely connector needs options['keypoint_names'] for a keypoints "
                "model (graph classes are declared with their nodes)"
            )
        source_project = plan.sources.get("project_id")
        dataset_ids = plan.sources.get("dataset_ids")
        if plan.mode == "create":
            if source_project is None:
                raise ValueError("upload='create' needs the source project: sources['project_id']")
            self.project_id = self._create_project(plan, int(source_project))
            self._merge_meta(plan)
            self._copy_images(int(source_project), dataset_ids, plan.sources.get("image_ids"))
        else:
            project = plan.options.get("project_id", source_project)
            if project is None:
                raise ValueError(
                    f"upload={plan.mode!r} needs a project: options['project_id'] or "
                    "sources['project_id']"
                )
            self.project_id = int(project)
            self._merge_meta(plan)
            self._map_images(self.project_id, dataset_ids)

    def _create_project(self, plan: UploadPlan, source_project: int) -> int:
        client = self.client
        source = client.project_info(source_project)
        workspace = int(plan.options.get("workspace_id") or source["workspaceId"])
        marker = f"tessera job {plan.job_id}"
        existing = client.list_projects(workspace)
        for project in existing:
            if project.get("description") == marker:
                logger.info("resuming into project %s (%s)", project["id"], project["name"])
                return int(project["id"])
        name = plan.options.get("project_name") or f"{source['name']} predictions"
        taken = {p["name"] for p in existing}
        free, n = name, 1
        while free in taken:
            n += 1
            free = f"{name} ({n})"
        if free != name:
            logger.info("project name %r is taken; creating %r", name, free)
        return int(client.create_project(workspace, free, marker)["id"])

    def _copy_images(
        self,
        source_project: int,
        dataset_ids: Iterable[int] | None,
        image_ids: Iterable[int] | None,
    ) -> None:
        client = self.client
        assert self.project_id is not None
        sources = {d["id"]: d for d in client.list_datasets(source_project)}
        scope = set(sources) if dataset_ids is None else {int(i) for i in dataset_ids}
        unknown = scope - set(sources)
        if unknown:
            raise ValueError(f"datasets {sorted(unknown)} are not in project {source_project}")
        wanted_images = None if image_ids is None else {int(i) for i in image_ids}
        # Parents of datasets in scope are mirrored too (empty), to keep the tree.
        mirror: set[int] = set()
        for dataset_id in scope:
            current: int | None = dataset_id
            while current is not None and current in sources and current not in mirror:
                mirror.add(current)
                current = sources[current].get("parentId")
        targets = {(d["name"], d.get("parentId")): d for d in client.list_datasets(self.project_id)}
        created: dict[int, int] = {}
        for dataset_id in sorted(mirror, key=lambda i: _depth(i, sources)):
            source = sources[dataset_id]
            parent = source.get("parentId")
            parent_copy = created.get(parent) if parent is not None else None
            found = targets.get((source["name"], parent_copy))
            if found is None:
                found = client.create_dataset(self.project_id, source["name"], parent_copy)
            created[dataset_id] = int(found["id"])
        for dataset_id in sorted(scope):
            copy_id = created[dataset_id]
            images = client.list_image_infos(dataset_id)
            if wanted_images is not None:
                images = [i for i in images if int(i["id"]) in wanted_images]
            present = {info["name"]: info for info in client.list_image_infos(copy_id)}
            missing = [i for i in images if i["name"] not in present]
            added = client.add_images(copy_id, [_image_ref(i) for i in missing])
            present.update({info["name"]: info for info in added})
            for image in images:
                self._copies[int(image["id"])] = (copy_id, int(present[image["name"]]["id"]))

    def _map_images(self, project_id: int, dataset_ids: Iterable[int] | None) -> None:
        client = self.client
        if dataset_ids is None:
            dataset_ids = [d["id"] for d in client.list_datasets(project_id)]
        for dataset_id in dataset_ids:
            for info in client.list_image_infos(int(dataset_id)):
                self._image_datasets[int(info["id"])] = int(dataset_id)

    def _merge_meta(self, plan: UploadPlan) -> None:
        assert self.project_id is not None
        wanted = supervisely_meta(plan.class_names, plan.task, keypoint_names=self.keypoint_names)
        wanted["tags"].append(dict(JOB_TAG_META))
        current = self.client.get_project_meta(self.project_id)
        merged = copy.deepcopy(current)
        merged.setdefault("classes", [])
        merged.setdefault("tags", [])
        classes = {c["title"]: c for c in merged["classes"]}
        changed = False
        for cls in wanted["classes"]:
            title = cls["title"]
            written = _written_shapes(cls["shape"], plan.task)
            existing = classes.get(title)
            if existing is None:
                merged["classes"].append(cls)
                classes[title] = cls
                changed = True
            elif not _shape_accepts(existing["shape"], written):
                raise ValueError(
                    f"class {title!r} exists in Supervisely project {self.project_id} with "
                    f"shape {existing['shape']!r}, but this {plan.task} model writes "
                    f"{' and '.join(sorted(written))} objects; rename the class in the "
                    "project or upload to another project"
                )
        tags = {t["name"]: t for t in merged["tags"]}
        for tag in wanted["tags"]:
            existing = tags.get(tag["name"])
            if existing is None:
                merged["tags"].append(tag)
                tags[tag["name"]] = tag
                changed = True
            elif existing.get("value_type") != tag["value_type"]:
                raise ValueError(
                    f"tag {tag['name']!r} exists in Supervisely project {self.project_id} "
                    f"with value_type {existing.get('value_type')!r}, but Tessera writes "
                    f"{tag['value_type']!r} values"
                )
        if changed:
            self.client.update_project_meta(self.project_id, merged)
        self._class_shapes = {c["title"]: c["shape"] for c in merged["classes"]}

    # ------------------------------------------------------------------ deliver
    def item_key(self, prediction: Prediction) -> str:
        """``"image:<id>"`` for ``url == "sly://images/<id>"``.

        Frames of a Supervisely video give ``"video:<id>:frame:<n>"``; any other
        prediction gives ``"unresolved:<source>:<name or index>"`` (and fails in
        `deliver`).
        """
        parsed = parse_sly_url(prediction.url)
        if parsed is None:
            return f"unresolved:{prediction.source}:{prediction.name or prediction.index}"
        kind, ident = parsed
        if kind == "videos":
            return f"video:{ident}:frame:{prediction.frame_index}"
        return f"image:{ident}"

    def deliver(self, batch: Sequence[Prediction]) -> DeliveryResult:
        """Write a batch of predictions, in bulk per dataset (at most 50 images a call).

        Idempotent: objects carry this job's tag, and a write first removes the objects
        of this job already on the image, so a repeat never duplicates.

        Raises:
            DeliveryError: A retryable request failed after its retries (the runtime
                may deliver the batch again).
        """
        if self.project_id is None:
            raise RuntimeError("SuperviselyConnector.deliver called before prepare")
        result = DeliveryResult()
        targets: dict[str, _Target] = {}
        for prediction in batch:
            key = self.item_key(prediction)
            reason = self._target(prediction, key, targets)
            if reason is not None:
                result.failed[key] = reason
        by_dataset: dict[int, list[_Target]] = defaultdict(list)
        for target in targets.values():
            if target.key not in result.failed:
                by_dataset[target.dataset_id].append(target)
        for dataset_id, items in by_dataset.items():
            for start in range(0, len(items), MAX_ANNOTATIONS_PER_CALL):
                chunk = items[start : start + MAX_ANNOTATIONS_PER_CALL]
                self._write(dataset_id, chunk, result)
        return result

    def _target(self, prediction: Prediction, key: str, targets: dict[str, _Target]) -> str | None:
        """Add the prediction to ``targets``; return why it cannot be delivered, or None."""
        parsed = parse_sly_url(prediction.url)
        if parsed is None:
            return (
                f"not a Supervisely image: url {prediction.url!r} is not 'sly://images/<image_id>'"
            )
        if parsed[0] == "videos":
            return "uploading predictions on Supervisely videos is not supported yet"
        if prediction.error is not None:
            return f"prediction failed: {prediction.error}"
        image_id = parsed[1]
        if self.mode == "create":
            if image_id not in self._copies:
                return f"image {image_id} was not copied into project {self.project_id}"
            dataset_id, target_id = self._copies[image_id]
        else:
            dataset_id = self._image_datasets.get(image_id)
            if dataset_id is None:
                try:
                    info = self.client.image_info(image_id)
                except DeliveryError as e:
                    if e.retryable:
                        raise
                    return str(e)
                dataset_id = self._image_datasets[image_id] = int(info["datasetId"])
            target_id = image_id
        try:
            annotation = self._annotation(prediction)
        except ValueError as e:
            return str(e)
        previous = targets.get(key)
        if previous is not None:  # the same image twice in a batch: write both
            previous.annotation["objects"].extend(annotation["objects"])
            previous.annotation["tags"].extend(annotation["tags"])
        else:
            targets[key] = _Target(key, dataset_id, target_id, annotation)
        return None

    def _annotation(self, prediction: Prediction) -> dict[str, Any]:
        if prediction.height <= 0 or prediction.width <= 0:
            raise ValueError("prediction has no image size (height/width 0)")
        annotation = prediction_to_supervisely(
            prediction, task=self.task, keypoint_names=self.keypoint_names
        )
        objects = []
        for obj in annotation["objects"]:
            obj["tags"].append({"name": JOB_TAG, "value": self.job_id})
            shape = self._class_shapes.get(obj["classTitle"])
            if shape is None:
                raise ValueError(f"class {obj['classTitle']!r} is not in the project meta")
            if obj["geometryType"] == "rectangle" and shape in ("bitmap", "polygon"):
                obj = _rectangle_as(obj, shape)
            objects.append(obj)
        annotation["objects"] = objects
        return annotation

    def _is_ours(self, obj: dict[str, Any]) -> bool:
        return any(
            t.get("name") == JOB_TAG and t.get("value") == self.job_id for t in obj.get("tags", [])
        )

    def _merged(self, current: dict[str, Any] | None, ours: dict[str, Any]) -> dict[str, Any]:
        if current is None:
            current = {"description": "", "size": ours["size"], "tags": [], "objects": []}
        base = [o for o in current.get("objects", []) if not self._is_ours(o)]
        new = ours["objects"]
        if self.mode == "iou_merge":
            boxes = [(o.get("classTitle"), _object_box(o)) for o in base]
            kept = []
            for obj in new:
                box = _object_box(obj)
                duplicate = box is not None and any(
                    title == obj["classTitle"]
                    and other is not None
                    and _iou(box, other) >= self.iou_threshold
                    for title, other in boxes
                )
                if not duplicate:
                    kept.append(obj)
            new = kept
        tags = list(current.get("tags", []))
        signatures = {_signature(t) for t in tags}
        tags += [t for t in ours["tags"] if _signature(t) not in signatures]
        return {**current, "tags": tags, "objects": base + new}

    def _write(self, dataset_id: int, chunk: list[_Target], result: DeliveryResult) -> None:
        pairs: list[tuple[_Target, dict[str, Any]]] = []
        if self.mode in ("append", "iou_merge"):
            current = self.client.annotations_info(dataset_id, [t.image_id for t in chunk])
            for target in chunk:
                existing = current.get(target.image_id)
                merged = self._merged(existing, target.annotation)
                if existing is not None and _same_content(existing, merged):
                    result.delivered.append(target.key)  # already there (a repeat)
                else:
                    pairs.append((target, merged))
        else:
            pairs = [(target, target.annotation) for target in chunk]
        if not pairs:
            return
        try:
            self.client.add_annotations(dataset_id, [(t.image_id, a) for t, a in pairs])
            result.delivered.extend(t.key for t, _ in pairs)
            return
        except DeliveryError as e:
            if e.retryable:
                raise
            if len(pairs) == 1:
                result.failed[pairs[0][0].key] = str(e)
                return
        # A call was refused: write image by image to find which ones the server rejects.
        for target, annotation in pairs:
            try:
                self.client.add_annotations(dataset_id, [(target.image_id, annotation)])
                result.delivered.append(target.key)
            except DeliveryError as e:
                if e.retryable:
                    raise
                result.failed[target.key] = str(e)


def _same_content(a: dict[str, Any], b: dict[str, Any]) -> bool:
    def signatures(ann: dict[str, Any], field: str) -> list[str]:
        return sorted(_signature(x) for x in ann.get(field, []))

    return signatures(a, "objects") == signatures(b, "objects") and signatures(
        a, "tags"
    ) == signatures(b, "tags")


def _image_ref(info: dict[str, Any]) -> dict[str, Any]:
    if info.get("hash"):
        return {"name": info["name"], "hash": info["hash"]}
    if info.get("link"):
        return {"name": info["name"], "link": info["link"]}
    raise ValueError(f"image {info['id']} ({info['name']}) has neither a hash nor a link")


def _depth(dataset_id: int, datasets: dict[int, dict[str, Any]]) -> int:
    depth, current, seen = 0, datasets[dataset_id].get("parentId"), {dataset_id}
    while current is not None and current in datasets and current not in seen:
        seen.add(current)
        depth += 1
        current = datasets[current].get("parentId")
    return depth


def _written_shapes(declared: str, task: str) -> set[str]:
    """Geometry types the connector writes for a class `supervisely_meta` declares so."""
    if declared == "graph":
        return {"graph"}
    if task == "instance_segmentation":
        return {"bitmap", "rectangle"}  # an empty mask falls back to its rectangle
    return {"rectangle"}


def _shape_accepts(shape: str, written: set[str]) -> bool:
    if shape == "any" or written == {shape}:
        return True
    # Rectangles are converted into a bitmap or polygon class's shape.
    return shape in ("bitmap", "polygon") and written <= {"rectangle", shape}
