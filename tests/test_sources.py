"""Tests for engine.sources: resolving inputs into items and decoding them."""

from __future__ import annotations

import io
import json
import struct
import threading
import time
import warnings
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageFile

from connectors.supervisely.project import is_supervisely_project, read_project
from engine.sources import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageLoadError,
    Item,
    decode_item,
    load_image,
    resolve_input,
)
from engine.sources.decode import decode_image_bytes, fetch_url


# --------------------------------------------------------------------------- helpers
def solid(color: tuple[int, int, int], size: tuple[int, int] = (8, 6)) -> Image.Image:
    return Image.new("RGB", size, color)


def save(image: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_bytes(array: np.ndarray, color_type: int, bit_depth: int) -> bytes:
    """A minimal PNG encoder (zlib + struct), for 16-bit data Pillow cannot write."""
    height, width = array.shape[:2]
    dtype = ">u2" if bit_depth == 16 else "u1"
    raw = b"".join(b"\x00" + array[y].astype(dtype).tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return _png(header, zlib.compress(raw))


def _png(header: bytes, idat: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def huge_png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge 8-bit grayscale image."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return _png(header, zlib.compress(b"\x00" * 1024))


def names(items: list[Item]) -> list[str]:
    return [item.name for item in items]


# --------------------------------------------------------------------------- items
def test_item_row_round_trip_through_arrow():
    items = [
        Item(index=0, source="file", name="a.jpg", path="/x/a.jpg"),
        Item(index=1, source="array", name="array_1", pixels=bytes(range(12)), shape=(2, 2, 3)),
        Item(index=2, source="url", name="u", url="http://h/u", error="boom"),
        Item(index=3, source="supervisely", name="b.png", path="/p/b.png", dataset="d/e"),
    ]
    rows = [item.to_row() for item in items]
    assert all(list(row) == list(rows[0]) for row in rows)
    assert rows[1]["shape"] == [2, 2, 3]
    table = pa.Table.from_pylist(rows)
    assert [Item.from_row(row) for row in table.to_pylist()] == items
    # numpy values, as Ray Data may give them back
    row = dict(rows[1], index=np.int64(1), shape=np.array([2, 2, 3]), path=float("nan"))
    back = Item.from_row(row)
    assert back == items[1]
    assert back.image_array().tolist() == np.arange(12).reshape(2, 2, 3).tolist()


def test_image_array_requires_pixels():
    with pytest.raises(ValueError, match="x.jpg"):
        Item(index=0, source="file", name="x.jpg").image_array()


# --------------------------------------------------------------------------- resolve
def test_single_file_str_and_path(tmp_path):
    path = save(solid((1, 2, 3)), tmp_path / "a.png")
    for value in (str(path), path):
        (item,) = resolve_input(value).items
        assert (item.index, item.source, item.name, item.path) == (0, "file", "a.png", str(path))
        assert item.error is None


def test_relative_path_is_made_absolute(tmp_path, monkeypatch):
    save(solid((1, 2, 3)), tmp_path / "a.png")
    monkeypatch.chdir(tmp_path)
    (item,) = resolve_input("a.png").items
    assert item.path == str(tmp_path / "a.png")


def test_pathlike_and_odd_paths(tmp_path):
    import os

    class Loc(os.PathLike):
        def __fspath__(self) -> str:
            return str(tmp_path / "a.png")

    save(solid((1, 2, 3)), tmp_path / "a.png")
    weird = tmp_path / "x:" / "b.png"  # "://" after a folder is not a URL
    save(solid((1, 2, 3)), weird)
    resolved = resolve_input([Loc(), f"{tmp_path}/x://b.png"])
    assert [(i.source, i.name, i.error) for i in resolved.items] == [
        ("file", "a.png", None),
        ("file", "b.png", None),
    ]


def test_url_items():
    resolved = resolve_input(
        ["http://h.example/dir/cat%20one.jpg?x=1", "https://h.example", "HTTPS://h.example/a/"]
    )
    assert [(i.source, i.name, i.error) for i in resolved.items] == [
        ("url", "cat one.jpg", None),
        ("url", "h.example", None),
        ("url", "a", None),
    ]
    assert resolved.items[0].url == "http://h.example/dir/cat%20one.jpg?x=1"


@pytest.mark.parametrize("url", ["ftp://h/x.jpg", "file:///tmp/x.jpg", "s3://b/k.png"])
def test_unsupported_url_scheme_is_an_error_item(url):
    (item,) = resolve_input(url).items
    assert item.error is not None
    assert url in item.error and "only http and https" in item.error
    with pytest.raises(ImageLoadError, match="only http and https"):
        decode_item(item)
    with pytest.raises(ImageLoadError, match="only http and https"):
        load_image(url)


def test_missing_path_is_an_error_item_and_keeps_others(tmp_path):
    good = save(solid((1, 2, 3)), tmp_path / "good.jpg")
    missing = str(tmp_path / "nope" / "missing.jpg")
    resolved = resolve_input([missing, good, "not a path or url"])
    assert names(resolved.items) == ["missing.jpg", "good.jpg", "not a path or url"]
    assert [i.index for i in resolved.items] == [0, 1, 2]
    assert resolved.items[0].error == f"file not found: {missing}"
    assert resolved.items[1].error is None
    assert resolved.items[2].error == "file not found: not a path or url"
    assert resolved.errors == [resolved.items[0], resolved.items[2]]
    with pytest.raises(ImageLoadError, match="file not found"):
        decode_item(resolved.items[0])


def test_directory_sorted_and_recursive(tmp_path):
    save(solid((1, 1, 1)), tmp_path / "b.png")
    save(solid((2, 2, 2)), tmp_path / "a.JPG")
    save(solid((3, 3, 3)), tmp_path / "sub" / "c.bmp")
    save(solid((4, 4, 4)), tmp_path / "sub" / "deeper" / "d.tif")
    save(solid((5, 5, 5)), tmp_path / ".hidden.png")
    save(solid((6, 6, 6)), tmp_path / ".cache" / "e.png")
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "sub" / "labels.csv").write_text("x")

    flat = resolve_input(tmp_path)
    assert names(flat.items) == ["a.JPG", "b.png"]
    assert flat.skipped == [str(tmp_path / "notes.txt")]
    assert all(i.source == "file" and i.error is None for i in flat.items)

    deep = resolve_input(str(tmp_path), recursive=True)
    assert names(deep.items) == ["a.JPG", "b.png", "c.bmp", "d.tif"]
    assert [i.path for i in deep.items][2:] == [
        str(tmp_path / "sub" / "c.bmp"),
        str(tmp_path / "sub" / "deeper" / "d.tif"),
    ]
    assert deep.skipped == [str(tmp_path / "notes.txt"), str(tmp_path / "sub" / "labels.csv")]


def test_image_extensions():
    assert {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"} <= set(
        IMAGE_EXTENSIONS
    )


def test_empty_directory_messages(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (item,) = resolve_input(empty).items
    assert item.error == f"{empty}: directory contains no images or videos"
    assert item.name == "empty"

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("a")
    (docs / "b.pdf").write_text("b")
    resolved = resolve_input(docs)
    (item,) = resolved.items
    assert (
        item.error == f"{docs}: directory contains no images or videos (2 non-image files skipped)"
    )
    assert len(resolved.skipped) == 2

    nested = tmp_path / "nested"
    save(solid((1, 2, 3)), nested / "inner" / "x.png")
    (item,) = resolve_input(nested).items
    assert "directory contains no images" in item.error and "recursive=True" in item.error
    assert resolve_input(nested, recursive=True).items[0].name == "x.png"


def test_explicit_non_image_file_is_attempted(tmp_path):
    text = tmp_path / "readme.txt"
    text.write_text("not an image")
    disguised = tmp_path / "photo.dat"
    disguised.write_bytes(encode(solid((9, 8, 7)), "PNG"))
    resolved = resolve_input([text, disguised])
    assert [i.error for i in resolved.items] == [None, None]
    with pytest.raises(ImageLoadError, match=r"readme\.txt: cannot decode image"):
        decode_item(resolved.items[0])
    assert decode_item(resolved.items[1])[0, 0].tolist() == [9, 8, 7]


@pytest.mark.parametrize("value", [3, {"a": 1}, b"bytes", None, 2.5])
def test_unsupported_type_raises_type_error(value):
    with pytest.raises(TypeError, match=type(value).__name__) as info:
        resolve_input(value)
    assert "input" in str(info.value)
    with pytest.raises(TypeError, match=r"input\[1\]"):
        resolve_input(["a.jpg", value])


def test_nested_list_raises_type_error():
    with pytest.raises(TypeError, match=r"input\[0\].*nested"):
        resolve_input([["a.jpg"]])


def test_mixed_list_in_order(tmp_path):
    folder = tmp_path / "folder"
    save(solid((1, 1, 1)), folder / "z.png")
    save(solid((2, 2, 2)), folder / "y.png")
    one = save(solid((3, 3, 3)), tmp_path / "one.jpg")
    array = np.full((4, 5, 3), 7, np.uint8)
    pil = Image.new("L", (3, 2), 200)
    resolved = resolve_input(
        [one, array, str(folder), "https://h.example/p.png", pil, str(tmp_path / "no.png")]
    )
    assert [(i.index, i.source, i.name) for i in resolved.items] == [
        (0, "file", "one.jpg"),
        (1, "array", "array_1"),
        (2, "file", "y.png"),
        (3, "file", "z.png"),
        (4, "url", "p.png"),
        (5, "pil", "pil_5"),
        (6, "file", "no.png"),
    ]
    assert sorted(resolved.in_memory) == [1, 5]
    assert resolved.in_memory[1].shape == (4, 5, 3)
    assert resolved.in_memory[5].tolist() == np.full((2, 3, 3), 200).tolist()
    assert resolved.items[6].error is not None
    assert decode_item(resolved.items[1]).tolist() == array.tolist()


# --------------------------------------------------------------------------- supervisely
def make_project(root: Path) -> Path:
    root.mkdir()
    meta = {"classes": [{"title": "car", "shape": "rectangle", "color": "#FF0000"}], "tags": []}
    (root / "meta.json").write_text(json.dumps(meta))
    save(solid((1, 1, 1)), root / "ds1" / "img" / "b.png")
    save(solid((2, 2, 2)), root / "ds1" / "img" / "a.jpg")
    (root / "ds1" / "ann").mkdir()
    (root / "ds1" / "ann" / "a.jpg.json").write_text("{}")
    save(solid((3, 3, 3)), root / "ds1" / "datasets" / "part" / "img" / "c.png")
    save(solid((4, 4, 4)), root / "ds2" / "img" / "d.png")
    (root / "ds2" / "img" / "video.mp4").write_bytes(b"\x00")
    return root


def test_supervisely_project(tmp_path):
    root = make_project(tmp_path / "proj")
    assert is_supervisely_project(root)
    project = read_project(root)
    assert project.meta["classes"][0]["title"] == "car"
    assert [name for name, _ in project.datasets] == ["ds1", "ds1/part", "ds2"]
    ds1 = project.datasets[0][1]
    assert ds1 == [
        (root / "ds1" / "img" / "a.jpg", root / "ds1" / "ann" / "a.jpg.json"),
        (root / "ds1" / "img" / "b.png", None),
    ]

    resolved = resolve_input(root)
    assert [(i.source, i.dataset, i.name) for i in resolved.items] == [
        ("supervisely", "ds1", "a.jpg"),
        ("supervisely", "ds1", "b.png"),
        ("supervisely", "ds1/part", "c.png"),
        ("supervisely", "ds2", "d.png"),
    ]
    assert resolved.skipped == [str(root / "ds2" / "img" / "video.mp4")]
    assert decode_item(resolved.items[2])[0, 0].tolist() == [3, 3, 3]


def test_supervisely_datasets_nested_beside_img_are_read(tmp_path):
    """``<dataset>/<nested>/img`` (issue 17: such a project was ignored, ``skipped: 0``)."""
    root = tmp_path / "proj"
    root.mkdir()
    meta = {"classes": [{"title": "car", "shape": "rectangle", "color": "#FF0000"}], "tags": []}
    (root / "meta.json").write_text(json.dumps(meta))
    save(solid((1, 1, 1)), root / "city" / "day" / "img" / "a.png")
    (root / "city" / "day" / "ann").mkdir()
    (root / "city" / "day" / "ann" / "a.png.json").write_text("{}")
    save(solid((2, 2, 2)), root / "city" / "night" / "rain" / "img" / "b.png")
    save(solid((3, 3, 3)), root / "city" / "img" / "c.png")  # the parent's own image
    save(solid((4, 4, 4)), root / "city" / "img" / "deep" / "img" / "x.png")  # an img/ file
    assert is_supervisely_project(root)
    project = read_project(root)
    assert [name for name, _ in project.datasets] == ["city", "city/day", "city/night/rain"]
    assert project.datasets[1][1] == [
        (root / "city" / "day" / "img" / "a.png", root / "city" / "day" / "ann" / "a.png.json")
    ]
    resolved = resolve_input(root)
    assert [(i.dataset, i.name) for i in resolved.items] == [
        ("city", "c.png"),
        ("city/day", "a.png"),
        ("city/night/rain", "b.png"),
    ]
    assert [decode_item(i)[0, 0].tolist() for i in resolved.items] == [[3] * 3, [1] * 3, [2] * 3]


def test_supervisely_malformed_meta(tmp_path):
    root = make_project(tmp_path / "proj")
    (root / "meta.json").write_text("{not json")
    assert not is_supervisely_project(root)
    with pytest.raises(ValueError, match="meta.json"):
        read_project(root)
    (item,) = resolve_input(root).items
    assert "meta.json" in item.error

    (root / "meta.json").write_text('{"tags": []}')
    with pytest.raises(ValueError, match="classes"):
        read_project(root)


def test_plain_directory_with_meta_json_is_not_a_project(tmp_path):
    (tmp_path / "meta.json").write_text('{"classes": []}')
    save(solid((1, 1, 1)), tmp_path / "a.png")
    assert not is_supervisely_project(tmp_path)
    resolved = resolve_input(tmp_path)
    assert [(i.source, i.name) for i in resolved.items] == [("file", "a.png")]


# --------------------------------------------------------------------------- in-memory
def _resolve_one(value):
    resolved = resolve_input(value)
    (item,) = resolved.items
    return item, resolved.in_memory.get(item.index)


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.array([[0, 128]], np.uint8), [[[0, 0, 0], [128, 128, 128]]]),
        (np.array([[[5], [6]]], np.uint8), [[[5, 5, 5], [6, 6, 6]]]),
        (np.array([[[1, 2, 3, 0], [4, 5, 6, 255]]], np.uint8), [[[1, 2, 3], [4, 5, 6]]]),
        (np.array([[0, 0x1234, 0xFFFF]], np.uint16), [[[0] * 3, [0x12] * 3, [255] * 3]]),
        (np.array([[True, False]]), [[[255] * 3, [0] * 3]]),
        (np.array([[[10, 20, 30]]], np.int64), [[[10, 20, 30]]]),
    ],
    ids=["gray", "hw1", "rgba", "uint16", "bool", "int64"],
)
def test_array_conversions(array, expected):
    item, rgb = _resolve_one(array)
    assert item.error is None and item.source == "array" and item.name == "array_0"
    assert rgb.dtype == np.uint8 and rgb.tolist() == expected
    assert item.shape == rgb.shape
    assert decode_item(item).tolist() == expected


