"""Very large images are tiled from bands read off the file, with bounded memory."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scenes import boxes_array, draw_scene, random_boxes, sort_xyxy

import engine
from engine.inference import predict_images_tiled
from engine.models.reference import COLORS, ColorBoxDetector
from engine.settings import ModelInfo, validate_settings
from engine.sources.bands import BandReader, BandSource, band_source_for
from engine.sources.decode import ImageLoadError, decode_image_file

pyvips = pytest.importorskip("pyvips")

RNG = np.random.default_rng(3)
NOISE = RNG.integers(0, 256, (300, 420, 3), np.uint8)


def band_source(path) -> BandSource:
    source = band_source_for(str(path), path.name, 10**9, min_pixels=0)
    assert source is not None
    return source


@pytest.mark.parametrize(
    "suffix,mode,options",
    [
        (".png", "RGB", {}),
        (".png", "RGBA", {}),
        (".png", "L", {}),
        (".png", "LA", {}),
        (".png", "P", {}),
        (".jpg", "RGB", {"quality": 90}),
        (".jpg", "L", {}),
        (".tif", "RGB", {}),
        (".tif", "RGB", {"tiffinfo": {322: 64, 323: 64}}),  # tiled TIFF
    ],
)
def test_bands_hold_the_same_pixels_as_a_whole_decode(tmp_path, suffix, mode, options):
    path = tmp_path / f"noise{suffix}"
    Image.fromarray(NOISE).convert(mode).save(path, **options)
    reader = BandReader(band_source(path))
    whole = decode_image_file(path)
    # overlapping bands, as rows of tiles ask for them
    for top, bottom in [(0, 100), (60, 180), (150, 300)]:
        np.testing.assert_array_equal(reader.rows(top, bottom), whole[top:bottom])


def test_sixteen_bit_png_keeps_the_high_byte(tmp_path):
    path = tmp_path / "gray16.png"
    Image.fromarray(RNG.integers(0, 65536, (64, 80)).astype(np.uint16)).save(path)
    whole = decode_image_file(path)
    np.testing.assert_array_equal(BandReader(band_source(path)).rows(0, 64), whole)


def test_bands_must_go_top_to_bottom(tmp_path):
    path = tmp_path / "noise.png"
    Image.fromarray(NOISE).save(path)
    reader = BandReader(band_source(path))
    reader.rows(100, 200)
    with pytest.raises(ValueError, match="out of order"):
        reader.rows(50, 150)


def test_which_files_are_read_in_bands(tmp_path):
    png = tmp_path / "noise.png"
    Image.fromarray(NOISE).save(png)
    assert band_source_for(str(png), "noise.png", 10**9) is None  # small: decoded whole
    with pytest.raises(ImageLoadError, match=r"noise.png: image is 420x300 .* \(max_pixels\)"):
        band_source_for(str(png), "noise.png", 1000, min_pixels=0)
    cmyk = tmp_path / "cmyk.jpg"
    Image.fromarray(NOISE).convert("CMYK").save(cmyk)
    assert band_source_for(str(cmyk), "cmyk.jpg", 10**9, min_pixels=0) is None
    turned = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(NOISE).save(turned, exif=exif)
    assert band_source_for(str(turned), "turned.jpg", 10**9, min_pixels=0) is None
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    assert band_source_for(str(text), "notes.png", 10**9, min_pixels=0) is None
    with pytest.raises(ImageLoadError, match="file not found"):
        band_source_for(str(tmp_path / "gone.png"), "gone.png", 10**9, min_pixels=0)


def settings(**options):
    info = ModelInfo("ref", "detection", list(COLORS), default_conf=0.5, input_size=(512, 512))
    return validate_settings({"sliding_window": True, **options}, info)


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory):
    rng = np.random.default_rng(11)
    boxes = random_boxes(rng, 700, 900, 80, min_side=10, max_side=40, gap=4)
    image = draw_scene(700, 900, boxes)
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    Image.fromarray(image).save(path)
    return path, image, boxes


@pytest.mark.parametrize(
    "options",
    [
        {"window_size": 200, "overlap": 48, "merge": "greedy_nmm", "merge_metric": "ios"},
        {"window_size": (160, 256), "overlap": 0.25, "batch_size": 3},
        {"window_size": 256, "overlap": 64, "img_size": (350, 450)},
    ],
)
def test_tiling_from_bands_equals_tiling_the_decoded_image(scene_file, options):
    path, image, boxes = scene_file
    detector = ColorBoxDetector()
    chosen = settings(**options)
    from_bands, from_array = predict_images_tiled(detector, [band_source(path), image], chosen)
    assert from_bands.error is None
    if "img_size" not in options:  # libvips and Pillow resize a little differently
        np.testing.assert_array_equal(from_bands.detections.xyxy, from_array.detections.xyxy)
        np.testing.assert_array_equal(from_bands.detections.scores, from_array.detections.scores)
    else:
        assert abs(len(from_bands.detections) - len(from_array.detections)) <= 2
    if options.get("merge") == "greedy_nmm":
        found = sort_xyxy(from_bands.detections.xyxy)
        np.testing.assert_allclose(found, boxes_array(boxes), atol=1.0)


def test_full_image_pass_reads_a_shrunk_copy(scene_file):
    path, _, boxes = scene_file
    chosen = settings(
        window_size=300, overlap=80, full_image=True, merge="greedy_nmm", merge_metric="ios"
    )
    (result,) = predict_images_tiled(ColorBoxDetector(), [band_source(path)], chosen)
    assert result.error is None
    assert len(result.detections) == len(boxes)


def test_a_truncated_large_file_fails_alone(scene_file, tmp_path):
    path, image, _ = scene_file
    cut = tmp_path / "cut.png"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    chosen = settings(window_size=256, overlap=64)
    broken, good = predict_images_tiled(ColorBoxDetector(), [band_source(cut), image], chosen)
    assert broken.detections is None
    assert broken.error.startswith("cut.png: cannot decode image")
    assert good.error is None and len(good.detections) > 0


# ------------------------------------------------------------------ 20000 x 20000 end to end
SIDE = 20000
PATCH_COLORS = list(COLORS.items())


def write_huge_png(path) -> list[tuple[str, int, int, int, int]]:
    """A 20000x20000 PNG (1.2 GB decoded) of known rectangles, written as a stream."""
    rng = np.random.default_rng(5)
    image = pyvips.Image.black(SIDE, SIDE, bands=3)
    boxes = []
    for row in range(8):
        for column in range(8):
            name, rgb = PATCH_COLORS[(row * 8 + column) % len(PATCH_COLORS)]
            w, h = int(rng.integers(30, 190)), int(rng.integers(30, 190))
            x = column * 2500 + int(rng.integers(0, 2300))
            y = row * 2500 + int(rng.integers(0, 2300))
            patch = (pyvips.Image.black(w, h, bands=3) + list(rgb)).cast("uchar")
            image = image.insert(patch, x, y)
            boxes.append((name, x, y, x + w, y + h))
    image.pngsave(str(path), compression=1)
    return boxes


def test_a_20000_by_20000_png_is_predicted_in_bounded_memory(ray_session, tmp_path):
    path = tmp_path / "huge.png"
    boxes = write_huge_png(path)
    decoded_bytes = SIDE * SIDE * 3
    with engine.deploy("reference/color-boxes") as model:
        refused = model.predict(path, sliding_window=True, progress=False)[0]
        assert "above the limit" in refused.error and "max_pixels" in refused.error
        before = [r["process"]["rss"] for r in model.resources()]
        prediction = model.predict(
            path,
            sliding_window=True,
            window_size=1024,
            merge="greedy_nmm",
            merge_metric="ios",
            max_pixels=SIDE * SIDE,
            progress=False,
        )[0]
        peaks = [r["process"]["peak_rss"] for r in model.resources()]
    assert prediction.error is None
    assert (prediction.height, prediction.width) == (SIDE, SIDE)
    assert len(prediction) == len(boxes)
    np.testing.assert_allclose(sort_xyxy(prediction.boxes), boxes_array(boxes), atol=1.0)
    assert sorted(prediction.classes) == sorted(name for name, *_ in boxes)
    # the worker never held the image: it grew by less than half the decoded size
    grown = max(peak - rss for peak, rss in zip(peaks, before))
    assert grown < decoded_bytes / 2, f"worker grew by {grown / 2**20:.0f} MiB"
