"""connectors/formats and connectors/exports: COCO, Supervisely project, JSON lines, Parquet."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scenes import draw_scene, random_boxes

from connectors.exports import EXPORT_FORMATS, open_exporter, prediction_row
from connectors.formats import (
    coco_categories,
    coco_category_ids,
    coco_dataset,
    coco_results,
    image_file_name,
    prediction_from_jsonl,
    prediction_to_jsonl,
)
from connectors.supervisely.annotation import (
    CONFIDENCE_TAG,
    supervisely_meta,
    supervisely_to_detections,
)
from connectors.supervisely.format import (
    check_annotation,
    meta_for,
    prediction_from_supervisely,
    prediction_to_annotation,
)
from connectors.supervisely.project import dataset_dir, read_project
from engine import masks as mask_utils
from engine.detections import Detections
from engine.models.reference import COLORS, ColorBoxDetector
from engine.prediction import Prediction

CLASSES = list(COLORS)
HEIGHT, WIDTH = 72, 96


def _scenes(count: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(count):
        boxes = random_boxes(rng, HEIGHT, WIDTH, count=5)
        scenes.append((draw_scene(HEIGHT, WIDTH, boxes), boxes))
    return scenes


def _predict(scenes, with_masks: bool) -> list[Prediction]:
    detector = ColorBoxDetector(with_masks=with_masks)
    detector.load("cpu")
    detections = detector.infer([image for image, _ in scenes], 0.5)
    return [
        Prediction(
            detections=d,
            class_names=CLASSES,
            source="array",
            name=f"scene_{i}.png",
            height=HEIGHT,
            width=WIDTH,
            index=i,
            task=detector.task,
            image=image,
        )
        for i, (d, (image, _)) in enumerate(zip(detections, scenes))
    ]


@pytest.fixture(scope="module")
def scenes():
    return _scenes()


@pytest.fixture(scope="module")
def box_predictions(scenes):
    return _predict(scenes, with_masks=False)


@pytest.fixture(scope="module")
def mask_predictions(scenes):
    return _predict(scenes, with_masks=True)


def _failed(index: int = 99) -> Prediction:
    return Prediction(
        Detections.empty(), CLASSES, name="broken.png", index=index, error="cannot decode"
    )


# ---------------------------------------------------------------------- COCO
def _ground_truth(scenes) -> COCO:
    """A COCO ground truth built from the drawn boxes alone (ids: class index + 1)."""
    images, annotations = [], []
    for i, (_, boxes) in enumerate(scenes):
        images.append(
            {"id": i + 1, "file_name": f"scene_{i}.png", "width": WIDTH, "height": HEIGHT}
        )
        for name, x1, y1, x2, y2 in boxes:
            mask = np.zeros((1, HEIGHT, WIDTH), bool)
            mask[0, y1:y2, x1:x2] = True
            rle = mask_utils.rle_to_json(mask_utils.encode_masks(mask)[0])
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": CLASSES.index(name) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                    "segmentation": rle,
                }
            )
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def _map(gt: COCO, results: list[dict], iou_type: str) -> float:
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        evaluation = COCOeval(gt, dt, iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[0])


def test_coco_results_give_perfect_map(scenes, box_predictions, mask_predictions):
    gt = _ground_truth(scenes)
    image_ids = {f"scene_{i}.png": i + 1 for i in range(len(scenes))}
    bbox, segm = coco_results(box_predictions + [_failed()], image_ids)
    assert segm == []
    assert len(bbox) == sum(len(boxes) for _, boxes in scenes)
    assert _map(gt, bbox, "bbox") == pytest.approx(1.0, abs=1e-6)

    bbox, segm = coco_results(mask_predictions, lambda p: p.index + 1, coco_category_ids(CLASSES))
    assert all(isinstance(r["segmentation"]["counts"], str) for r in segm)
    assert _map(gt, bbox, "bbox") == pytest.approx(1.0, abs=1e-6)
    assert _map(gt, segm, "segm") == pytest.approx(1.0, abs=1e-6)


def test_coco_exporter_files_load_in_pycocotools(tmp_path, scenes, mask_predictions):
    with open_exporter("coco", tmp_path, CLASSES, "instance_segmentation") as exporter:
        for prediction in [*mask_predictions, _failed()]:
            exporter.write(prediction)
    summary = exporter.close()
    assert sorted(summary["files"]) == [
        "coco_bbox_results.json",
        "coco_dataset.json",
        "coco_segm_results.json",
    ]
    assert summary["predictions"] == len(mask_predictions) + 1
    assert summary["written"] == summary["images"] == len(mask_predictions)
    assert [e["name"] for e in summary["errors"]] == ["broken.png"]

    gt = _ground_truth(scenes)  # the exporter numbers images 1, 2, ... as they arrive
    for name, iou_type in (("coco_bbox_results.json", "bbox"), ("coco_segm_results.json", "segm")):
        results = json.loads((tmp_path / name).read_text())
        assert _map(gt, results, iou_type) == pytest.approx(1.0, abs=1e-6)

    with contextlib.redirect_stdout(io.StringIO()):
        dataset = COCO(str(tmp_path / "coco_dataset.json"))
    assert len(dataset.getImgIds()) == len(mask_predictions)
    assert [c["name"] for c in dataset.loadCats(dataset.getCatIds())] == CLASSES
    assert dataset.imgs[1] == {
        "id": 1,
        "file_name": "scene_0.png",
        "width": WIDTH,
        "height": HEIGHT,
    }
    anns = dataset.loadAnns(dataset.getAnnIds())
    assert len(anns) == summary["objects"] == sum(len(p) for p in mask_predictions)
    assert all(a["iscrowd"] == 0 and 0 < a["score"] < 1 and "segmentation" in a for a in anns)
    assert all(a["area"] == a["bbox"][2] * a["bbox"][3] for a in anns)  # solid rectangles

    # A boxes-only export writes no segm file.
    summary = open_exporter("coco", tmp_path / "boxes", CLASSES).close()
    assert "coco_segm_results.json" not in summary["files"]


def test_coco_category_ids_skip_placeholders():
    torchvision_like = ["__background__", "person", "N/A", "car"]
    assert coco_category_ids(torchvision_like) == {1: 1, 3: 3}
    assert coco_category_ids(CLASSES) == {i: i + 1 for i in range(len(CLASSES))}
    assert coco_categories(torchvision_like) == [
        {"id": 1, "name": "person"},
        {"id": 3, "name": "car"},
    ]
    prediction = Prediction(
        Detections([[0, 0, 4, 4], [1, 1, 5, 5]], [0.9, 0.8], [2, 3]),
        torchvision_like,
        name="a.jpg",
        height=8,
        width=8,
    )
    dataset = coco_dataset([prediction])
    assert [a["category_id"] for a in dataset["annotations"]] == [3]  # N/A has no category
    assert dataset["annotations"][0]["id"] == 1
    with pytest.raises(KeyError, match="no id"):
        coco_results([prediction], {"other.jpg": 1})


# ---------------------------------------------------------------------- Supervisely
def _read_back(project_dir):
    """{(dataset, image name): (annotation, image pixels)} of a project on disk."""
    project = read_project(project_dir)
    out = {}
    for dataset, images in project.datasets:
        for image_path, ann_path in images:
            assert ann_path is not None, image_path
            annotation = json.loads(ann_path.read_text())
            out[(dataset, image_path.name)] = (annotation, np.asarray(Image.open(image_path)))
    return project, out


def test_supervisely_project_round_trip(tmp_path, mask_predictions):
    preds = list(mask_predictions)
    # A local image file, copied as it is (its predictions come from its pixels).
    local = tmp_path / "local.png"
    Image.fromarray(preds[1].image).save(local)
    preds[1] = Prediction(
        preds[1].detections, CLASSES, "file", "local.png", path=str(local), height=HEIGHT,
        width=WIDTH, index=1, task=preds[1].task,
    )  # fmt: skip
    preds[2].dataset = "parent/child"
    preds[3].name = preds[0].name  # a name collision in ds0
    project_dir = tmp_path / "project"
    with open_exporter("sly", project_dir, CLASSES, "instance_segmentation") as exporter:
        for prediction in [*preds, _failed(7)]:
            exporter.write(prediction)
    summary = exporter.close()

    assert summary["errors"] == [{"index": 7, "name": "broken.png", "error": "cannot decode"}]
    assert summary["predictions"] == len(preds) + 1 and summary["written"] == len(preds)
    assert summary["datasets"] == {"ds0": len(preds) - 1, "parent/child": 1}
    assert (project_dir / "parent" / "datasets" / "child" / "img" / "scene_2.png").is_file()

    project, found = _read_back(project_dir)
    expected_keys = {("ds0", p.name) for p in preds if p.dataset is None}
    expected_keys = expected_keys | {("parent/child", "scene_2.png"), ("ds0", "1_scene_0.png")}
    assert set(found) == expected_keys
    assert "broken.png" not in {name for _, name in found}

    meta = project.meta
    used = {c for p in preds for c in p.classes}
    declared = {c["title"]: c["shape"] for c in meta["classes"]}
    assert used <= set(declared) and set(declared.values()) == {"any"}
    assert CONFIDENCE_TAG in meta["tags"]

    keys = {
        p.index: ("parent/child", p.name)
        if p.dataset
        else ("ds0", "1_scene_0.png" if p.index == 3 else p.name)
        for p in preds
    }
    for prediction in preds:
        annotation, pixels = found[keys[prediction.index]]
        check_annotation(annotation, meta)
        assert np.array_equal(pixels, prediction.load_image())
        back = supervisely_to_detections(annotation, CLASSES)
        assert np.array_equal(back.xyxy, prediction.boxes)
        assert np.array_equal(back.class_idxs, prediction.class_idxs)
        np.testing.assert_allclose(back.scores, prediction.scores, atol=1e-4)
        assert np.array_equal(back.masks(HEIGHT, WIDTH), prediction.masks)
        again = prediction_from_supervisely(annotation, CLASSES, name="x")
        assert again.task == "instance_segmentation" and again.height == HEIGHT


def test_supervisely_boxes_and_video_frames(tmp_path, box_predictions):
    frame = box_predictions[0]
    frame = Prediction(
        frame.detections, CLASSES, "file", "clip.mp4", path="/nowhere/clip.mp4",
        frame_index=12, timestamp=0.4, height=HEIGHT, width=WIDTH, image=frame.image,
    )  # fmt: skip
    assert image_file_name(frame) == "clip_000012.png"
    in_memory = Prediction(
        box_predictions[1].detections, CLASSES, name="array_3", height=HEIGHT, width=WIDTH,
        image=box_predictions[1].image,
    )  # fmt: skip
    with open_exporter("sly", tmp_path, CLASSES) as exporter:
        exporter.write(frame)
        exporter.write(in_memory)
    project, found = _read_back(tmp_path)
    assert set(found) == {("ds0", "clip_000012.png"), ("ds0", "array_3.png")}
    assert {c["shape"] for c in project.meta["classes"]} == {"rectangle"}
    for prediction, key in ((frame, "clip_000012.png"), (in_memory, "array_3.png")):
        annotation, _ = found[("ds0", key)]
        check_annotation(annotation, project.meta)
        assert np.array_equal(supervisely_to_detections(annotation, CLASSES).xyxy, prediction.boxes)
    assert dataset_dir("p", "a/b/c").as_posix() == "p/a/datasets/b/datasets/c"
    assert dataset_dir("p", None).as_posix() == "p/ds0"


def test_empty_mask_instance_is_valid_for_its_class(tmp_path):
    masks = np.zeros((2, 20, 30), bool)
    masks[0, 2:6, 3:9] = True  # the second instance's mask is empty
    prediction = Prediction(
        Detections(
            [[3, 2, 9, 6], [10, 10, 20, 15]], [0.9, 0.7], [0, 0], mask_utils.encode_masks(masks)
        ),
        CLASSES,
        name="empty.png",
        height=20,
        width=30,
        task="instance_segmentation",
        image=np.zeros((20, 30, 3), np.uint8),
    )
    annotation = prediction_to_annotation(prediction)
    assert [o["geometryType"] for o in annotation["objects"]] == ["bitmap", "rectangle"]
    with pytest.raises(ValueError, match="does not match class"):
        check_annotation(annotation, supervisely_meta(CLASSES, "instance_segmentation"))
    check_annotation(annotation, meta_for(CLASSES, "instance_segmentation"))

    # A detection-task export that meets masks widens the meta so every object stays valid.
    with open_exporter("sly", tmp_path, CLASSES, "detection") as exporter:
        exporter.write(prediction)
    project, found = _read_back(tmp_path)
    check_annotation(found[("ds0", "empty.png")][0], project.meta)


def test_keypoint_graphs_are_declared(tmp_path):
    keypoints = np.array([[[1, 1, 0.9], [4, 5, 0.0]]], np.float32)
    prediction = Prediction(
        Detections([[0, 0, 8, 8]], [0.8], [1], keypoints=keypoints),
        CLASSES,
        name="kp.png",
        height=10,
        width=10,
        task="keypoints",
        image=np.zeros((10, 10, 3), np.uint8),
    )
    with open_exporter("sly", tmp_path, CLASSES, "keypoints") as exporter:
        exporter.write(prediction)
    project, found = _read_back(tmp_path)
    annotation = found[("ds0", "kp.png")][0]
    assert [o["geometryType"] for o in annotation["objects"]] == ["rectangle", "graph"]
    check_annotation(annotation, project.meta)


# ---------------------------------------------------------------------- JSON lines, Parquet
def _rich_prediction() -> Prediction:
    masks = np.zeros((2, 12, 16), bool)
    masks[0, 1:4, 2:7] = True
    masks[1, 5:9, 8:15] = True
    detections = Detections(
        xyxy=[[2.25, 1.1, 7.0, 4.0], [8.0, 5.0, 15.0, 9.333]],
        scores=[0.912345, 0.5],
        class_idxs=[2, 5],
        masks_rle=mask_utils.encode_masks(masks),
        keypoints=np.array([[[3, 2, 0.5]], [[9.5, 6, np.nan]]], np.float32),
        track_ids=[4, 7],
    )
    return Prediction(
        detections, CLASSES, "file", "clip.mp4", path="/v/clip.mp4", frame_index=30,
        timestamp=1.25, height=12, width=16, index=5, task="instance_segmentation",
    )  # fmt: skip


def test_jsonl_round_trip(tmp_path):
    rich = _rich_prediction()
    back = prediction_from_jsonl(prediction_to_jsonl(rich))
    assert np.array_equal(back.boxes, rich.boxes)
    assert np.array_equal(back.scores, rich.scores)
    assert np.array_equal(back.masks, rich.masks)
    np.testing.assert_array_equal(back.keypoints, rich.keypoints)  # NaN survives
    assert np.array_equal(back.track_ids, rich.track_ids)
    for field in ("class_names", "source", "name", "path", "frame_index", "timestamp", "task"):
        assert getattr(back, field) == getattr(rich, field), field
    assert (back.height, back.width, back.index, back.error) == (12, 16, 5, None)

    with open_exporter("jsonl", tmp_path, CLASSES) as exporter:
        exporter.write(rich)
        exporter.write(_failed(8))
        assert len((tmp_path / "predictions.jsonl").read_text().splitlines()) == 2  # flushed
    summary = exporter.close()
    assert summary["written"] == 2 and len(summary["errors"]) == 1
    lines = (tmp_path / "predictions.jsonl").read_text().splitlines()
    failed = prediction_from_jsonl(lines[1])
    assert failed.error == "cannot decode" and len(failed) == 0 and failed.index == 8


def test_parquet_one_row_per_prediction(tmp_path, box_predictions):
    preds = [*box_predictions[:4], _failed(), _rich_prediction()]
    with open_exporter("parquet", tmp_path, CLASSES, row_group_size=4) as exporter:
        for prediction in preds:
            exporter.write(prediction)
    summary = exporter.close()
    assert summary["row_groups"] == 2 and summary["files"] == ["predictions.parquet"]
    table = pq.read_table(tmp_path / "predictions.parquet")
    assert table.num_rows == len(preds)
    assert json.loads(table.schema.metadata[b"tessera.class_names"]) == CLASSES
    for prediction, row in zip(preds, table.to_pylist()):
        if prediction.keypoints is None:  # NaN keypoints compare unequal
            assert row == prediction_row(prediction)
        back = Prediction.from_arrow(row, CLASSES)
        assert np.array_equal(back.boxes, prediction.boxes)
        assert back.error == prediction.error and back.name == prediction.name
    assert np.array_equal(
        Prediction.from_arrow(table.to_pylist()[-1], CLASSES).masks, preds[-1].masks
    )


# ---------------------------------------------------------------------- errors
def test_unknown_format_and_closed_exporter(tmp_path):
    with pytest.raises(ValueError, match="unknown format 'voc'; valid formats: ") as raised:
        open_exporter("voc", tmp_path, CLASSES)
    for name in ("coco", "jsonl", "parquet", "sly"):  # the local ones and a platform's
        assert name in str(raised.value)
    assert EXPORT_FORMATS == ("coco", "jsonl", "parquet")
    with pytest.raises(ValueError, match="task"):
        open_exporter("jsonl", tmp_path, CLASSES, task="segmentation")
    exporter = open_exporter("jsonl", tmp_path, CLASSES)
    assert exporter.close() is exporter.close()
    with pytest.raises(RuntimeError, match="closed"):
        exporter.write(_failed())
