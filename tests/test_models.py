"""The model zoo, its adapters, checkpoints and TorchScript files (no Ray, no downloads).

Every torchvision network here is built with random weights (``pretrained=False``, fixed
seed). The R-CNN family is told to resize to 128 px inside instead of 800 px so that the
whole file stays fast on a 2-core CPU; the adapters' code paths are the same.
"""

from __future__ import annotations

import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.detections import Detections
from engine.models import (
    ModelAdapter,
    ZooEntry,
    list_models,
    load_checkpoint,
    resolve_model,
    save_checkpoint,
    save_torchscript,
)
from engine.models.mtcnn import MTCNNFaceDetector
from engine.models.reference import ColorBoxDetector
from engine.models.torchscript import TorchScriptModel
from engine.models.torchvision_models import (
    ClassifierPreprocess,
    TorchvisionClassifier,
    TorchvisionDetector,
    TorchvisionKeypointDetector,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TORCHVISION_NAMES = [e.name for e in list_models() if e.name.startswith("torchvision/")]
PETS = ["__background__", "cat", "dog"]
SSDLITE = "torchvision/ssdlite320_mobilenet_v3_large"


def two_images() -> list[np.ndarray]:
    """Two random RGB images of different sizes."""
    rng = np.random.default_rng(0)
    return [
        rng.integers(0, 256, (64, 80, 3), dtype=np.uint8),
        rng.integers(0, 256, (72, 56, 3), dtype=np.uint8),
    ]


def small(adapter: ModelAdapter) -> ModelAdapter:
    """The same R-CNN-family adapter, resizing to 128 px inside instead of 800 px."""
    if isinstance(adapter, TorchvisionDetector) and adapter.input_size == (800, 800):
        return type(adapter)(adapter.architecture, pretrained=False, min_size=128, max_size=160)
    return adapter


def loaded(model, seed: int = 0, **options) -> ModelAdapter:
    """Resolve ``model`` and load it on the CPU with a fixed seed."""
    adapter = resolve_model(model, **options)
    torch.manual_seed(seed)
    adapter.load("cpu")
    return adapter


def example_photos() -> list[np.ndarray]:
    """The three example photos (one face each) as RGB arrays."""
    names = ["astronaut.png", "camera.png", "grace_hopper.jpg"]
    return [np.asarray(Image.open(EXAMPLES / n).convert("RGB")) for n in names]


# ---------------------------------------------------------------------- the zoo
def test_list_models_names_each_family_with_its_task():
    entries = {e.name: e for e in list_models()}
    assert all(isinstance(e, ZooEntry) and e.description for e in entries.values())
    assert entries["torchvision/fasterrcnn_resnet50_fpn_v2"].task == "detection"
    assert entries["torchvision/maskrcnn_resnet50_fpn_v2"].task == "instance_segmentation"
    assert entries["torchvision/keypointrcnn_resnet50_fpn"].task == "keypoints"
    assert entries["torchvision/resnet50"].task == "classification"
    assert entries["faces/mtcnn"].task == "detection"
    with pytest.raises(AttributeError):
        entries["faces/mtcnn"].name = "other"  # frozen


@pytest.mark.parametrize("entry", list_models(), ids=lambda e: e.name)
def test_resolved_zoo_adapters_are_unloaded_light_and_picklable(entry):
    options = {} if entry.name == "faces/mtcnn" else {"pretrained": False}
    adapter = resolve_model(entry.name, **options)
    assert (adapter.name, adapter.task) == (entry.name, entry.task)
    assert getattr(adapter, "network", None) is None
    assert len(pickle.dumps(adapter)) < 100_000


def test_bare_architecture_name_resolves_like_the_zoo_name():
    adapter = resolve_model("resnet50", pretrained=False)
    assert isinstance(adapter, TorchvisionClassifier)
    assert adapter.name == "torchvision/resnet50"


def test_detector_classes_are_torchvision_categories_indexed_by_label():
    adapter = resolve_model("torchvision/fasterrcnn_resnet50_fpn_v2", pretrained=False)
    assert adapter.classes[:3] == ["__background__", "person", "bicycle"]
    assert len(adapter.classes) == 91 and "N/A" in adapter.classes
    assert adapter.default_conf == 0.5 and adapter.input_size == (800, 800)
    keypoints = resolve_model("torchvision/keypointrcnn_resnet50_fpn", pretrained=False)
    assert isinstance(keypoints, TorchvisionKeypointDetector)
    assert keypoints.classes == ["no person", "person"]  # torchvision's meta, as it is
    assert len(keypoints.keypoint_names) == 17 and keypoints.keypoint_names[0] == "nose"
    clf = resolve_model("torchvision/mobilenet_v3_small", pretrained=False)
    assert len(clf.classes) == 1000 and clf.default_conf == 0.0 and clf.input_size == (224, 224)


# ---------------------------------------------------------------------- torchvision adapters
@pytest.mark.parametrize("name", TORCHVISION_NAMES)
def test_zoo_architecture_with_random_weights_returns_one_valid_detections_per_image(name):
    images = two_images()
    adapter = small(resolve_model(name, pretrained=False))
    torch.manual_seed(0)
    adapter.load("cpu")
    results = adapter.infer(images, conf=0.0)
    assert len(results) == 2
    for image, det in zip(images, results, strict=True):
        h, w = image.shape[:2]
        assert isinstance(det, Detections)
        assert det.xyxy.dtype == np.float32 and det.xyxy.shape == (len(det), 4)
        assert det.scores.dtype == np.float32 and det.class_idxs.dtype == np.int64
        assert np.all((det.class_idxs >= 0) & (det.class_idxs < len(adapter.classes)))
        assert np.all(det.xyxy[:, [0, 2]] <= w) and np.all(det.xyxy[:, [1, 3]] <= h)
        if adapter.task == "classification":
            assert len(det) == 1
            assert det.xyxy.tolist() == [[0.0, 0.0, float(w), float(h)]]
            assert 0.0 < det.scores[0] <= 1.0
        elif adapter.task == "instance_segmentation":
            assert len(det) > 0
            masks = det.masks(h, w)
            assert masks.shape == (len(det), h, w) and masks.dtype == bool
            assert det.keypoints is None
        elif adapter.task == "keypoints":
            assert len(det) > 0
            assert det.keypoints.shape == (len(det), 17, 3)
            kp_scores = det.keypoints[..., 2]  # sigmoid of logits, not the visibility flag 1
            assert np.all((kp_scores >= 0) & (kp_scores <= 1)) and kp_scores.min() < 1
            assert det.masks_rle is None
        else:
            assert det.masks_rle is None and det.keypoints is None


def test_detector_passes_conf_to_the_network_threshold():
    """conf=0 returns boxes below torchvision's own 0.05 threshold; conf=1 returns none."""
    adapter = small(resolve_model("fasterrcnn_mobilenet_v3_large_fpn", pretrained=False))
    torch.manual_seed(0)
    adapter.load("cpu")
    low = adapter.infer(two_images(), conf=0.0)
    assert all(len(d) > 0 for d in low)
    assert min(float(d.scores.min()) for d in low) < 0.05
    assert all(len(d) == 0 for d in adapter.infer(two_images(), conf=1.0))


@pytest.mark.parametrize("architecture", ["resnet50", "efficientnet_b0"])
def test_classifier_preprocess_matches_torchvision_weights_transforms(architecture):
    import torchvision

    weights = torchvision.models.get_model_weights(architecture).DEFAULT
    image = two_images()[0].repeat(5, axis=0).repeat(4, axis=1)  # 320 x 320
    image = image[:300]
    ours = ClassifierPreprocess.from_weights(weights)([image], "cpu")
    reference = weights.transforms()(torch.from_numpy(image).permute(2, 0, 1))
    assert ours.shape == (1, 3, 224, 224)
    torch.testing.assert_close(ours[0], reference, atol=1e-5, rtol=0)


def test_classifier_score_is_the_top1_softmax_probability():
    adapter = loaded("torchvision/mobilenet_v3_small", pretrained=False)
    images = two_images()
    with torch.inference_mode():
        probs = adapter.network(adapter.preprocess(images, "cpu")).softmax(1)
    results = adapter.infer(images, conf=0.0)
    assert [int(d.class_idxs[0]) for d in results] == probs.argmax(1).tolist()
    np.testing.assert_allclose([d.scores[0] for d in results], probs.max(1).values, rtol=1e-6)


def test_pretrained_weights_that_cannot_be_fetched_raise_with_a_hint(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    adapter = resolve_model("torchvision/mobilenet_v3_small")
    with pytest.raises(RuntimeError, match="could not be fetched.*pretrained=False"):
        adapter.load("cpu")


# ---------------------------------------------------------------------- MTCNN
def test_mtcnn_matches_facenet_detect_and_finds_one_face_per_photo():
    from facenet_pytorch import MTCNN

    photos = example_photos()  # two 512x512 and one 512x600: two same-size groups
    adapter = loaded("faces/mtcnn")
    results = adapter.infer(photos, conf=0.0)
    reference = MTCNN(keep_all=True, device=torch.device("cpu"))
    for photo, det in zip(photos, results, strict=True):
        boxes, probs, points = reference.detect(photo, landmarks=True)
        assert len(det) == 1 and det.class_idxs.tolist() == [0]
        np.testing.assert_allclose(det.xyxy, np.asarray(boxes, np.float32), atol=1e-3)
        np.testing.assert_allclose(det.scores, np.asarray(probs, np.float32), atol=1e-6)
        assert det.keypoints.shape == (1, 5, 3)
        np.testing.assert_allclose(
            det.keypoints[..., :2], np.asarray(points, np.float32).reshape(1, 5, 2), atol=1e-3
        )
        np.testing.assert_allclose(det.keypoints[0, :, 2], det.scores[0])
    assert adapter.classes == ["face"] and adapter.default_conf == 0.7


def test_mtcnn_returns_empty_detections_for_a_faceless_image_in_the_batch():
    adapter = loaded("faces/mtcnn")
    photo = example_photos()[0]
    results = adapter.infer([np.zeros_like(photo), photo, np.zeros((40, 50, 3), np.uint8)], 0.7)
    assert [len(d) for d in results] == [0, 1, 0]
    assert results[0].keypoints.shape == (0, 5, 3)


# ---------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    images = two_images()
    original = loaded(SSDLITE, pretrained=False, classes=PETS)
    expected = original.infer(images, conf=0.0)
    path = save_checkpoint(tmp_path / "pets" / "ssdlite.pt", original, dataset="pets", epochs=3)

    stored = load_checkpoint(path)
    assert stored["format"] == "tessera-checkpoint" and stored["version"] == 1
    assert stored["architecture"] == SSDLITE and stored["classes"] == PETS
    assert stored["metadata"] == {"dataset": "pets", "epochs": 3}

    restored = resolve_model(path)
    assert restored.name == SSDLITE and restored.classes == PETS
    torch.manual_seed(1)  # a different seed: the weights must come from the file
    restored.load("cpu")
    got = restored.infer(images, conf=0.0)
    for want, have in zip(expected, got, strict=True):
        assert len(want) > 0
        np.testing.assert_array_equal(have.xyxy, want.xyxy)
        np.testing.assert_array_equal(have.scores, want.scores)
        np.testing.assert_array_equal(have.class_idxs, want.class_idxs)


def test_checkpoint_from_name_classes_and_module_and_as_zoo_weights(tmp_path):
    original = loaded(SSDLITE, pretrained=False, classes=PETS)
    path = save_checkpoint(
        tmp_path / "pets.pt", "ssdlite320_mobilenet_v3_large", PETS, original.network
    )
    assert load_checkpoint(path)["architecture"] == SSDLITE  # bare name made canonical
    via_weights = loaded(SSDLITE, seed=1, weights=path)  # classes come from the checkpoint
    assert via_weights.classes == PETS
    images = two_images()
    np.testing.assert_array_equal(
        via_weights.infer(images, 0.0)[0].scores, original.infer(images, 0.0)[0].scores
    )


def test_plain_state_dict_needs_architecture_and_then_loads(tmp_path):
    original = loaded(SSDLITE, pretrained=False, classes=PETS)
    path = tmp_path / "plain.pth"
    torch.save(original.network.state_dict(), path)
    with pytest.raises(ValueError, match="architecture="):
        resolve_model(path)
    restored = loaded(path, seed=1, architecture=SSDLITE, classes=PETS)
    images = two_images()
    np.testing.assert_array_equal(
        restored.infer(images, 0.0)[1].xyxy, original.infer(images, 0.0)[1].xyxy
    )


def test_checkpoint_without_batchnorm_counters_loads_like_a_pretrained_one(tmp_path):
    """Pretrained torchvision detectors use FrozenBatchNorm2d (no num_batches_tracked)."""
    name = "torchvision/fasterrcnn_mobilenet_v3_large_fpn"
    original = loaded(name, pretrained=False)
    state = {
        k: v for k, v in original.network.state_dict().items() if "num_batches_tracked" not in k
    }
    path = save_checkpoint(tmp_path / "frozen.pt", name, original.classes, state)
    restored = loaded(path, seed=1)
    for key, value in state.items():
        torch.testing.assert_close(restored.network.state_dict()[key], value, rtol=0, atol=0)


def test_zoo_weights_option_checks_the_file_early(tmp_path):
    original = loaded(SSDLITE, pretrained=False, classes=PETS)
    path = save_checkpoint(tmp_path / "pets.pt", original)
    with pytest.raises(ValueError, match=r"pets\.pt.*ssdlite.*not of 'torchvision/resnet18'"):
        resolve_model("resnet18", weights=path)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00not torch")
    with pytest.raises(ValueError, match=r"junk\.bin"):
        resolve_model("resnet18", weights=junk)


def test_checkpoint_with_wrong_class_count_names_the_file(tmp_path):
    original = loaded(SSDLITE, pretrained=False, classes=PETS)
    path = save_checkpoint(tmp_path / "pets.pt", original)
    adapter = resolve_model(path, classes=["__background__", "cat"])
    with pytest.raises(RuntimeError, match=r"pets\.pt.*do not fit"):
        adapter.load("cpu")


# ---------------------------------------------------------------------- TorchScript
# torch 2.14 marks torch.jit as deprecated; scripted torchvision SSD warns about its output.
quiet_jit = pytest.mark.filterwarnings(
    r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning",
    "ignore:SSD always returns:UserWarning",
)


@quiet_jit
def test_torchscript_classifier_gives_the_eager_top1(tmp_path):
    eager = loaded("torchvision/mobilenet_v3_small", pretrained=False)
    path = save_torchscript(
        tmp_path / "clf.ts", torch.jit.script(eager.network), "classification", eager.classes
    )
    scripted = resolve_model(path)
    assert isinstance(scripted, TorchScriptModel)
    assert scripted.task == "classification" and scripted.classes == eager.classes
    scripted.load("cpu")
    images = two_images()
    want, got = eager.infer(images, 0.0), scripted.infer(images, 0.0)
    assert [d.class_idxs.tolist() for d in got] == [d.class_idxs.tolist() for d in want]
    np.testing.assert_allclose([d.scores[0] for d in got], [d.scores[0] for d in want], rtol=1e-5)
    np.testing.assert_array_equal(got[1].xyxy, want[1].xyxy)


@quiet_jit
def test_torchscript_detector_returning_losses_and_detections_matches_eager(tmp_path):
    eager = loaded(SSDLITE, pretrained=False, classes=PETS)
    path = save_torchscript(tmp_path / "det.pt", eager.network, "detection", PETS)  # scripted
    scripted = loaded(path)
    images = two_images()
    want, got = eager.infer(images, 0.0), scripted.infer(images, 0.0)
    for w, g in zip(want, got, strict=True):
        assert len(w) > 0
        np.testing.assert_allclose(g.xyxy, w.xyxy, atol=1e-4)
        np.testing.assert_allclose(g.scores, w.scores, atol=1e-6)


@quiet_jit
def test_torchscript_without_tessera_json_needs_task_and_classes(tmp_path):
    path = tmp_path / "bare.ts"
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), str(path))
    with pytest.raises(ValueError, match=r"bare\.ts.*task= and classes="):
        resolve_model(path)
    adapter = resolve_model(path, task="classification", classes=["a", "b"])
    assert adapter.task == "classification" and adapter.classes == ["a", "b"]


