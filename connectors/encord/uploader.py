"""`EncordUploader`: ``upload=..., to="encord"``, predictions into a prediction branch.

Each predicted image becomes the objects (a classifier's: one classification instance) of
its data unit's label row on the branch named
by the ``branch_name`` upload option (``[A-Za-z0-9_.-]``, never ``main``), in project
``project_hash``. The model's classes are matched to the project's ontology objects by
title and shape before anything is sent (`connectors.encord.format.match_features`).

Modes:

- ``create``: a new branch; refused when the branch already holds another job's objects;
- ``append``: the job's objects join those already on the branch row;
- ``replace``: the branch row holds only the job's objects afterwards;
- ``iou_merge``: like ``append``, but a prediction whose box overlaps an object of the
  same feature already on the row with IoU >= ``iou_threshold`` (default 0.9) is dropped.

A classifier's answer is one classification instance a row (Encord keeps one per
classification and frame): ``append`` refuses a row that already holds one (the item goes
to the dead letter with the reason), ``iou_merge`` keeps the row's, ``replace`` overwrites.

A delivery lists the batch's rows on the branch (one request), initialises them (label
rows are created on the branch when missing), and saves them, in bundles of at most
``bundle_size`` rows (default 1,000) a request. The job's objects carry hashes derived
from the job id (`connectors.encord.format.object_hash`), and a delivery first removes the
job's own objects from the row, so a retry after a lost answer rewrites them: never a
duplicate. Images are found by their ``encord://`` URL (predictions of Encord inputs), by
the ``data_hashes`` option (image name -> data hash), or by the data unit's title.

Video frames (predictions with a ``frame_index``) go into their video's branch row, on the
frame of that index (``labels["<frame>"]``), normalised to the video's size, with the same
modes per frame (``replace`` clears what others wrote on the whole row and keeps the job's
own frames). A frame's objects carry hashes derived from the job, the frame and the object
(`video_object_hash`), so a re-delivery rewrites them. Frames of one video may reach several
uploader actors at once; each read-modify-save of a video row holds that row's lock
(`RowLocks`, one named actor per job), so one batch never overwrites another's frames.
A classifier's frame is one frame-level classification instance (the radio answer, with
its confidence) whose range is that frame only, in the row's ``classification_answers``
(where `encord.objects.LabelRowV2` keeps a video's classifications; its frame ``labels``
hold objects only), hashed from the job and the frame (`video_classification_hash`), so a
re-delivery rewrites it. Encord keeps one instance of a classification a frame: ``append``
refuses a frame that another's instance covers (that frame goes to the dead letter with the
reason), ``iou_merge`` keeps the other's, ``replace`` overwrites it.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from connectors.base import Connector, DeliveryResult, RequestGate, UploadPlan
from connectors.encord.client import EncordClient
from connectors.encord.format import (
    Classifier,
    Feature,
    box_iou,
    branch_name_error,
    match_classifier,
    match_features,
    object_box,
    prediction_classification,
    prediction_objects,
    video_object_hash,
)
from connectors.encord.urls import parse_data_url
from engine.prediction import Prediction

__all__ = ["DEFAULT_BUNDLE_SIZE", "OPTIONS", "EncordUploader", "RowLocks"]

#: Label rows a bundle request holds at most, by default (the SDK's default).
DEFAULT_BUNDLE_SIZE = 1000
#: The upload options `EncordUploader` takes (besides the runtime's).
OPTIONS = ("project_hash", "branch_name", "bundle_size", "iou_threshold", "data_hashes")


class EncordUploader(Connector):
    """Uploads predictions into a prediction branch of an Encord project's label rows.

    Args:
        client: The client to use; None builds one from the credentials.
        ssh_key: The SSH private key text (default ``$ENCORD_SSH_KEY``).
        ssh_key_file: Its file (default ``$ENCORD_SSH_KEY_FILE``).
        domain: The API address (default ``$ENCORD_DOMAIN``, else Encord's).

    Raises:
        connectors.encord.client.EncordConfigError: No key was found.

    Example:
        >>> model.predict("images/", upload="create", to="encord",
        ...               upload_options={"project_hash": "0d6c...",
        ...                               "branch_name": "model-v1"})   # doctest: +SKIP
    """

    name = "encord"
    modes = ("create", "append", "replace", "iou_merge")

    def __init__(
        self,
        client: EncordClient | None = None,
        ssh_key: str | None = None,
        ssh_key_file: str | None = None,
        domain: str | None = None,
    ) -> None:
        super().__init__()
        self.client = client if client is not None else EncordClient(ssh_key, ssh_key_file, domain)
        self.project_hash: str | None = None
        self.branch: str | None = None
        self.mode = "append"
        self.prefix = "0000"
        self.features: dict[str, Feature] = {}
        self.classifier: Classifier | None = None
        self.bundle_size = DEFAULT_BUNDLE_SIZE
        self.iou_threshold = 0.9
        self.by_name: dict[str, str] = {}
        self.job_id = ""
        self.locks: Any = None  # a RowLocks actor (under Ray), else the process's locks

    def bind(self, gate: RequestGate) -> None:
        """Route the client's calls through ``gate`` too."""
        super().bind(gate)
        self.client.gate = gate

    def validate(self) -> None:
        """Check the SSH key is a private key the SDK takes (no request is sent).

        Raises:
            connectors.encord.client.EncordConfigError: It is not.
        """
        self.client.check_key()

    # ------------------------------------------------------------------ prepare
    def check_options(self, mode: str, options: dict[str, Any]) -> None:
        """Refuse a bad or missing Encord option (a bad ``branch_name``...) before any work."""
        from connectors.runtime import RUNTIME_OPTIONS

        checked_options({k: v for k, v in options.items() if k not in RUNTIME_OPTIONS})

    def prepare(self, plan: UploadPlan) -> None:
        """Check the options, match the classes to the ontology, find the images.

        Raises:
            ValueError: An unknown or invalid option; a class with no ontology object;
                ``create`` of a branch that holds another job's objects.
            connectors.base.DeliveryError: The platform refused (401, 403, no project).
        """
        options = checked_options(plan.options)
        self.project_hash = str(options["project_hash"])
        self.branch = str(options.get("branch_name") or f"tessera-{plan.job_id}")
        self.mode = plan.mode
        self.bundle_size = int(options.get("bundle_size", DEFAULT_BUNDLE_SIZE))
        self.iou_threshold = float(options.get("iou_threshold", 0.9))
        self.prefix = hashlib.sha1(plan.job_id.encode()).hexdigest()[:4]
        project = self.client.project(self.project_hash)
        ontology = project.ontology_structure.to_dict()
        if plan.task == "classification":
            self.classifier = match_classifier(
                plan.class_names, ontology.get("classifications", [])
            )
        else:
            self.features = match_features(plan.class_names, plan.task, ontology.get("objects", []))
        rows = self.client.with_retries(
            lambda: project.list_label_rows_v2(branch_name="main"), "list label rows"
        )
        titles: dict[str, str] = {}
        for row in rows:
            titles.setdefault(row.data_title, row.data_hash)
        self.by_name = {
            **titles,
            **{str(k): str(v) for k, v in options.get("data_hashes", {}).items()},
        }
        if plan.mode == "create":
            self._check_new_branch(project)
        self.job_id = plan.job_id
        self.locks = None  # started by the first video delivery

    def _check_new_branch(self, project: Any) -> None:
        rows = self.client.with_retries(
            lambda: project.list_label_rows_v2(branch_name=self.branch), "list branch rows"
        )
        existing = [r for r in rows if r.label_hash]
        for chunk in _chunks(existing, self.bundle_size):
            self.client.with_retries(lambda c=chunk: _initialise(project, c), "read branch rows")
            for row in chunk:
                foreign = [o for o in _row_objects(row) if not self._ours(o)]
                if foreign:
                    raise ValueError(
                        f"the Encord branch {self.branch!r} already exists and holds objects "
                        "of another job; choose another branch_name, or upload='append' to it"
                    )

    # ------------------------------------------------------------------ delivery
    def item_key(self, prediction: Prediction) -> str:
        """``"data:<data hash>"`` for an image, ``"data:<data hash>:frame:<n>"`` for a frame.

        A prediction of no data unit of the project gets a key naming it.
        """
        data_hash = self._data_hash(prediction)
        if data_hash is None:
            return f"item:{prediction.index}:{prediction.name}"
        if prediction.frame_index is not None:
            return f"data:{data_hash}:frame:{int(prediction.frame_index)}"
        return f"data:{data_hash}"

    def _data_hash(self, prediction: Prediction) -> str | None:
        parsed = parse_data_url(prediction.url)
        if parsed is not None and parsed[0] == self.project_hash:
            return parsed[1]
        return self.by_name.get(prediction.name)

    def deliver(self, batch: Sequence[Prediction]) -> DeliveryResult:
        """Write the objects of ``batch`` into their branch rows (idempotent)."""
        assert self.project_hash is not None and self.branch is not None, "prepare() first"
        failed: dict[str, str] = {}
        targets: dict[str, Prediction] = {}
        frames: dict[str, dict[int, Prediction]] = {}
        for prediction in batch:
            key = self.item_key(prediction)
            data_hash = self._data_hash(prediction)
            if data_hash is None:
                failed[key] = f"no data unit titled {prediction.name!r} in the Encord project"
            elif prediction.frame_index is not None:
                frames.setdefault(data_hash, {})[int(prediction.frame_index)] = prediction
            else:
                targets[data_hash] = prediction
        if targets:
            failed.update(self._write(targets))
        if frames:
            failed.update(self._write_frames(frames))
        keys = [self.item_key(p) for p in batch]
        return DeliveryResult(delivered=[k for k in keys if k not in failed], failed=failed)

    def _write(self, targets: dict[str, Prediction]) -> dict[str, str]:
        project = self.client.project(self.project_hash or "")
        # 1) the batch's rows on the branch (one request)
        rows = self.client.call(
            lambda: project.list_label_rows_v2(data_hashes=list(targets), branch_name=self.branch),
            "list label rows",
        )
        found = {r.data_hash: r for r in rows}
        failed = {
            f"data:{h}": f"data unit {h} is not in the Encord project {self.project_hash}"
            for h in targets
            if h not in found
        }
        # 2) initialise them: created on the branch when missing, else read (bundled)
        to_create = [found[h] for h in targets if h in found and not found[h].label_hash]
        to_read = [found[h] for h in targets if h in found and found[h].label_hash]
        for chunk in [*_chunks(to_create, self.bundle_size), *_chunks(to_read, self.bundle_size)]:
            self.client.call(lambda c=chunk: _initialise(project, c), "initialise label rows")
        # 3) the job's objects in each row, replacing what the job wrote before
        ready = []
        for data_hash, prediction in targets.items():
            row = found.get(data_hash)
            if row is None:
                continue
            try:
                row.from_labels_dict(self._merged(row, prediction))
            except Exception as exc:  # noqa: BLE001 - a bad item must not stop the others
                failed[f"data:{data_hash}"] = f"{type(exc).__name__}: {exc}"
                continue
            ready.append(row)
        # 4) save them, bundled
        for chunk in _chunks(ready, self.bundle_size):
            self.client.call(lambda c=chunk: _save(project, c), "save label rows")
        return failed

    def _write_frames(self, videos: dict[str, dict[int, Prediction]]) -> dict[str, str]:
        """Write video frames into their rows, each row read, merged and saved under its lock."""
        project = self.client.project(self.project_hash or "")

        def keys(data_hash: str) -> list[str]:
            return [f"data:{data_hash}:frame:{f}" for f in videos[data_hash]]

        failed: dict[str, str] = {}
        with self._locked(sorted(videos)):
            # 1) the rows on the branch (one request)
            rows = self.client.call(
                lambda: project.list_label_rows_v2(
                    data_hashes=list(videos), branch_name=self.branch
                ),
                "list label rows",
            )
            found = {r.data_hash: r for r in rows}
            for data_hash in videos:
                row = found.get(data_hash)
                if row is None:
                    reason = (
                        f"data unit {data_hash} is not in the Encord project {self.project_hash}"
                    )
                elif str(row.data_type).lower() != "video":
                    reason = f"data unit {data_hash} is an {row.data_type}, not a video"
                else:
                    continue
                found.pop(data_hash, None)
                failed.update(dict.fromkeys(keys(data_hash), reason))
            # 2) initialise them (created on the branch when missing), bundled
            to_create = [found[h] for h in videos if h in found and not found[h].label_hash]
            to_read = [found[h] for h in videos if h in found and found[h].label_hash]
            for chunk in [
                *_chunks(to_create, self.bundle_size),
                *_chunks(to_read, self.bundle_size),
            ]:
                self.client.call(lambda c=chunk: _initialise(project, c), "initialise label rows")
            # 3) the job's objects on each frame, replacing what the job wrote there before
            ready = []
            for data_hash, predictions in videos.items():
                row = found.get(data_hash)
                if row is None:
                    continue
                try:
                    merged, refused = self._merged_frames(row, predictions)
                    row.from_labels_dict(merged)
                except Exception as exc:  # noqa: BLE001 - a bad video must not stop the others
                    failed.update(dict.fromkeys(keys(data_hash), f"{type(exc).__name__}: {exc}"))
                    continue
                failed.update({f"data:{data_hash}:frame:{f}": r for f, r in refused.items()})
                ready.append(row)
            # 4) save them, bundled
            for chunk in _chunks(ready, self.bundle_size):
                self.client.call(lambda c=chunk: _save(project, c), "save label rows")
        return failed

    @contextlib.contextmanager
    def _locked(self, data_hashes: list[str]) -> Iterator[None]:
        """Hold the locks of ``data_hashes`` (taken in sorted order: no deadlock)."""
        if self.locks is None:
            self.locks = _row_locks(self.job_id)
        locks = self.locks if self.locks is not None else _LOCAL_LOCKS
        owner = f"{id(self)}:{threading.get_ident()}:{time.monotonic_ns()}"
        taken: list[str] = []
        try:
            for data_hash in data_hashes:
                _acquire(locks, data_hash, owner)
                taken.append(data_hash)
            yield
        finally:
            for data_hash in reversed(taken):
                _release(locks, data_hash, owner)

    def _merged_frames(
        self, row: Any, predictions: dict[int, Prediction]
    ) -> tuple[dict[str, Any], dict[int, str]]:
        """The row with the job's objects (or classifications) on the frames of ``predictions``.

        Also returns the frames refused (frame -> reason): those the job's classification
        cannot go on.
        """
        row_dict = row.to_encord_dict()
        unit = row_dict["data_units"][row.data_hash]
        labels = unit.get("labels") or {}
        any_prediction = next(iter(predictions.values()))
        height = int(unit.get("height") or any_prediction.height)
        width = int(unit.get("width") or any_prediction.width)
        frames: dict[str, dict[str, Any]] = {}
        for frame, value in labels.items():
            objects = value.get("objects", [])
            if self.mode == "replace":  # the row keeps only the job's (earlier frames)
                objects = [o for o in objects if self._ours(o)]
            frames[str(frame)] = {**value, "objects": list(objects)}
        for frame, prediction in sorted(predictions.items()):
            if (height, width) != (int(prediction.height), int(prediction.width)):
                raise ValueError(
                    f"the Encord video is {width}x{height}, frame {frame} predicted "
                    f"{prediction.width}x{prediction.height}"
                )
            value = frames.get(str(frame), {"objects": [], "classifications": []})
            existing = value.get("objects", [])
            kept = [] if self.mode == "replace" else [o for o in existing if not self._ours(o)]
            new = (
                []
                if self.classifier
                else prediction_objects(prediction, self.features, self.prefix)
            )
            for i, obj in enumerate(new):
                obj["objectHash"] = video_object_hash(self.prefix, frame, i)
            if self.mode == "iou_merge":
                new = [o for o in new if not self._overlaps(o, kept, height, width)]
            frames[str(frame)] = {**value, "objects": kept + new}
        unit["labels"] = {f: v for f, v in frames.items() if v.get("objects")}
        live = {o["objectHash"] for v in unit["labels"].values() for o in v["objects"]}
        answers = row_dict.get("object_answers", {})
        row_dict["object_answers"] = {
            h: answers.get(h, {"classifications": [], "objectHash": h}) for h in sorted(live)
        }
        if self.mode == "replace":
            row_dict["object_actions"] = {}
        refused: dict[int, str] = {}
        if self.classifier is not None:
            row_dict["classification_answers"], refused = self._classified_frames(
                row_dict, predictions
            )
        return row_dict, refused

    def _classified_frames(
        self, row_dict: dict[str, Any], predictions: dict[int, Prediction]
    ) -> tuple[dict[str, Any], dict[int, str]]:
        """The video row's classification answers with the job's on the frames of ``predictions``.

        One instance of a classification a frame: a frame another's instance of the job's
        classification covers is refused (``append``; frame -> reason), or keeps it
        (``iou_merge``); ``replace`` keeps only the job's (on its other frames).
        """
        assert self.classifier is not None
        kept: dict[str, Any] = {}
        for h, answer in row_dict.get("classification_answers", {}).items():
            ours = self._ours({"objectHash": h, **answer})
            if ours and any(_covers(answer, f) for f in predictions):
                continue  # the job's own on these frames: rewritten below
            if ours or self.mode != "replace":
                kept[h] = answer
        refused: dict[int, str] = {}
        for frame, prediction in sorted(predictions.items()):
            taken = [
                h
                for h, a in kept.items()
                if a.get("featureHash") == self.classifier.feature_hash and _covers(a, frame)
            ]
            if taken and self.mode == "iou_merge":
                continue  # the frame's own answer wins, as an overlapping object would
            if taken:
                refused[frame] = (
                    f"frame {frame} already holds a classification {self.classifier.attribute!r} "
                    f"({taken[0]}) on branch {self.branch!r}, and Encord keeps one per frame; "
                    "upload='replace' overwrites it, 'iou_merge' keeps it"
                )
                continue
            try:
                kept.update(
                    prediction_classification(prediction, self.classifier, self.prefix, frame=frame)
                )
            except ValueError as exc:
                refused[frame] = f"ValueError: {exc}"
        return kept, refused

    def _ours(self, obj: dict[str, Any]) -> bool:
        return str(obj.get("objectHash", "")).startswith(self.prefix) and not obj.get(
            "manualAnnotation", True
        )

    def _merged(self, row: Any, prediction: Prediction) -> dict[str, Any]:
        if str(row.data_type).lower() == "video":
            raise ValueError(
                f"the Encord data unit {row.data_hash} is a video: its frames are uploaded "
                "(predictions with a frame_index), not a whole image"
            )
        row_dict = row.to_encord_dict()
        unit = row_dict["data_units"][row.data_hash]
        height = int(unit.get("height") or prediction.height)
        width = int(unit.get("width") or prediction.width)
        if (height, width) != (int(prediction.height), int(prediction.width)):
            raise ValueError(
                f"the Encord media is {width}x{height}, the image predicted "
                f"{prediction.width}x{prediction.height}"
            )
        existing = unit["labels"].get("objects", [])
        kept = [] if self.mode == "replace" else [o for o in existing if not self._ours(o)]
        new = [] if self.classifier else prediction_objects(prediction, self.features, self.prefix)
        if self.mode == "iou_merge":
            new = [o for o in new if not self._overlaps(o, kept, height, width)]
        unit["labels"]["objects"] = kept + new
        answers = row_dict.get("object_answers", {})
        live = {o["objectHash"] for o in kept}
        row_dict["object_answers"] = {
            **{h: a for h, a in answers.items() if h in live},
            **{
                o["objectHash"]: {"classifications": [], "objectHash": o["objectHash"]} for o in new
            },
        }
        if self.mode == "replace":
            row_dict["object_actions"] = {}
        if self.classifier is not None:
            row_dict["classification_answers"] = self._classified(row_dict, prediction)
        return row_dict

    def _classified(self, row_dict: dict[str, Any], prediction: Prediction) -> dict[str, Any]:
        """The row's classification answers with the job's; one per classification a row."""
        assert self.classifier is not None
        kept = {
            h: a
            for h, a in row_dict.get("classification_answers", {}).items()
            if self.mode != "replace" and not self._ours({"objectHash": h, **a})
        }
        taken = [h for h, a in kept.items() if a.get("featureHash") == self.classifier.feature_hash]
        if taken and self.mode == "iou_merge":
            return kept  # the row's own answer wins, as an overlapping object would
        if taken:
            raise ValueError(
                f"the row already holds a classification {self.classifier.attribute!r} "
                f"({taken[0]}) on branch {self.branch!r}, and Encord keeps one per image; "
                "upload='replace' overwrites it, 'iou_merge' keeps it"
            )
        return {**kept, **prediction_classification(prediction, self.classifier, self.prefix)}

    def _overlaps(self, obj: dict[str, Any], kept: list[dict[str, Any]], h: int, w: int) -> bool:
        box = object_box(obj, h, w)
        if box is None:
            return False
        for other in kept:
            if other.get("featureHash") != obj["featureHash"]:
                continue
            other_box = object_box(other, h, w)
            if other_box is not None and box_iou(box, other_box) >= self.iou_threshold:
                return True
        return False

    def __repr__(self) -> str:
        return (
            f"EncordUploader(domain={self.client.domain!r}, project_hash={self.project_hash!r}, "
            f"branch={self.branch!r})"
        )


def checked_options(options: dict[str, Any]) -> dict[str, Any]:
    """Check the Encord upload options; return them.

    Raises:
        ValueError: An unknown option, no ``project_hash``, a bad ``branch_name``,
            ``bundle_size`` or ``iou_threshold``.
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown Encord upload options {unknown}; Encord takes: {list(OPTIONS)}")
    if not options.get("project_hash"):
        raise ValueError("an upload to Encord needs upload_options={'project_hash': ...}")
    if "branch_name" in options:
        problem = branch_name_error(options["branch_name"])
        if problem:
            raise ValueError(problem)
    size = options.get("bundle_size", DEFAULT_BUNDLE_SIZE)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"bundle_size must be an int >= 1, got {size!r}")
    threshold = options.get("iou_threshold", 0.9)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ValueError(f"iou_threshold must be a number in (0, 1], got {threshold!r}")
    if not 0 < threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {threshold!r}")
    if not isinstance(options.get("data_hashes", {}), dict):
        raise ValueError("data_hashes must map image names to Encord data hashes")
    return options


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _initialise(project: Any, rows: list[Any]) -> None:
    with project.create_bundle(bundle_size=len(rows)) as bundle:
        for row in rows:
            row.initialise_labels(bundle=bundle, overwrite=True)


def _save(project: Any, rows: list[Any]) -> None:
    with project.create_bundle(bundle_size=len(rows)) as bundle:
        for row in rows:
            row.save(bundle=bundle)


def _covers(answer: dict[str, Any], frame: int) -> bool:
    """Whether a classification answer's ``range`` (``[[start, end], ...]``) holds ``frame``."""
    return any(int(span[0]) <= frame <= int(span[1]) for span in answer.get("range") or [])


def _row_objects(row: Any) -> list[dict[str, Any]]:
    units = row.to_encord_dict().get("data_units", {})
    found = []
    for unit in units.values():
        labels = unit.get("labels", {})
        if "objects" in labels:
            found.extend(labels["objects"])
        else:  # a video: labels by frame
            found.extend(o for v in labels.values() for o in v.get("objects", []))
    return found


class RowLocks:
    """Locks of video rows by data hash, shared by a job's uploaders (a Ray actor under Ray).

    A lock is a lease: one held longer than ``lease_s`` (its holder died) is given away.
    """

    def __init__(self, lease_s: float = 300.0) -> None:
        self.lease_s = lease_s
        self._held: dict[str, tuple[str, float]] = {}
        self._mutex = threading.Lock()

    def try_acquire(self, key: str, owner: str) -> bool:
        """Take ``key`` for ``owner``; False when another holds it."""
        with self._mutex:
            now = time.monotonic()
            holder = self._held.get(key)
            if holder is not None and holder[0] != owner and now - holder[1] < self.lease_s:
                return False
            self._held[key] = (owner, now)
            return True

    def release(self, key: str, owner: str) -> None:
        """Give ``key`` back (nothing when ``owner`` does not hold it)."""
        with self._mutex:
            if self._held.get(key, ("", 0.0))[0] == owner:
                del self._held[key]


_LOCAL_LOCKS = RowLocks()


def _row_locks(job_id: str) -> Any:
    """The job's `RowLocks` actor when Ray runs (one per job, by name); None else."""
    try:
        import ray
    except ImportError:  # pragma: no cover - Ray is a dependency
        return None
    if not ray.is_initialized():
        return None
    actor = ray.remote(num_cpus=0)(RowLocks)
    return actor.options(
        name=f"tessera-encord-rows-{hashlib.sha1(job_id.encode()).hexdigest()[:16]}",
        get_if_exists=True,
    ).remote()


def _acquire(locks: Any, key: str, owner: str) -> None:
    wait = 0.005
    while True:
        if isinstance(locks, RowLocks):
            taken = locks.try_acquire(key, owner)
        else:
            import ray

            taken = ray.get(locks.try_acquire.remote(key, owner))
        if taken:
            return
        time.sleep(wait)
        wait = min(wait * 2, 0.1)


def _release(locks: Any, key: str, owner: str) -> None:
    if isinstance(locks, RowLocks):
        locks.release(key, owner)
    else:
        import ray

        ray.get(locks.release.remote(key, owner))
