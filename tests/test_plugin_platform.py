"""A platform plugged in from outside: ``tessera-acme`` (tests/plugins/acme), pip-installed.

Nothing in engine/ or connectors/ knows Acme: it registers itself through the
``tessera.platforms`` entry point, and these tests drive it end to end through the public
API and the CLI against a stand-in Acme server (tests/acme_standin.py) holding images of
coloured rectangles whose boxes the reference detector finds exactly.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from acme_standin import AcmeStandin
from PIL import Image
from scenes import draw_scene, random_boxes

from engine import plugins
from engine.cli import build_parser, main

FAST = {"requests_per_second": 200.0, "max_in_flight": 8, "num_uploaders": 2}


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def acme(monkeypatch):
    with AcmeStandin() as standin:
        monkeypatch.setenv("ACME_SERVER", standin.url)
        monkeypatch.setenv("ACME_TOKEN", standin.token)
        yield standin


def seed(acme: AcmeStandin, count: int, seed: int = 11) -> dict[int, tuple[np.ndarray, list]]:
    """Images of known rectangles on the stand-in: id -> (pixels, boxes)."""
    rng = np.random.default_rng(seed)
    truth = {}
    for i in range(count):
        boxes = random_boxes(rng, 72, 96, 3, min_side=8, max_side=24)
        image = draw_scene(72, 96, boxes)
        truth[acme.add_image(f"scene_{i}.png", png(image), dataset="street")] = (image, boxes)
    return truth


def objects(labels: list[str], boxes) -> list[tuple]:
    """(label, x1, y1, x2, y2) of each object, sorted: comparable across formats."""
    return sorted((label, *(round(float(v), 2) for v in box)) for label, box in zip(labels, boxes))


def known(boxes: list) -> list[tuple]:
    return objects([b[0] for b in boxes], [b[1:] for b in boxes])


def of_acme(annotation: dict) -> list[tuple]:
    found = annotation["objects"]
    return objects([o["label"] for o in found], [o["box"] for o in found])


def this_jobs(acme: AcmeStandin, set_id: int, by_hand: str = "by-hand") -> list[dict]:
    return [a for a in acme.annotations_of(set_id) if a["job"] != by_hand]


def test_the_entry_point_alone_registers_acme_everywhere():
    import tessera_acme.plugin

    platform = plugins.platform("acme")
    assert platform is tessera_acme.plugin.PLATFORM  # the installed distribution's object
    assert Path(tessera_acme.plugin.__file__).parent.parent.name == "acme"  # tests/plugins/acme
    assert "acme" in plugins.export_formats() and "acme" in plugins.uploader_names()
    assert "acme" in plugins.annotation_formats()
    assert plugins.input_keywords()["acme_image_id"] == (platform, "acme_image_ids")
    args = build_parser().parse_args(
        ["predict", "--acme-image-id", "3", "--acme-image-id", "4", "--model", "m", "--out", "o"]
    )
    assert args.acme_image_ids == [3, 4]


def test_ids_predict_export_and_upload_once_each_through_faults(reference_model, acme, tmp_path):
    truth = seed(acme, 6)
    ids = list(truth)
    acme.fail_next("429", route="images.file")  # a download told to wait: retried
    # a refused write, then a write whose answer is lost: the runtime retries, no duplicate
    acme.fail_next("503", "drop", route="annotations.create")
    results = reference_model.predict(
        acme_image_ids=ids,
        out=tmp_path / "out",
        format="acme",
        upload="create",
        to="acme",
        upload_options={"set_name": "run 1", "journal_dir": str(tmp_path / "jobs"), **FAST},
        progress=False,
    )
    # 1) predictions: the known boxes, and where each came from
    assert [p.url for p in results] == [f"acme://images/{i}" for i in ids]
    for prediction in results:
        assert prediction.error is None and prediction.source == "acme"
        assert prediction.dataset == "street" and prediction.path is None
        image_id = int(prediction.url.rsplit("/", 1)[1])
        assert objects(prediction.classes, prediction.boxes) == known(truth[image_id][1])
    np.testing.assert_array_equal(results[2].load_image(), truth[ids[2]][0])  # fetched again
    assert acme.count("images.file", 429) == 1
    # 2) the export: one acme.json holding every prediction, readable by the Acme format
    export = json.loads((tmp_path / "out" / "acme.json").read_text())
    assert export["classes"] == reference_model.classes
    assert [record["id"] for record in export["images"]] == ids
    acme_format = plugins.annotation_format("acme")
    for record, prediction in zip(export["images"], results):
        decoded = acme_format.decode(record, reference_model.classes)
        assert record["image"] == prediction.name
        np.testing.assert_allclose(decoded.xyxy, prediction.boxes, atol=0.01)
    total = sum(len(boxes) for _, boxes in truth.values())
    assert results.outputs["export:acme"]["objects"] == total
    assert results.outputs["export:acme"]["files"] == ["acme.json"]
    # 3) the upload: a new set, exactly one annotation per image despite the faults
    report = results.outputs["upload:acme"]
    assert report["delivered"] == len(ids) and report["dead"] == 0
    created = acme.set_named("run 1")
    assert created is not None and created["classes"] == reference_model.classes
    stored = acme.annotations_of(created["id"])
    assert Counter(a["image_id"] for a in stored) == dict.fromkeys(ids, 1)
    assert len({a["job"] for a in stored}) == 1
    for annotation in stored:
        assert of_acme(annotation["annotation"]) == known(truth[annotation["image_id"]][1])
    assert acme.count("annotations.create", 503) == 1
    assert Counter(fault for _, _, fault in acme.records)["drop"] == 1


def test_a_detached_session_appends_to_an_existing_set(reference_model, acme, tmp_path):
    truth = seed(acme, 4, seed=12)
    ids = list(truth)
    reviewed = acme.add_set("reviewed", ["red"])
    acme.add_annotation(reviewed, ids[0], {"image": "scene_0.png", "objects": []}, job="by-hand")
    session = reference_model.predict_detached(
        acme_image_ids=ids,
        out=tmp_path / "out",
        format="acme",
        upload="append",
        to="acme",
        upload_options={"set_name": "reviewed", "journal_dir": str(tmp_path / "jobs"), **FAST},
    )
    with session:
        predictions = list(session)
        outputs = session.status()["outputs"]
    assert [p.url for p in predictions] == [f"acme://images/{i}" for i in ids]
    for prediction, image_id in zip(predictions, ids):
        assert prediction.source == "acme"
        assert objects(prediction.classes, prediction.boxes) == known(truth[image_id][1])
    assert outputs["upload:acme"]["delivered"] == len(ids)
    assert outputs["export:acme"]["images"] == len(ids)
    # the set gained the model's classes and one annotation per image; the old one stays
    assert acme.set_named("reviewed")["classes"] == reference_model.classes
    assert Counter(a["image_id"] for a in this_jobs(acme, reviewed)) == dict.fromkeys(ids, 1)
    assert [a["image_id"] for a in acme.annotations_of(reviewed) if a["job"] == "by-hand"] == [
        ids[0]
    ]
    export = json.loads((tmp_path / "out" / "acme.json").read_text())
    assert [record["id"] for record in export["images"]] == ids


def test_a_local_acme_folder_is_an_input(reference_model, tmp_path):
    rng = np.random.default_rng(13)
    folder = tmp_path / "acme_download"
    folder.mkdir()
    truth = {}
    for name in ["b.png", "a.png", "c.png"]:
        boxes = random_boxes(rng, 64, 80, 3, min_side=8, max_side=20)
        Image.fromarray(draw_scene(64, 80, boxes)).save(folder / name)
        truth[name] = boxes
    (folder / "notes.txt").write_text("not in the manifest")
    manifest = {"classes": [], "images": [{"image": "b.png", "id": 41}, {"image": "a.png"}]}
    manifest["images"].append({"image": "c.png", "id": 43})
    (folder / "acme.json").write_text(json.dumps(manifest))
    results = reference_model.predict(folder, progress=False)
    assert [p.name for p in results] == ["b.png", "a.png", "c.png"]  # the manifest's order
    assert [p.url for p in results] == ["acme://images/41", None, "acme://images/43"]
    for prediction in results:
        assert prediction.error is None and prediction.source == "acme"
        assert prediction.path == str((folder / prediction.name).absolute())
        assert objects(prediction.classes, prediction.boxes) == known(truth[prediction.name])
    image = np.asarray(Image.open(folder / "a.png").convert("RGB"))
    np.testing.assert_array_equal(results[1].load_image(), image)  # read from the folder

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "acme.json").write_text('{"images": [{"name": "x.png"}]}')
    [failed] = reference_model.predict(broken, progress=False)
    assert failed.source == "acme" and "not an Acme manifest" in failed.error


def test_the_cli_takes_acme_ids_exports_and_uploads(ray_session, acme, tmp_path, capsys):
    truth = seed(acme, 2, seed=14)
    ids = list(truth)
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            *("--acme-image-id", str(ids[0]), "--acme-image-id", str(ids[1])),
            *("--model", "reference/color-boxes", "--out", str(out), "--format", "acme"),
            *("--upload", "create", "--to", "acme", "--upload-option", "set_name=from the cli"),
            *("--upload-option", f"journal_dir={json.dumps(str(tmp_path / 'jobs'))}"),
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    export = json.loads((out / "acme.json").read_text())
    assert [record["id"] for record in export["images"]] == ids
    for record in export["images"]:
        assert of_acme(record) == known(truth[record["id"]][1])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outputs"]["upload:acme"]["delivered"] == 2
    created = acme.set_named("from the cli")
    assert sorted(a["image_id"] for a in acme.annotations_of(created["id"])) == ids


def test_unknown_formats_and_destinations_name_the_installed_ones(
    reference_model, tmp_path, monkeypatch, capsys
):
    image = draw_scene(32, 32, [("red", 4, 4, 12, 12)])
    with pytest.raises(ValueError, match="unknown format 'nope'") as error:
        reference_model.predict(image, out=tmp_path, format="nope")
    assert "acme" in str(error.value) and "jsonl" in str(error.value)
    with pytest.raises(ValueError, match="nope") as error:
        reference_model.predict(image, upload="create", to="nope")
    assert "acme" in str(error.value) and "supervisely" in str(error.value)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "--format", "nope", "--model", "m", "--out", "o"])
    assert "'acme'" in capsys.readouterr().err
    # Acme's own check, before anything runs: no credentials
    monkeypatch.delenv("ACME_SERVER", raising=False)
    monkeypatch.delenv("ACME_TOKEN", raising=False)
    with pytest.raises(ValueError, match="ACME_SERVER and ACME_TOKEN"):
        reference_model.predict(image, upload="create", to="acme")
