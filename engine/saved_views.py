"""What ``tessera predict --save-txt`` and ``--save-crop`` write, as Ultralytics writes it.

``--save-txt``: ``labels/<stem>.txt`` per image, one line per object, ``class cx cy w h
conf`` with the box centre and size as fractions of the image (YOLO's label format; the
class is the model's class index), and ``labels/classes.txt`` naming the indices.
``--save-crop``: ``crops/<class>/<stem>.jpg`` per object, the box cut from the original
image (``<stem>_2.jpg``... for the second object of a class in an image, and for an equal
name from another folder: nothing is overwritten).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from engine.prediction import Prediction
from engine.visualize import free_path

__all__ = ["save_crops", "save_yolo_labels", "view_stem", "yolo_label_lines"]


def view_stem(prediction: Prediction) -> str:
    """The file stem of an image's outputs: its name's stem; a frame's ``<stem>_<frame:06d>``.

    Example:
        >>> from engine.detections import Detections
        >>> view_stem(Prediction(Detections.empty(), [], name="clip.mp4", frame_index=7))
        'clip_000007'
    """
    stem = Path(prediction.name or f"image_{prediction.index}").stem
    if prediction.frame_index is not None:
        stem = f"{stem}_{int(prediction.frame_index):06d}"
    return stem


def yolo_label_lines(prediction: Prediction) -> list[str]:
    """One ``class cx cy w h conf`` line per object, coordinates as fractions of the image.

    Example:
        >>> from engine.detections import Detections
        >>> d = Detections(np.array([[0, 0, 50, 20]]), np.array([0.9]), np.array([1]))
        >>> yolo_label_lines(Prediction(d, ["a", "b"], width=100, height=40))
        ['1 0.250000 0.250000 0.500000 0.500000 0.9000']
    """
    if not prediction.width or not prediction.height:
        raise ValueError(f"{prediction.name}: no image size to scale the labels by")
    boxes = prediction.boxes.astype(np.float64)
    width, height = float(prediction.width), float(prediction.height)
    lines = []
    for (x1, y1, x2, y2), score, index in zip(boxes, prediction.scores, prediction.class_idxs):
        cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
        w, h = (x2 - x1) / width, (y2 - y1) / height
        lines.append(f"{int(index)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f} {float(score):.4f}")
    return lines


def save_yolo_labels(prediction: Prediction, folder: Path) -> Path:
    """Write the prediction's label file into ``folder`` (and ``classes.txt`` once)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = folder / "classes.txt"
    if not names.exists():
        names.write_text("\n".join(prediction.class_names) + "\n", encoding="utf-8")
    path = free_path(folder / f"{view_stem(prediction)}.txt")
    lines = yolo_label_lines(prediction)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def save_crops(prediction: Prediction, folder: Path) -> list[Path]:
    """Cut each object's box out of the original image into ``folder/<class>/``."""
    if not len(prediction):
        return []
    image = prediction.load_image()
    written = []
    for (x1, y1, x2, y2), name in zip(prediction.boxes, prediction.classes):
        left, top = max(0, int(np.floor(x1))), max(0, int(np.floor(y1)))
        right, bottom = int(np.ceil(x2)), int(np.ceil(y2))
        crop = image[top:bottom, left:right]
        if crop.size == 0:
            continue
        target = folder / name.replace("/", "_")
        target.mkdir(parents=True, exist_ok=True)
        path = free_path(target / f"{view_stem(prediction)}.jpg")
        Image.fromarray(np.ascontiguousarray(crop)).save(path, quality=95)
        written.append(path)
    return written
