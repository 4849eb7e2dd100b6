"""Instance masks as COCO run-length encodings (RLE).

Masks travel through Tessera as RLE dicts ``{"size": [h, w], "counts": bytes}`` produced by
pycocotools, and are decoded to boolean arrays only when a caller asks for them.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as coco_mask

RLE = dict


def encode_masks(masks: np.ndarray) -> list[RLE]:
    """Encode a stack of binary masks as RLE.

    Args:
        masks: (N, H, W) array; nonzero pixels belong to the mask.

    Returns:
        N RLE dicts with ``size`` [H, W] and ``counts`` as bytes.

    Example:
        >>> rles = encode_masks(np.zeros((2, 4, 5), bool))
        >>> rles[0]["size"]
        [4, 5]
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape (N, H, W), got {masks.shape}")
    if len(masks) == 0:
        return []
    fortran = np.asfortranarray(masks.astype(np.uint8).transpose(1, 2, 0))
    rles = coco_mask.encode(fortran)
    return [{"size": [int(s) for s in r["size"]], "counts": r["counts"]} for r in rles]


def decode_masks(rles: list[RLE], height: int, width: int) -> np.ndarray:
    """Decode RLE masks into an (N, H, W) boolean array.

    Args:
        rles: RLE dicts, each of size [height, width].
        height: Mask height, used for the empty result.
        width: Mask width, used for the empty result.

    Returns:
        (N, height, width) bool array.
    """
    if not rles:
        return np.zeros((0, height, width), dtype=bool)
    decoded = coco_mask.decode([_as_pycoco(r) for r in rles])
    return decoded.transpose(2, 0, 1).astype(bool)


def mask_areas(rles: list[RLE]) -> np.ndarray:
    """Return the pixel count of each RLE mask."""
    if not rles:
        return np.zeros((0,), dtype=np.int64)
    return coco_mask.area([_as_pycoco(r) for r in rles]).astype(np.int64)


def resize_masks(rles: list[RLE], height: int, width: int) -> list[RLE]:
    """Resize RLE masks to (height, width) with nearest-neighbour sampling."""
    if not rles:
        return []
    src_h, src_w = rles[0]["size"]
    if (src_h, src_w) == (height, width):
        return list(rles)
    masks = decode_masks(rles, src_h, src_w)
    rows = np.minimum(((np.arange(height) + 0.5) * src_h / height).astype(np.int64), src_h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * src_w / width).astype(np.int64), src_w - 1)
    return encode_masks(masks[:, rows][:, :, cols])


def shift_mask(rle: RLE, dx: int, dy: int, height: int, width: int) -> RLE:
    """Place a mask into a (height, width) image at offset (dx, dy), as RLE.

    Only a strip as wide as the mask is decoded (the run lengths of the columns left and
    right of it are added arithmetically), so a tile's mask moves into a huge image without
    a full-size array.

    Args:
        rle: The mask, RLE of its own (tile) size.
        dx: Column of the image where the mask's column 0 lands (may be negative).
        dy: Row of the image where the mask's row 0 lands (may be negative).
        height: Image height.
        width: Image width.

    Returns:
        The RLE of the mask inside the image; parts outside the image are cut off.

    Example:
        >>> small = encode_masks(np.ones((1, 2, 2), bool))[0]
        >>> decode_masks([shift_mask(small, 1, 1, 4, 4)], 4, 4)[0].sum()
        4
    """
    h, w = (int(s) for s in rle["size"])
    x0, y0 = max(dx, 0), max(dy, 0)
    x1, y1 = min(dx + w, width), min(dy + h, height)
    if x1 <= x0 or y1 <= y0:
        return _from_runs([height * width], height, width)
    strip = np.zeros((height, x1 - x0), dtype=bool)
    strip[y0:y1] = decode_masks([rle], h, w)[0][y0 - dy : y1 - dy, x0 - dx : x1 - dx]
    flat = strip.flatten(order="F")  # RLE counts run down the columns
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]]))
    if flat[0]:
        runs = np.concatenate([[0], runs])  # counts always open with a run of zeros
    runs[0] += x0 * height
    tail = (width - x1) * height
    if len(runs) % 2:  # the last run is zeros: extend it
        runs[-1] += tail
    elif tail:
        runs = np.concatenate([runs, [tail]])
    return _from_runs(runs.tolist(), height, width)


def _from_runs(runs: list[int], height: int, width: int) -> RLE:
    compressed = coco_mask.frPyObjects({"size": [height, width], "counts": runs}, height, width)
    return {"size": [height, width], "counts": compressed["counts"]}


def rle_to_json(rle: RLE) -> dict:
    """Return a JSON-serialisable copy of an RLE (counts as an ASCII string)."""
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": [int(s) for s in rle["size"]], "counts": counts}


def _as_pycoco(rle: RLE) -> dict:
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": [int(s) for s in rle["size"]], "counts": counts}
