"""`engine.evaluate` and `tessera evaluate`: known answers, and pycocotools' own figures."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scenes import draw_scene, random_boxes

import engine
from connectors.exports import open_exporter
from connectors.formats.jsonl import prediction_to_jsonl
from engine.detections import Detections
from engine.evaluation.inputs import predictions_as_coco
from engine.masks import encode_masks
from engine.models.reference import COLORS
from engine.prediction import Prediction

CLASSES = ["car", "person", "dog"]
TESSERA = str(Path(sys.executable).parent / "tessera")


# ------------------------------------------------------------------------------ scenes
def labelled(
    name: str,
    boxes: np.ndarray,
    classes: list[int],
    scores: list[float] | None = None,
    size: tuple[int, int] = (200, 300),
    masks: bool = False,
    names: list[str] = CLASSES,
) -> Prediction:
    """A Prediction (or a labelled image) of ``boxes``; masks are ellipses in the boxes."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    rles = None
    if masks:
        h, w = size
        yy, xx = np.mgrid[:h, :w]
        drawn = []
        for x1, y1, x2, y2 in boxes:
            cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
            drawn.append(((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1)
        rles = encode_masks(np.array(drawn, bool).reshape(-1, h, w))
    detections = Detections(
        boxes, scores if scores is not None else [1.0] * len(boxes), classes, masks_rle=rles
    )
    return Prediction(detections, list(names), name=name, height=size[0], width=size[1])


def generated_set(seed: int, images: int = 12, masks: bool = True):
    """Ground truth and noisy predictions: shifted, missed, extra and mislabelled objects."""
    rng = np.random.default_rng(seed)
    truth, predicted = [], []
    for i in range(images):
        n = int(rng.integers(1, 8))
        x1 = rng.uniform(0, 240, n)
        y1 = rng.uniform(0, 150, n)
        side = rng.choice([8.0, 20.0, 45.0], n)  # small, medium and large COCO areas
        # whole pixels, as a labelling tool stores them (Supervisely rectangles are)
        boxes = np.stack([x1, y1, np.minimum(x1 + side * 1.3, 300), y1 + side], 1).round()
        classes = rng.integers(0, 3, n).tolist()
        truth.append(labelled(f"img_{i}.png", boxes, classes, masks=masks))
        keep = rng.random(n) > 0.2
        shifted = boxes[keep] + rng.normal(0, 3, (int(keep.sum()), 4))
        extra = int(rng.integers(0, 3))
        extra_boxes = np.stack([rng.uniform(0, 250, extra), rng.uniform(0, 150, extra)], 1).repeat(
            2, 1
        ) + [0, 0, 30, 30]
        out_boxes = np.clip(np.concatenate([shifted, extra_boxes]), 0, [299, 199, 300, 200])
        out_boxes[:, 2:] = np.maximum(out_boxes[:, 2:], out_boxes[:, :2] + 2)
        out_classes = [c if rng.random() > 0.1 else (c + 1) % 3 for c in np.array(classes)[keep]]
        out_classes += rng.integers(0, 3, extra).tolist()
        scores = rng.uniform(0.05, 1.0, len(out_boxes)).round(3).tolist()
        predicted.append(labelled(f"img_{i}.png", out_boxes, out_classes, scores, masks=masks))
    return truth, predicted


def plain_cocoeval(gt: dict, predictions: list[Prediction], iou_type: str) -> COCOeval:
    """pycocotools on its own, every image at once, results as COCO writes them."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        ids = {image["file_name"]: image["id"] for image in gt["images"]}
        cats = {c["name"]: c["id"] for c in gt["categories"]}
        rows = []
        for p in predictions:
            for k, (box, score, name) in enumerate(zip(p.boxes, p.scores, p.classes)):
                x1, y1, x2, y2 = (float(v) for v in box)
                row = {"image_id": ids[p.name], "category_id": cats[name], "score": float(score)}
                if iou_type == "bbox":
                    row["bbox"] = [x1, y1, x2 - x1, y2 - y1]
                else:
                    rle = p.masks_rle[k]
                    row["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
                rows.append(row)
        ev = COCOeval(coco, coco.loadRes(rows), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def comparable(figures: dict) -> dict:
    """A report's figures flat, classes by name (ground truths may order categories apart)."""
    flat = {k: v for k, v in figures.items() if not isinstance(v, list)}
    for c in figures["classes"]:
        flat.update({f"{c['name']}.{k}": v for k, v in c.items() if k != "name"})
    labels = figures["confusion_labels"]
    for r, row in enumerate(figures["confusion_matrix"]):
        flat.update({f"cm.{labels[r]}.{labels[c]}": v for c, v in enumerate(row)})
    return flat


# ----------------------------------------------------------------------- known answers
def test_a_perfect_detector_scores_one_everywhere():
    truth, _ = generated_set(1, masks=True)
    perfect = [labelled(p.name, p.boxes, list(p.class_idxs), masks=True) for p in truth]
    for iou_type in ("bbox", "segm"):
        report = engine.evaluate(perfect, truth, iou_type=iou_type)
        assert report.map == report.map50 == report.map75 == 1.0
        assert report.precision == report.recall == report.f1 == 1.0
        assert all(c.ap == 1.0 and c.best_f1 == 1.0 for c in report.classes)
        matrix = np.array(report.confusion_matrix)
        assert (matrix == np.diag(np.diag(matrix))).all()  # only the diagonal
        assert matrix[-1, -1] == 0 and matrix.trace() == sum(len(p) for p in truth)


def test_a_detector_that_misses_half_has_recall_one_half():
    boxes = np.array([[10 + 60 * i, 20, 50 + 60 * i, 60] for i in range(4)], np.float32)
    truth = [labelled(f"{i}.png", boxes, [0, 1, 0, 1]) for i in range(3)]
    half = [labelled(f"{i}.png", boxes[::2], [0, 0], [0.9, 0.9]) for i in range(3)]
    report = engine.evaluate(half, truth)
    assert report.recall == 0.5 and report.precision == 1.0
    assert report.f1 == pytest.approx(2 / 3)
    car, person = report.classes[:2]
    assert (car.recall, car.ap, car.ar) == (1.0, 1.0, 1.0)
    assert (person.recall, person.ap, person.ar, person.detections) == (0.0, 0.0, 0.0, 0)
    assert report.mar_100 == pytest.approx(0.5)  # the mean over car, person (dog: no truth)
    # every missed person is a (person, background) count
    labels = report.confusion_labels
    assert report.confusion_matrix[labels.index("person")][labels.index("background")] == 6


def test_a_failed_image_counts_as_predicting_nothing_and_is_named(tmp_path):
    boxes = np.array([[10, 20, 50, 60], [70, 20, 110, 60]], np.float32)
    truth = [labelled(f"{i}.png", boxes, [0, 1]) for i in range(3)]
    predictions = [labelled(f"{i}.png", boxes, [0, 1], [0.9, 0.9]) for i in range(2)]
    failed = Prediction(Detections.empty(), list(CLASSES), name="2.png", error="cannot decode")
    predictions.append(failed)
    report = engine.evaluate(predictions, truth, out=tmp_path / "report")
    assert report.failed_images == ["2.png"]
    assert (report.images, report.predicted_images) == (3, 2)
    assert report.recall == pytest.approx(4 / 6) and report.precision == 1.0
    assert "1 failed" in report.summary()
    assert "`2.png`" in (tmp_path / "report" / "report.md").read_text()
    # the same through a jsonl export, where the failure is a line with an error
    export = tmp_path / "predictions.jsonl"
    export.write_text("".join(prediction_to_jsonl(p) + "\n" for p in predictions))
    assert engine.evaluate(export, truth).to_dict() == report.to_dict()


def test_a_shifted_box_crosses_the_iou_thresholds_as_computed_by_hand():
    truth = [labelled("a.png", [[100, 50, 200, 150]], [0])]
    # shifted 20 px right: intersection 80x100, union 120x100, IoU 2/3
    shifted = [labelled("a.png", [[120, 50, 220, 150]], [0], [0.8])]
    report = engine.evaluate(shifted, truth)
    assert report.map50 == pytest.approx(1.0) and report.map75 == 0.0
    assert report.map == pytest.approx(0.4)  # hit at IoU .5, .55, .6, .65: 4 of 10
    assert engine.evaluate(shifted, truth, iou_threshold=0.7).recall == 0.0
    assert engine.evaluate(shifted, truth, iou_threshold=0.65).recall == 1.0
    assert engine.evaluate(shifted, truth, conf=0.9).recall == 0.0  # below the confidence


def test_best_f1_confidence_is_the_score_that_maximises_f1():
    boxes = np.array([[10 + 60 * i, 20, 50 + 60 * i, 60] for i in range(4)], np.float32)
    truth = [labelled("a.png", boxes[:3], [0, 0, 0])]
    # scores 0.9, 0.8 hit, 0.7 is a false positive (box 4), 0.6 hits: best F1 at 0.8
    # (P 1, R 2/3, F1 0.8) or 0.6 (P 3/4, R 1, F1 0.857): 0.6 wins
    found = [labelled("a.png", boxes[[0, 1, 3, 2]], [0] * 4, [0.9, 0.8, 0.7, 0.6])]
    car = engine.evaluate(found, truth).classes[0]
    assert car.best_f1_confidence == pytest.approx(0.6)
    assert car.best_f1 == pytest.approx(6 / 7)


# ------------------------------------------------------------------- pycocotools' own
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_figures_equal_pycocotools_cocoeval_in_any_chunk_size(iou_type):
    truth, predicted = generated_set(7, images=30)
    gt = predictions_as_coco(truth)
    theirs = plain_cocoeval(gt, predicted, iou_type)
    for chunk_size in (1, 7, 1000):
        ours = engine.evaluate(predicted, gt, iou_type=iou_type, chunk_size=chunk_size)
        figures = [ours.map, ours.map50, ours.map75, ours.map_small, ours.map_medium,
                   ours.map_large, ours.mar_1, ours.mar_10, ours.mar_100, ours.mar_small,
                   ours.mar_medium, ours.mar_large]  # fmt: skip
        assert figures == [float(s) for s in theirs.stats]
        for k, c in enumerate(ours.classes):
            precision = theirs.eval["precision"][:, :, k, 0, -1]
            assert c.ap == float(precision[precision > -1].mean())
    assert 0.1 < theirs.stats[0] < 0.9  # a set where the figures mean something


# -------------------------------------------------------------------------- the inputs
def test_every_kind_of_input_gives_the_same_figures(tmp_path):
    truth, predicted = generated_set(3, images=6, masks=False)
    expected = engine.evaluate(predicted, truth).to_dict()
    # ground truth: a COCO file, a Supervisely project, Predictions
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps(predictions_as_coco(truth)))
    with open_exporter("sly", tmp_path / "project", CLASSES) as exporter:
        for p in truth:
            p.image = np.zeros((p.height, p.width, 3), np.uint8)
            exporter.write(p)
    # predictions: a jsonl export (file or folder), a COCO results file
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "predictions.jsonl").write_text(
        "".join(prediction_to_jsonl(p) + "\n" for p in predicted)
    )
    gt = json.loads(gt_file.read_text())
    ids = {i["file_name"]: i["id"] for i in gt["images"]}
    cats = {c["name"]: c["id"] for c in gt["categories"]}
    results = [
        {"image_id": ids[p.name], "category_id": cats[n], "score": float(s),
         "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
        for p in predicted for b, s, n in zip(p.boxes, p.scores, p.classes)
    ]  # fmt: skip
    (tmp_path / "results.json").write_text(json.dumps(results))
    for predictions, ground_truth in [
        (predicted, gt_file),
        (predicted, tmp_path / "project"),
        (tmp_path / "export", truth),
        (tmp_path / "export" / "predictions.jsonl", gt_file),
        (tmp_path / "results.json", gt_file),
    ]:
        got = engine.evaluate(predictions, ground_truth).to_dict()
        assert comparable(got) == pytest.approx(comparable(expected)), (predictions, ground_truth)


def test_a_session_is_evaluated_against_the_scenes_it_predicted(reference_model, tmp_path):
    rng = np.random.default_rng(11)
    truth = []
    for i in range(5):
        boxes = random_boxes(rng, 96, 128, 4)
        Image.fromarray(draw_scene(96, 128, boxes)).save(tmp_path / f"s{i}.png")
        truth.append(
            labelled(
                f"s{i}.png",
                [b[1:] for b in boxes],
                [list(COLORS).index(b[0]) for b in boxes],
                size=(96, 128),
                names=list(COLORS),
            )
        )
    session = reference_model.predict_detached(str(tmp_path))
    report = engine.evaluate(session, truth)
    assert report.map == 1.0 and report.images == report.predicted_images == 5


def test_bad_inputs_are_clear_errors(tmp_path):
    truth = [labelled("a.png", [[0, 0, 10, 10]], [0])]
    other = labelled("a.png", [[0, 0, 10, 10]], [0], names=["truck"])
    with pytest.raises(ValueError, match=r"\['truck'\] are predicted .* no such category"):
        engine.evaluate([other], truth)
    with pytest.raises(ValueError, match="'b.png'.* does not hold"):
        engine.evaluate([labelled("b.png", [[0, 0, 10, 10]], [0])], truth)
    with pytest.raises(ValueError, match="predicted twice"):
        engine.evaluate([truth[0], truth[0]], truth)
    with pytest.raises(ValueError, match="no such file"):
        engine.evaluate(tmp_path / "missing.jsonl", truth)
    (tmp_path / "junk.json").write_text("{oops")
    with pytest.raises(ValueError, match="junk.json.*not a readable JSON"):
        engine.evaluate([], tmp_path / "junk.json")
    with pytest.raises(ValueError, match="iou_threshold must be one of"):
        engine.evaluate(truth, truth, iou_threshold=0.42)
    with pytest.raises(ValueError, match="has no masks"):
        engine.evaluate(truth, truth, iou_type="segm")


# --------------------------------------------------------------------- report and CLI
def test_the_cli_writes_the_report_and_its_pictures(tmp_path):
    truth, predicted = generated_set(5, images=8, masks=False)
    (tmp_path / "gt.json").write_text(json.dumps(predictions_as_coco(truth)))
    (tmp_path / "predictions.jsonl").write_text(
        "".join(prediction_to_jsonl(p) + "\n" for p in predicted)
    )
    out = tmp_path / "report"
    run = subprocess.run(
        [TESSERA, "evaluate", str(tmp_path / "predictions.jsonl"), str(tmp_path / "gt.json"),
         "--out", str(out), "--conf", "0.3"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    expected = engine.evaluate(predicted, truth, conf=0.3)
    assert f"mAP {expected.map:.3f}" in run.stdout
    assert json.loads((out / "metrics.json").read_text())["map"] == expected.map
    for picture in ("pr_curves.png", "confusion_matrix.png", "f1_confidence.png"):
        with Image.open(out / picture) as png:
            assert png.format == "PNG" and png.size[0] > 100
        assert f"]({picture})" in (out / "report.md").read_text()
    bad = subprocess.run(
        [TESSERA, "evaluate", str(tmp_path / "nothing.jsonl"), str(tmp_path / "gt.json"),
         "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2 and "nothing.jsonl" in bad.stderr and "Traceback" not in bad.stderr