def test_array_rgb_is_kept_as_is():
    array = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    item, rgb = _resolve_one(array)
    assert np.array_equal(rgb, array) and item.pixels == array.tobytes()
    decoded = decode_item(item)
    assert decoded.flags.writeable and np.array_equal(decoded, array)


@pytest.mark.parametrize(
    ("array", "pattern"),
    [
        (np.zeros((4, 4, 3), np.float32), r"array_1 \(input\[1\]\): float arrays"),
        (np.zeros((4, 4, 5), np.uint8), r"array_1 \(input\[1\]\).*shape \(4, 4, 5\)"),
        (np.zeros((3, 8, 9), np.uint8), r"shape \(3, 8, 9\).*channels-first"),
        (np.zeros((2, 4, 4, 3), np.uint8), r"shape \(2, 4, 4, 3\)"),
        (np.zeros((0, 4, 3), np.uint8), r"empty image"),
        (np.array([[300]], np.int32), r"outside 0\.\.255"),
        (np.zeros((2, 2), np.complex64), r"dtype complex64"),
    ],
)
def test_bad_arrays_are_error_items(array, pattern):
    good = np.zeros((2, 2, 3), np.uint8)
    resolved = resolve_input([good, array, good])
    assert [i.error is None for i in resolved.items] == [True, False, True]
    bad = resolved.items[1]
    assert bad.source == "array" and bad.pixels is None
    assert sorted(resolved.in_memory) == [0, 2]
    with pytest.raises(ImageLoadError, match=pattern):
        decode_item(bad)