# ---------------------------------------------------------------------- bad inputs
def test_unknown_zoo_name_lists_the_available_names():
    with pytest.raises(ValueError, match="tessera models") as info:
        resolve_model("torchvision/resnet5")
    assert "torchvision/resnet50" in str(info.value) and "faces/mtcnn" in str(info.value)


def test_unknown_option_is_named_with_the_valid_ones():
    with pytest.raises(ValueError, match="'colour'.*pretrained, weights, classes"):
        resolve_model("torchvision/resnet50", colour="red")


def test_missing_path_raises_file_not_found_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        resolve_model(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        resolve_model("models/nope.pt")
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        resolve_model("resnet50", weights=tmp_path / "absent.pt")


def test_garbage_file_is_rejected_with_its_name(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match=r"junk\.pt.*not a PyTorch weights file"):
        resolve_model(path)
    with pytest.raises(ValueError, match=r"junk\.pt.*not a PyTorch weights file"):
        load_checkpoint(path)
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    with pytest.raises(ValueError, match=r"notes\.txt"):
        resolve_model(text, architecture="resnet18")


def test_pickled_module_file_is_refused_with_the_reason(tmp_path):
    path = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(ValueError, match=r"module\.pt.*pickled Python objects"):
        resolve_model(path, architecture="resnet18")


def test_load_checkpoint_names_what_is_missing(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(1)}, plain)
    with pytest.raises(ValueError, match=r"plain\.pt.*not a Tessera checkpoint"):
        load_checkpoint(plain)
    partial = tmp_path / "partial.pt"
    torch.save({"format": "tessera-checkpoint", "version": 1, "classes": ["a"]}, partial)
    with pytest.raises(ValueError, match=r"partial\.pt.*'architecture' is missing"):
        load_checkpoint(partial)


