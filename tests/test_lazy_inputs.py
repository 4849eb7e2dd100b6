"""Inputs listed lazily: a large job's items are listed folder by folder, never held at once.

A job with more than `engine.sources.job_items.KEEP_ITEMS` items keeps none of them after
its survey and lists its input again as it predicts (in the driver for ``predict``, in the
session actor for ``predict_detached``); the predictions must be exactly those of a job
that keeps its list. Each generated image holds known rectangles.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from scenes import draw_scene, random_boxes

from engine.settings import VideoSettings
from engine.sources import job_items
from engine.sources.job_items import JobItems
from engine.sources.resolve import iter_resolved, resolve_input


def write_tree(root: Path, seed: int = 5) -> dict[str, list]:
    """Images (with known boxes) in nested folders, with names that sort tricky:
    ``a/`` holds files that sort before ``a.png``; non-images and hidden files beside."""
    rng = np.random.default_rng(seed)
    truth = {}
    layout = ["a/x.png", "a/y/z.png", "a.png", "b/c.png", "b/d/e.png", "b/d.png", "c.png"]
    layout += [f"many/img_{i:02d}.png" for i in range(14)]
    for relative in layout:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        boxes = random_boxes(rng, 40, 48, 2, min_side=6, max_side=14)
        Image.fromarray(draw_scene(40, 48, boxes)).save(path)
        truth[str(path)] = boxes
    (root / "b" / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"")
    return truth


def test_lazy_listing_gives_the_items_of_a_full_sort_by_path(tmp_path):
    truth = write_tree(tmp_path)
    items = list(iter_resolved(str(tmp_path), recursive=True))
    # every image once, ordered as sorting every path by its parts would order them
    expected = sorted(truth, key=lambda p: Path(p).relative_to(tmp_path).parts)
    assert [item.path for item in items] == expected
    assert [item.index for item in items] == list(range(len(expected)))
    assert resolve_input(str(tmp_path), recursive=True).items == items
    # the skipped file is reported, the hidden one ignored
    assert resolve_input(str(tmp_path), recursive=True).skipped == [str(tmp_path / "b/notes.txt")]


def test_a_large_job_keeps_no_list_and_lists_again_alike(tmp_path, monkeypatch):
    truth = write_tree(tmp_path / "tree")
    monkeypatch.chdir(tmp_path)
    small = JobItems.survey(["tree", "missing.png"], True, VideoSettings())
    large = JobItems.survey(["tree", "missing.png"], True, VideoSettings(), keep_items=4)
    assert small.listed_once and not large.listed_once
    assert len(large) == large.num_rows == len(truth) + 1
    assert large.sources == {"file": len(truth) + 1} and large.skipped == small.skipped
    # a later pass (from another folder: relative paths keep the caller's folder) lists
    # the same items again
    monkeypatch.chdir(tmp_path / "tree" / "a")
    assert list(large) == list(small) == list(large)
    assert list(large)[-1].error == "file not found: missing.png"
    # a resumed job leaves out what is done
    done = {f"{item.index}:{item.path}:" for item in list(small)[:5]}
    rest = large.without(done)
    assert [item.index for item in rest] == list(range(5, len(truth) + 1))
    assert not rest.listed_once and rest.num_rows == len(truth) + 1 - 5


def test_in_memory_inputs_are_always_kept(tmp_path):
    arrays = [np.full((4, 4, 3), i, np.uint8) for i in range(6)]
    job = JobItems.survey(arrays, False, VideoSettings(), keep_items=2)
    assert job.listed_once and [item.name for item in job] == [f"array_{i}" for i in range(6)]
    assert sorted(job.in_memory) == list(range(6))


def _answer(prediction) -> dict:
    """A prediction's answer, without the model's timing."""
    return {k: v for k, v in prediction.to_dict().items() if k != "latency_ms"}


def _boxes_by_path(predictions) -> dict[str, list]:
    return {p.path: sorted(map(tuple, np.round(p.boxes, 2).tolist())) for p in predictions}


def _truth_boxes(truth: dict[str, list]) -> dict[str, list]:
    return {
        path: sorted(tuple(float(v) for v in b[1:]) for b in boxes) for path, boxes in truth.items()
    }


def test_predict_and_detached_over_a_relisted_input_match_the_kept_list(
    reference_model, tmp_path, monkeypatch
):
    truth = write_tree(tmp_path / "tree")
    monkeypatch.chdir(tmp_path)
    kept = reference_model.predict("tree", recursive=True, batch_size=1, progress=False)
    # the same job listed again as it goes, in plans of a few batches each
    monkeypatch.setattr(job_items, "KEEP_ITEMS", 3)
    listings = []
    listing = job_items.iter_resolved
    monkeypatch.setattr(job_items, "iter_resolved", lambda *a: listings.append(a) or listing(*a))
    relisted = reference_model.predict("tree", recursive=True, batch_size=1, progress=False)
    assert len(listings) == 2  # the survey, then the pass that feeds the plans
    assert [_answer(p) for p in relisted] == [_answer(p) for p in kept]
    assert [p.path for p in relisted] == sorted(
        truth, key=lambda p: Path(p).relative_to(tmp_path / "tree").parts
    )
    assert _boxes_by_path(relisted) == _truth_boxes(truth)
    # the detached session lists the input in its own process, from the caller's folder
    session = reference_model.predict_detached("tree", recursive=True, batch_size=1)
    detached = list(session)
    assert [p.path for p in detached] == [p.path for p in kept]
    assert _boxes_by_path(detached) == _truth_boxes(truth)
    assert session.status()["progress"] == {"done": len(truth), "total": len(truth)}


def test_a_relisted_job_exports_every_item_once(reference_model, tmp_path, monkeypatch):
    truth = write_tree(tmp_path / "tree")
    monkeypatch.setattr(job_items, "KEEP_ITEMS", 3)
    out = tmp_path / "out"
    results = reference_model.predict(
        str(tmp_path / "tree"), recursive=True, out=out, batch_size=2, progress=False
    )
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(results) == len(truth)
    assert sorted(line["path"] for line in lines) == sorted(truth)


def test_a_stream_hands_out_the_predictions_and_keeps_only_the_failed(
    reference_model, tmp_path, monkeypatch
):
    truth = write_tree(tmp_path / "tree")
    monkeypatch.setattr(job_items, "KEEP_ITEMS", 3)
    out = tmp_path / "out"
    inputs = [str(tmp_path / "tree"), str(tmp_path / "missing.png")]
    stream = reference_model.predict(inputs, recursive=True, out=out, stream=True, progress=False)
    assert len(stream) == len(truth) + 1 and stream.summary()["items"] == 0
    streamed = list(stream)
    listed = reference_model.predict(inputs, recursive=True, progress=False)
    assert [_answer(p) for p in streamed] == [_answer(p) for p in listed]
    assert (
        stream.summary()
        == listed.summary()
        == {
            "items": len(truth) + 1,
            "predicted": len(truth),
            "failed": 1,
            "skipped": 1,
            "objects": sum(len(boxes) for boxes in truth.values()),
        }
    )
    assert [p.name for p in stream.failed] == ["missing.png"]
    assert stream.outputs["export:jsonl"]["written"] == len(truth) + 1