def test_pil_inputs():
    rgba = Image.new("RGBA", (3, 2), (10, 20, 30, 0))
    item, rgb = _resolve_one(rgba)
    assert item.source == "pil" and item.name == "pil_0"
    assert rgb.shape == (2, 3, 3) and rgb[0, 0].tolist() == [10, 20, 30]
    item, rgb = _resolve_one(Image.new("F", (2, 2)))
    assert "mode F" in item.error and rgb is None


def test_in_memory_pixel_limit_applies_at_decode():
    item, _ = _resolve_one(np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ImageLoadError, match=r"array_0: image is 10x10 = 100 pixels"):
        decode_item(item, max_pixels=99)
    item, _ = _resolve_one(Image.new("RGB", (20, 10)))
    assert item.error is None
    with pytest.raises(ImageLoadError, match=r"pil_0: image is 20x10 = 200 pixels"):
        decode_item(item, max_pixels=199)


# --------------------------------------------------------------------------- decode
def test_exif_orientation(tmp_path):
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, :] = (0, 0, 255)
    image[:6, :6] = (255, 0, 0)  # stored top-left corner is red
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    path = save(Image.fromarray(image), tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    decoded = load_image(path)
    assert decoded.shape == (40, 20, 3)
    assert decoded[:4, -4:].mean(axis=(0, 1)).round().tolist() == pytest.approx([255, 0, 0], abs=25)
    assert decoded[-4:, :4].mean(axis=(0, 1)).tolist() == pytest.approx([0, 0, 255], abs=25)


def test_sixteen_bit_gray_png():
    gray = np.array([[0, 0x00FF, 0x0100, 0x8000, 0xFFFF]], np.uint16)
    decoded = decode_image_bytes(png_bytes(gray, color_type=0, bit_depth=16), "g16.png")
    assert decoded[0, :, 0].tolist() == [0, 0, 1, 128, 255]
    assert (decoded[..., 0] == decoded[..., 2]).all()
    # Pillow's own I;16 writer too
    pil = Image.fromarray(gray)
    assert decode_image_bytes(encode(pil, "PNG"), "x")[0, :, 1].tolist() == [0, 0, 1, 128, 255]


def test_sixteen_bit_rgb_png():
    rgb = np.array([[[0xFFFF, 0, 0x1234], [0x8000, 0xFF00, 0x00FF]]], np.uint16)
    decoded = decode_image_bytes(png_bytes(rgb, color_type=2, bit_depth=16), "rgb16.png")
    assert decoded.dtype == np.uint8
    assert decoded.tolist() == [[[255, 0, 0x12], [0x80, 0xFF, 0]]]
    rgba = np.array([[[0xFFFF, 0x4000, 0, 0]]], np.uint16)
    decoded = decode_image_bytes(png_bytes(rgba, color_type=6, bit_depth=16), "rgba16.png")
    assert decoded.tolist() == [[[255, 0x40, 0]]]


def test_int32_gray_scaled_by_range():
    tiff = encode(Image.fromarray(np.array([[-100, 0, 100]], np.int32)), "TIFF")
    assert decode_image_bytes(tiff, "i32.tif")[0, :, 0].tolist() == [0, 127, 255]


def test_float_image_is_refused():
    tiff = encode(Image.fromarray(np.array([[0.5]], np.float32)), "TIFF")
    with pytest.raises(ImageLoadError, match=r"f\.tif: 32-bit float images"):
        decode_image_bytes(tiff, "f.tif")


def test_cmyk_jpeg():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # red
    decoded = decode_image_bytes(encode(cmyk, "JPEG", quality=95), "cmyk.jpg")
    assert decoded.shape == (16, 16, 3)
    assert decoded.mean(axis=(0, 1)).tolist() == pytest.approx([255, 0, 0], abs=20)


def test_palette_png_and_transparency():
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9)
    image = Image.new("P", (3, 1))
    image.putpalette(palette)
    for x in range(3):
        image.putpixel((x, 0), x)
    decoded = decode_image_bytes(encode(image, "PNG"), "p.png")
    assert decoded.tolist() == [[[255, 0, 0], [0, 255, 0], [0, 0, 255]]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        decoded = decode_image_bytes(encode(image, "PNG", transparency=1), "pt.png")
        # transparent pixels keep their palette colour (alpha dropped)
        assert decoded.tolist() == [[[255, 0, 0], [0, 255, 0], [0, 0, 255]]]
        alphas = bytes([255, 0, 128])
        decoded = decode_image_bytes(encode(image, "PNG", transparency=alphas), "pa.png")
        assert decoded.tolist() == [[[255, 0, 0], [0, 255, 0], [0, 0, 255]]]


@pytest.mark.parametrize("mode", ["1", "L", "LA", "RGBA", "YCbCr", "CMYK", "I;16", "LAB"])
def test_other_file_modes_become_rgb(mode):
    decoded = decode_image_bytes(encode(Image.new(mode, (4, 3)), "TIFF"), f"{mode}.tif")
    assert decoded.shape == (3, 4, 3) and decoded.dtype == np.uint8


@pytest.mark.parametrize("mode", ["1", "La", "PA", "RGBa", "RGBX", "HSV", "LAB", "I", "I;16B"])
def test_other_pil_modes_become_rgb(mode):
    item, rgb = _resolve_one(Image.new(mode, (4, 3)))
    assert item.error is None
    assert rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8


def test_multi_frame_gif_gives_first_frame():
    frames = [Image.new("P", (4, 4), i) for i in range(3)]
    palette = [200, 10, 10, 10, 200, 10, 10, 10, 200] + [0] * (256 * 3 - 9)
    for frame in frames:
        frame.putpalette(palette)
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode_image_bytes(data, "anim.gif")[0, 0].tolist() == [200, 10, 10]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_raises(tmp_path, fmt):
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match=rf"^{path}: cannot decode image: .*truncated"):
        load_image(path)
    with pytest.raises(ImageLoadError, match=r"^cut: cannot decode image"):
        decode_image_bytes(data[: len(data) // 2], "cut")
    # even when someone in the process asked Pillow to accept truncated files
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(ImageLoadError, match="truncated"):
            load_image(path)
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def test_garbage_bytes(tmp_path):
    with pytest.raises(ImageLoadError, match=r"^junk\.png: cannot decode image: not a recog"):
        decode_image_bytes(b"this is not an image at all", "junk.png")
    with pytest.raises(ImageLoadError, match="empty.jpg: cannot decode image"):
        decode_image_bytes(b"", "empty.jpg")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageLoadError, match=r"file not found: .*gone\.jpg"):
        load_image(tmp_path / "gone.jpg")
    with pytest.raises(ImageLoadError, match="is a directory"):
        load_image(tmp_path)
    item = Item(index=0, source="file", name="gone.jpg", path=str(tmp_path / "gone.jpg"))
    with pytest.raises(ImageLoadError, match="file not found"):
        decode_item(item)


def test_pixel_limit_checked_from_header():
    data = huge_png_header(30000, 30000)
    assert len(data) < 2000
    start = time.perf_counter()
    with pytest.raises(
        ImageLoadError,
        match=rf"^big\.png: image is 30000x30000 = 900000000 pixels, above the limit of "
        rf"{DEFAULT_MAX_PIXELS} \(max_pixels\)",
    ):
        decode_image_bytes(data, "big.png")
    assert time.perf_counter() - start < 1.0


def test_pixel_limit_is_ours_not_pillows(monkeypatch):
    # between Pillow's warning and error thresholds: our error, no Pillow warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageLoadError, match="12000x12000 = 144000000 pixels"):
            decode_image_bytes(huge_png_header(12000, 12000), "mid.png", max_pixels=1000)
    # a caller-set Pillow limit neither applies nor is lost
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    image = solid((1, 2, 3), size=(50, 50))
    assert decode_image_bytes(encode(image, "PNG"), "ok.png").shape == (50, 50, 3)
    assert Image.MAX_IMAGE_PIXELS == 100
    with pytest.raises(ImageLoadError, match="50x50 = 2500 pixels, above the limit of 2499"):
        decode_image_bytes(encode(image, "PNG"), "ok.png", max_pixels=2499)


# --------------------------------------------------------------------------- URLs
class _Handler(BaseHTTPRequestHandler):
    png = encode(solid((12, 34, 56)), "PNG")
    release = threading.Event()

    def do_GET(self):  # noqa: N802
        if self.path == "/ok.png":
            self._send(200, self.png)
        elif self.path == "/slow.jpg":
            self.release.wait(10)
            self._send(200, self.png)
        elif self.path == "/trickle.png":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(100):
                if self.release.wait(0.05):
                    return
                self.wfile.write(b"x")
                self.wfile.flush()
        else:
            self._send(404, b"nope")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Handler.release.clear()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    _Handler.release.set()
    httpd.shutdown()
    httpd.server_close()


def test_url_ok(server):
    (item,) = resolve_input(f"{server}/ok.png").items
    assert item.name == "ok.png"
    decoded = decode_item(item)
    assert decoded.shape == (6, 8, 3) and decoded[0, 0].tolist() == [12, 34, 56]
    assert load_image(f"{server}/ok.png")[0, 0].tolist() == [12, 34, 56]


def test_url_404(server):
    url = f"{server}/missing.jpg"
    with pytest.raises(ImageLoadError) as info:
        decode_item(resolve_input(url).items[0])
    assert str(info.value) == f"{url}: HTTP 404 Not Found"


def test_url_timeout(server):
    url = f"{server}/slow.jpg"
    start = time.perf_counter()
    with pytest.raises(ImageLoadError) as info:
        decode_item(resolve_input(url).items[0], url_timeout=0.3)
    assert str(info.value) == f"{url}: timed out after 0.3 s"
    assert time.perf_counter() - start < 3


def test_url_slow_body_hits_overall_deadline(server):
    url = f"{server}/trickle.png"
    start = time.perf_counter()
    with pytest.raises(ImageLoadError, match=r"timed out after 0\.4 s"):
        fetch_url(url, timeout=0.4)
    assert time.perf_counter() - start < 3


def test_url_size_cap(server):
    with pytest.raises(ImageLoadError, match="above 10"):
        fetch_url(f"{server}/ok.png", timeout=5, max_bytes=10)


def test_url_connection_refused():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.jpg"
    with pytest.raises(ImageLoadError, match=rf"^{url}: cannot connect: .*refused"):
        load_image(url, url_timeout=2)
