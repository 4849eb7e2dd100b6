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