def test_save_checkpoint_rejects_unknown_architectures_and_unloaded_adapters(tmp_path):
    with pytest.raises(ValueError, match="torchvision/resnet50"):
        save_checkpoint(tmp_path / "x.pt", "resnet500", ["a"], {"w": torch.zeros(1)})
    with pytest.raises(ValueError, match="not loaded"):
        save_checkpoint(tmp_path / "x.pt", resolve_model("resnet18", pretrained=False))
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(tmp_path / "x.pt", "resnet18", ["a"], {"w": torch.zeros(1)}, bad=object())
    assert not (tmp_path / "x.pt").exists()


def test_invalid_model_specs_and_option_combinations():
    with pytest.raises(TypeError, match="zoo name"):
        resolve_model(42)
    with pytest.raises(ValueError, match="pretrained=False"):
        resolve_model("torchvision/resnet50", classes=["cat", "dog"])  # pretrained head is 1000
    with pytest.raises(ValueError, match="__background__"):
        resolve_model(SSDLITE, pretrained=False, classes=["cat", "dog"])
    with pytest.raises(ValueError, match="task="):
        resolve_model("torchvision/resnet50", task="detection")
    with pytest.raises(ValueError, match="bundled"):
        resolve_model("faces/mtcnn", pretrained=False)


def test_adapter_instances_pass_through_and_classes_take_options():
    detector = ColorBoxDetector()
    assert resolve_model(detector) is detector
    built = resolve_model(ColorBoxDetector, min_area=9)
    assert isinstance(built, ColorBoxDetector) and built.min_area == 9
    with pytest.raises(ValueError, match="bogus.*min_area"):
        resolve_model(ColorBoxDetector, bogus=1)
    with pytest.raises(ValueError, match="do not apply"):
        resolve_model(MTCNNFaceDetector(), pretrained=False)
