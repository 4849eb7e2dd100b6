"""Exports written as predictions stream, through predict, predict_detached and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scenes import draw_scene, random_boxes

from connectors.supervisely.annotation import supervisely_to_detections
from connectors.supervisely.project import read_project
from engine.cli import main
from engine.models.reference import COLORS

CLASSES = list(COLORS)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    rng = np.random.default_rng(21)
    truth = {}
    for i in range(5):
        boxes = random_boxes(rng, 120, 160, 6, min_side=8, max_side=30)
        Image.fromarray(draw_scene(120, 160, boxes)).save(folder / f"scene{i}.png")
        truth[f"scene{i}.png"] = boxes
    return folder, truth


def ground_truth(truth) -> COCO:
    images, annotations = [], []
    for image_id, (name, boxes) in enumerate(sorted(truth.items()), start=1):
        images.append({"id": image_id, "file_name": name, "width": 160, "height": 120})
        for name_, x1, y1, x2, y2 in boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": CLASSES.index(name_) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    coco = COCO()
    coco.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": c} for i, c in enumerate(CLASSES)],
    }
    coco.createIndex()
    return coco


def test_coco_export_scores_the_reference_detector_at_map_one(reference_model, scenes, tmp_path):
    folder, truth = scenes
    results = reference_model.predict(folder, out=tmp_path, format="coco", progress=False)
    summary = results.outputs["export:coco"]
    assert summary["predictions"] == 5 and summary["errors"] == []
    dataset = json.loads((tmp_path / "coco_dataset.json").read_text())
    ids = {image["file_name"]: image["id"] for image in dataset["images"]}
    gt = ground_truth(truth)
    gt_ids = {image["file_name"]: image["id"] for image in gt.dataset["images"]}
    detections = json.loads((tmp_path / "coco_bbox_results.json").read_text())
    by_id = {v: gt_ids[k] for k, v in ids.items()}
    for row in detections:  # the export numbers images in arrival order
        row["image_id"] = by_id[row["image_id"]]
    evaluator = COCOeval(gt, gt.loadRes(detections), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)
    COCO(str(tmp_path / "coco_dataset.json"))  # the full dataset loads too


def test_supervisely_export_reads_back_identical(reference_model, scenes, tmp_path):
    folder, _ = scenes
    results = reference_model.predict(folder, out=tmp_path, format="sly", progress=False)
    project = read_project(tmp_path)
    written = {
        image.name: annotation for _, images in project.datasets for image, annotation in images
    }
    assert sorted(written) == sorted(p.name for p in results)
    for prediction in results:
        annotation = json.loads(written[prediction.name].read_text())
        back = supervisely_to_detections(annotation, CLASSES)
        np.testing.assert_array_equal(back.xyxy, prediction.boxes)
        np.testing.assert_array_equal(back.class_idxs, prediction.class_idxs)
        np.testing.assert_allclose(back.scores, prediction.scores, atol=1e-4)


def test_parquet_goes_through_ray_data_and_jsonl_streams(reference_model, scenes, tmp_path):
    folder, _ = scenes
    results = reference_model.predict(folder, out=tmp_path, format="parquet", progress=False)
    summary = results.outputs["export:parquet"]
    table = pq.read_table(tmp_path / "parquet")
    assert summary["rows"] == table.num_rows == 5
    names = table.column("name").to_pylist()
    boxes = dict(zip(names, table.column("xyxy").to_pylist()))
    for prediction in results:
        np.testing.assert_allclose(np.reshape(boxes[prediction.name], (-1, 4)), prediction.boxes)
    assert json.loads((tmp_path / "classes.json").read_text())["class_names"] == CLASSES


def test_a_detached_session_writes_its_export(reference_model, scenes, tmp_path):
    folder, _ = scenes
    session = reference_model.predict_detached(folder, out=tmp_path, format="jsonl")
    try:
        predictions = list(session)
        report = session.status()["outputs"]["export:jsonl"]
    finally:
        session.close()
    lines = (tmp_path / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == len(predictions) == 5 and report["predictions"] == 5


def test_output_options_are_checked_before_anything_runs(reference_model, scenes):
    folder, _ = scenes
    with pytest.raises(ValueError, match="needs out="):
        reference_model.predict(folder, format="coco")
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        reference_model.predict(folder, out="x", format="xml")
    with pytest.raises(ValueError, match="go together"):
        reference_model.predict(folder, upload="append")
    with pytest.raises(ValueError, match="unknown connector 'nowhere'"):
        reference_model.predict(folder, upload="append", to="nowhere")


def test_cli_writes_the_chosen_format(ray_session, scenes, tmp_path):
    folder, _ = scenes
    code = main(
        [
            "predict", str(folder), "--model", "reference/color-boxes", "--out",
            str(tmp_path), "--format", "sly", "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    assert (tmp_path / "meta.json").exists() and (tmp_path / "ds0" / "ann").is_dir()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["outputs"]["export:sly"]["written"] == 5


def test_a_connector_refuses_a_mode_it_does_not_support(reference_model, scenes):
    from connectors.base import Connector, DeliveryResult

    class AppendOnly(Connector):
        name = "append-only"
        modes = ("append",)

        def prepare(self, plan):
            raise AssertionError("never reached")

        def item_key(self, prediction):
            return prediction.name

        def deliver(self, batch):
            return DeliveryResult()

    folder, _ = scenes
    with pytest.raises(ValueError, match=r"append-only does not support upload='create'.*append"):
        reference_model.predict(folder, upload="create", to=AppendOnly())
