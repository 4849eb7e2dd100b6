"""MTCNN face detection (facenet-pytorch), with the five facial landmarks as keypoints."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch

from engine.detections import Detections
from engine.models.base import ModelAdapter

#: The five MTCNN landmarks, in the order facenet-pytorch returns them.
LANDMARK_NAMES = ["left_eye", "right_eye", "nose", "mouth_left", "mouth_right"]


class MTCNNFaceDetector(ModelAdapter):
    """Find faces with facenet-pytorch's MTCNN (its weights ship inside the package).

    Each face is a box with MTCNN's face probability as score, class ``"face"``, and five
    landmarks as keypoints (N, 5, 3): x, y and the face probability as each landmark's score.

    MTCNN can only batch images of one size, so `infer` groups the batch by image size and
    runs one ``detect`` call per group.

    Args:
        min_face_size: Smallest face side, in pixels, that MTCNN looks for.
        thresholds: MTCNN's three stage thresholds (P-Net, R-Net, O-Net).

    Attributes:
        keypoint_names: The landmark names, see `LANDMARK_NAMES`.

    Example:
        >>> faces = MTCNNFaceDetector(); faces.load("cpu")  # doctest: +SKIP
        >>> faces.infer([photo], 0.7)[0].xyxy  # doctest: +SKIP

    """

    name = "faces/mtcnn"
    task = "detection"
    classes = ["face"]
    default_conf = 0.7
    input_size = (512, 512)

    def __init__(
        self, min_face_size: int = 20, thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    ) -> None:
        self.min_face_size = int(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.keypoint_names = list(LANDMARK_NAMES)
        self.network: Any = None

    def load(self, device: str) -> None:
        """Build MTCNN on ``device`` with its bundled weights."""
        from facenet_pytorch import MTCNN

        self.network = MTCNN(
            keep_all=True,
            min_face_size=self.min_face_size,
            thresholds=list(self.thresholds),
            device=torch.device(device),
        )

    def infer(self, images: list[np.ndarray], conf: float) -> list[Detections]:
        """Detect the faces of every image, one MTCNN call per group of same-size images."""
        if self.network is None:
            raise RuntimeError(f"{self.name}: call load(device) before infer()")
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for position, image in enumerate(images):
            groups[np.shape(image)].append(position)
        results: list[Detections | None] = [None] * len(images)
        for positions in groups.values():
            batch = [np.ascontiguousarray(images[p]) for p in positions]
            with torch.inference_mode():
                boxes, probs, points = self.network.detect(batch, landmarks=True)
            for slot, position in enumerate(positions):
                found = _faces(boxes[slot], probs[slot], points[slot])
                results[position] = found[found.scores >= conf]
        return results  # type: ignore[return-value]


def _faces(boxes: Any, probs: Any, points: Any) -> Detections:
    """Convert one image's MTCNN output (object arrays under numpy 2; None: no face)."""
    if boxes is None or probs is None or points is None:
        return Detections.empty(num_keypoints=len(LANDMARK_NAMES))
    xyxy = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(probs, dtype=np.float32).reshape(-1)
    landmarks = np.asarray(points, dtype=np.float32).reshape(-1, len(LANDMARK_NAMES), 2)
    keypoints = np.concatenate(
        [landmarks, np.broadcast_to(scores[:, None, None], (len(scores), len(LANDMARK_NAMES), 1))],
        axis=2,
    )
    return Detections(
        xyxy=xyxy, scores=scores, class_idxs=np.zeros(len(scores), np.int64), keypoints=keypoints
    )
