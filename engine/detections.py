"""`Detections`: the one result shape that travels between Tessera's modules.

Boxes are xyxy float32 in the pixels of the image the detections refer to; masks are COCO
RLE (see `engine.masks`) decoded only on request; keypoints are (N, K, 3) x, y, score.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from engine import masks as mask_utils

#: Arrow fields that hold one image's detections inside a prediction row.
DETECTIONS_ARROW_FIELDS: list[pa.Field] = [
    pa.field("xyxy", pa.list_(pa.float32())),
    pa.field("scores", pa.list_(pa.float32())),
    pa.field("class_idxs", pa.list_(pa.int64())),
    pa.field("mask_counts", pa.list_(pa.binary())),
    pa.field("mask_size", pa.list_(pa.int64())),
    pa.field("keypoints", pa.list_(pa.float32())),
    pa.field("num_keypoints", pa.int64()),
    pa.field("track_ids", pa.list_(pa.int64())),
]


def _validate_xyxy(xyxy: np.ndarray) -> None:
    if xyxy.ndim != 2 or xyxy.shape[1] != 4:
        raise ValueError(f"xyxy must have shape (N, 4), got {xyxy.shape}")


def _validate_per_box(name: str, values: np.ndarray | None, n: int) -> None:
    if values is not None and values.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {values.shape}")


@dataclass
class Detections:
    """Objects found in one image.

    Args:
        xyxy: (N, 4) float32 boxes x1, y1, x2, y2 in pixels (x2, y2 exclusive).
        scores: (N,) float32 confidences.
        class_idxs: (N,) int64 indices into the model's class list.
        masks_rle: N COCO RLE dicts of the image's size, or None for models without masks.
        keypoints: (N, K, 3) float32 x, y, score, or None.
        track_ids: (N,) int64 tracker ids, or None.

    Example:
        >>> d = Detections(xyxy=np.array([[0, 0, 10, 10]]), scores=np.array([0.9]),
        ...                class_idxs=np.array([2]))
        >>> len(d[d.scores > 0.5])
        1
    """

    xyxy: np.ndarray
    scores: np.ndarray
    class_idxs: np.ndarray
    masks_rle: list[dict] | None = None
    keypoints: np.ndarray | None = None
    track_ids: np.ndarray | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.xyxy = (
            np.asarray(self.xyxy, dtype=np.float32).reshape(-1, 4)
            if np.size(self.xyxy) == 0
            else np.asarray(self.xyxy, dtype=np.float32)
        )
        _validate_xyxy(self.xyxy)
        n = len(self.xyxy)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.class_idxs = np.asarray(self.class_idxs, dtype=np.int64).reshape(-1)
        _validate_per_box("scores", self.scores, n)
        _validate_per_box("class_idxs", self.class_idxs, n)
        if self.masks_rle is not None:
            self.masks_rle = list(self.masks_rle)
            if len(self.masks_rle) != n:
                raise ValueError(f"masks_rle must hold {n} masks, got {len(self.masks_rle)}")
        if self.keypoints is not None:
            self.keypoints = np.asarray(self.keypoints, dtype=np.float32)
            if (
                self.keypoints.ndim != 3
                or self.keypoints.shape[0] != n
                or (self.keypoints.shape[2] != 3)
            ):
                raise ValueError(
                    f"keypoints must have shape ({n}, K, 3), got {self.keypoints.shape}"
                )
        if self.track_ids is not None:
            self.track_ids = np.asarray(self.track_ids, dtype=np.int64).reshape(-1)
            _validate_per_box("track_ids", self.track_ids, n)

    # ------------------------------------------------------------------ container
    @classmethod
    def empty(cls, with_masks: bool = False, num_keypoints: int | None = None) -> Detections:
        """Return Detections holding no objects."""
        return cls(
            xyxy=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            class_idxs=np.zeros((0,), np.int64),
            masks_rle=[] if with_masks else None,
            keypoints=np.zeros((0, num_keypoints, 3), np.float32) if num_keypoints else None,
        )

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index: int | slice | Sequence[int] | np.ndarray) -> Detections:
        """Select objects by position, slice, index array or boolean mask."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        idx = np.arange(len(self))[index]
        return Detections(
            xyxy=self.xyxy[idx],
            scores=self.scores[idx],
            class_idxs=self.class_idxs[idx],
            masks_rle=None if self.masks_rle is None else [self.masks_rle[i] for i in idx],
            keypoints=None if self.keypoints is None else self.keypoints[idx],
            track_ids=None if self.track_ids is None else self.track_ids[idx],
            data=dict(self.data),
        )

    @classmethod
    def merge(cls, parts: Iterable[Detections]) -> Detections:
        """Concatenate several Detections of the same image into one."""
        parts = list(parts)
        if not parts:
            return cls.empty()
        has_masks = any(p.masks_rle is not None for p in parts)
        has_kp = any(p.keypoints is not None for p in parts)
        has_tracks = all(p.track_ids is not None for p in parts) and parts
        kp_shape = next((p.keypoints.shape[1] for p in parts if p.keypoints is not None), 0)
        return cls(
            xyxy=np.concatenate([p.xyxy for p in parts]),
            scores=np.concatenate([p.scores for p in parts]),
            class_idxs=np.concatenate([p.class_idxs for p in parts]),
            masks_rle=_merged_masks(parts) if has_masks else None,
            keypoints=np.concatenate(
                [
                    p.keypoints if p.keypoints is not None else np.zeros((len(p), kp_shape, 3))
                    for p in parts
                ]
            )
            if has_kp
            else None,
            track_ids=np.concatenate([p.track_ids for p in parts]) if has_tracks else None,
        )

    # ------------------------------------------------------------------ filters
    def with_min_score(self, conf: float) -> Detections:
        """Keep the objects whose score is at least ``conf``."""
        return self[self.scores >= conf]

    def with_classes(self, class_idxs: Iterable[int]) -> Detections:
        """Keep the objects whose class index is in ``class_idxs``."""
        return self[np.isin(self.class_idxs, np.fromiter(class_idxs, dtype=np.int64))]

    # ------------------------------------------------------------------ moves
    def scaled(self, scale_x: float, scale_y: float, height: int, width: int) -> Detections:
        """Return these detections scaled into an image of ``height`` x ``width`` pixels.

        Boxes and keypoints are multiplied by the scale factors; masks are resized to the
        new image size with nearest-neighbour sampling.
        """
        xyxy = self.xyxy * np.array([scale_x, scale_y, scale_x, scale_y], np.float32)
        xyxy = clip_boxes(xyxy, height, width)
        keypoints = None
        if self.keypoints is not None:
            keypoints = self.keypoints.copy()
            keypoints[..., 0] *= scale_x
            keypoints[..., 1] *= scale_y
        masks = None
        if self.masks_rle is not None:
            masks = mask_utils.resize_masks(self.masks_rle, height, width)
        return Detections(xyxy, self.scores, self.class_idxs, masks, keypoints, self.track_ids)

    def shifted(self, dx: float, dy: float, height: int, width: int) -> Detections:
        """Return these detections moved by (dx, dy) into an image of height x width.

        Masks are placed into the larger canvas at the same offset.
        """
        xyxy = self.xyxy + np.array([dx, dy, dx, dy], np.float32)
        keypoints = None
        if self.keypoints is not None:
            keypoints = self.keypoints.copy()
            keypoints[..., 0] += dx
            keypoints[..., 1] += dy
        masks = None
        if self.masks_rle is not None:
            masks = _shift_masks(self.masks_rle, int(dx), int(dy), height, width)
        return Detections(xyxy, self.scores, self.class_idxs, masks, keypoints, self.track_ids)

    # ------------------------------------------------------------------ views
    def masks(self, height: int, width: int) -> np.ndarray | None:
        """Decode the masks into an (N, height, width) bool array (None without masks)."""
        if self.masks_rle is None:
            return None
        return mask_utils.decode_masks(self.masks_rle, height, width)

    # ------------------------------------------------------------------ arrow
    def to_arrow(self) -> dict[str, Any]:
        """Return this object's columns of a prediction row (see DETECTIONS_ARROW_FIELDS)."""
        has_masks = self.masks_rle is not None
        size = self.masks_rle[0]["size"] if has_masks and self.masks_rle else None
        return {
            "xyxy": self.xyxy.reshape(-1).tolist(),
            "scores": self.scores.tolist(),
            "class_idxs": self.class_idxs.tolist(),
            "mask_counts": [_counts_bytes(m) for m in self.masks_rle] if has_masks else None,
            "mask_size": [int(s) for s in size] if size is not None else None,
            "keypoints": self.keypoints.reshape(-1).tolist()
            if self.keypoints is not None
            else None,
            "num_keypoints": int(self.keypoints.shape[1]) if self.keypoints is not None else None,
            "track_ids": self.track_ids.tolist() if self.track_ids is not None else None,
        }

    @classmethod
    def from_arrow(cls, row: dict[str, Any], height: int = 0, width: int = 0) -> Detections:
        """Rebuild Detections from the columns that `to_arrow` wrote.

        Args:
            row: A mapping holding the DETECTIONS_ARROW_FIELDS columns.
            height: Image height, used as the mask size when no mask size was stored.
            width: Image width, likewise.
        """
        xyxy = np.asarray(row["xyxy"] if row["xyxy"] is not None else [], np.float32)
        n = len(xyxy) // 4
        masks = None
        if row.get("mask_counts") is not None:
            size = row.get("mask_size") or [height, width]
            masks = [{"size": list(size), "counts": bytes(c)} for c in row["mask_counts"]]
        keypoints = None
        if row.get("keypoints") is not None and row.get("num_keypoints") is not None:
            k = int(row["num_keypoints"])
            keypoints = np.asarray(row["keypoints"], np.float32).reshape(n, k, 3)
        track_ids = row.get("track_ids")
        return cls(
            xyxy=xyxy.reshape(n, 4),
            scores=np.asarray(row["scores"] if row["scores"] is not None else [], np.float32),
            class_idxs=np.asarray(
                row["class_idxs"] if row["class_idxs"] is not None else [], np.int64
            ),
            masks_rle=masks,
            keypoints=keypoints,
            track_ids=None if track_ids is None else np.asarray(track_ids, np.int64),
        )


def clip_boxes(xyxy: np.ndarray, height: int, width: int) -> np.ndarray:
    """Clip xyxy boxes to an image of ``height`` x ``width`` pixels."""
    out = xyxy.copy()
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, width)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, height)
    return out


def _merged_masks(parts: list[Detections]) -> list[dict] | None:
    """Concatenate masks; a part without masks contributes empty masks of the same size."""
    size = next((p.masks_rle[0]["size"] for p in parts if p.masks_rle), None)
    if size is None:  # no mask anywhere: only mask-less or empty parts
        return None if any(p.masks_rle is None and len(p) for p in parts) else []
    out: list[dict] = []
    for part in parts:
        if part.masks_rle is not None:
            out.extend(part.masks_rle)
        elif len(part):
            out.extend(mask_utils.encode_masks(np.zeros((len(part), *size), bool)))
    return out


def _counts_bytes(rle: dict) -> bytes:
    counts = rle["counts"]
    return counts.encode("ascii") if isinstance(counts, str) else bytes(counts)


def _shift_masks(rles: list[dict], dx: int, dy: int, height: int, width: int) -> list[dict]:
    return [mask_utils.shift_mask(rle, dx, dy, height, width) for rle in rles]
