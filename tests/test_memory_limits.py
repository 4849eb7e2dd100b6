"""An image too large to decode in memory fails alone, at once (issue 17).

An image decoded whole past the memory (a bomb with ``max_pixels`` raised) had Ray's
memory monitor kill its decode task and retry it forever. Now a whole decode is checked
against the memory free before any pixel is decoded, so it fails alone, at once, and the
others go on; and the Rays Tessera starts retry a task killed for memory 3 times, not
forever (`engine.runtime.OOM_RETRIES`).
"""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from engine.sources.decode import ImageLoadError, check_memory, decode_image_file

BOMB_SIDE = 200_000  # 4e10 pixels: about 220 GiB to decode whole


def png_header_only(path, width: int, height: int) -> None:
    """A PNG whose header promises width x height RGB pixels, with no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def test_a_decode_that_cannot_fit_is_refused_naming_the_memory():
    with pytest.raises(ImageLoadError, match=r"a\.png: decoding its 100000x50000 pixels whole "):
        check_memory("a.png", 100_000, 50_000, available=2**30)
    check_memory("b.png", 1_000, 1_000, available=2**30)  # 6 MB fits


def test_a_bomb_is_refused_from_its_header_before_any_pixel_is_decoded(tmp_path):
    bomb = tmp_path / "bomb.png"
    png_header_only(bomb, BOMB_SIDE, BOMB_SIDE)
    with pytest.raises(ImageLoadError, match=r"bomb\.png: decoding its .* GiB of memory"):
        decode_image_file(bomb, max_pixels=10**12)


def test_a_bomb_among_good_images_fails_alone_through_predict(reference_model, tmp_path):
    bomb = tmp_path / "bomb.png"
    png_header_only(bomb, BOMB_SIDE, BOMB_SIDE)
    good = tmp_path / "good.png"
    Image.fromarray(np.full((40, 60, 3), 255, np.uint8)).save(good)
    predictions = reference_model.predict(
        [str(good), str(bomb), str(good)], max_pixels=10**12, progress=False
    )
    assert [p.error is None for p in predictions] == [True, False, True]
    assert "bomb.png: decoding its 200000x200000 pixels whole needs about" in predictions[1].error
    assert "sliding_window=True" in predictions[1].error
    assert [(p.height, p.width) for p in (predictions[0], predictions[2])] == [(40, 60)] * 2


def test_the_rays_tessera_starts_bound_the_retries_of_a_task_killed_for_memory(monkeypatch):
    import ray

    from engine import runtime

    monkeypatch.delenv(runtime.OOM_RETRIES_VARIABLE, raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # the suite's Ray is up
    runtime.ensure_ray()
    assert os.environ[runtime.OOM_RETRIES_VARIABLE] == str(runtime.OOM_RETRIES) == "3"
