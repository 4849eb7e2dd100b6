"""Draw a `Prediction` onto its image with Pillow and numpy (no OpenCV).

Masks are blended at ``opacity`` in the object's color, boxes get an opaque outline and,
with ``fill_rectangles``, a translucent fill at ``opacity / 2``; keypoints are drawn as dots
and ``draw_tags`` writes "class 0.87" in a label box at each box's top-left corner.
"""

from __future__ import annotations

import colorsys
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from engine import masks as mask_utils

if TYPE_CHECKING:
    from engine.prediction import Prediction

__all__ = ["class_color", "draw_prediction"]

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
_GOLDEN = 0.618033988749895


def class_color(index: int) -> tuple[int, int, int]:
    """Return the fixed, distinct RGB color of a class index.

    Hues step by the golden ratio, so neighbouring indices get far-apart colors; the
    same index always gives the same color (platform formats use it for class colors too).

    Args:
        index: A class index (any int; negative indices are allowed).

    Returns:
        An (r, g, b) tuple of ints in 0..255.

    Example:
        >>> class_color(0)
        (242, 48, 48)

    """
    hue = (int(index) * _GOLDEN) % 1.0
    value = 0.95 if (int(index) // 7) % 2 == 0 else 0.8
    r, g, b = colorsys.hsv_to_rgb(hue, 0.8, value)
    return round(r * 255), round(g * 255), round(b * 255)


def draw_prediction(
    prediction: Prediction,
    save_path: str | Path | None = None,
    save_dir: str | Path | None = None,
    color: tuple[int, int, int] | None = None,
    thickness: int | None = None,
    opacity: float = 0.5,
    draw_tags: bool = False,
    fill_rectangles: bool = True,
) -> np.ndarray:
    """Draw the boxes, masks and keypoints of a prediction on a copy of its image.

    Args:
        prediction: The prediction; its image comes from ``prediction.load_image()``.
        save_path: Write the drawing to this file (format from the extension; parent
            folders are created).
        save_dir: Write the drawing into this folder as ``<prediction.name>``; video
            frames as ``<stem>_<frame_index:06d>.png``; ".png" is appended to a name
            without an image extension. A file already there is never overwritten: the
            drawing gets the first free ``<stem>_2``, ``<stem>_3``, ... instead.
        color: One RGB color for every object; None gives each class `class_color`.
        thickness: Box outline width in pixels; None gives max(1, round(min(H, W) / 300)).
        opacity: Opacity of masks, in [0, 1]; box fills use ``opacity / 2``.
        draw_tags: Write "class score" in a label box at each box's top-left corner.
        fill_rectangles: Fill boxes with their color at ``opacity / 2``.

    Returns:
        The drawn image, HWC RGB uint8 (the prediction's image is left unchanged).

    Raises:
        ValueError: On an invalid argument, or when the prediction has an ``error``.

    Example:
        >>> drawn = draw_prediction(prediction, save_dir="out", draw_tags=True)  # doctest: +SKIP

    """
    _validate(prediction, color, thickness, opacity)
    image = _as_rgb(prediction.load_image())
    height, width = image.shape[:2]
    if thickness is None:
        thickness = max(1, round(min(height, width) / 300))
    fixed = None if color is None else tuple(int(v) for v in color)
    colors = [fixed or class_color(int(i)) for i in prediction.class_idxs]
    rects = [_pixel_rect(box, height, width) for box in prediction.boxes]

    # 1) translucent fills and masks, blended in float
    canvas = image.astype(np.float32)
    if fill_rectangles and opacity > 0:
        for (left, top, right, bottom), c in zip(rects, colors, strict=True):
            if right >= left and bottom >= top:
                _blend(canvas[top : bottom + 1, left : right + 1], c, opacity / 2)
    for mask, c in zip(_masks(prediction, height, width), colors, strict=False):
        canvas[mask] = canvas[mask] * (1 - opacity) + np.asarray(c, np.float32) * opacity
    out = Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8))

    # 2) opaque outlines, keypoint dots and tags
    draw = ImageDraw.Draw(out)
    for (left, top, right, bottom), c in zip(rects, colors, strict=True):
        if right >= left and bottom >= top:
            draw.rectangle((left, top, right, bottom), outline=c, width=thickness)
    if prediction.keypoints is not None:
        radius = max(2, thickness + 1)
        for points, c in zip(prediction.keypoints, colors, strict=True):
            for x, y, score in points:
                if score > 0 and math.isfinite(x) and math.isfinite(y):
                    draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=c)
    if draw_tags:
        font = label_font(max(10, round(min(height, width) / 40)))
        labels = zip(rects, colors, prediction.classes, prediction.scores, strict=True)
        for (left, top, _, _), c, name, score in labels:
            draw_label(draw, font, f"{name} {score:.2f}", left, top, c)
    drawn = np.asarray(out).copy()

    # 3) save
    for path in _save_paths(prediction, save_path, save_dir):
        path.parent.mkdir(parents=True, exist_ok=True)
        out.save(path)
    return drawn


def _validate(
    prediction: Prediction,
    color: tuple[int, int, int] | None,
    thickness: int | None,
    opacity: float,
) -> None:
    if prediction.error is not None:
        raise ValueError(
            f"cannot draw prediction {prediction.name!r}: it failed with error: {prediction.error}"
        )
    if not isinstance(opacity, (int, float)) or not 0 <= opacity <= 1:
        raise ValueError(f"opacity must be a number in [0, 1], got {opacity!r}")
    if thickness is not None and (
        not isinstance(thickness, (int, np.integer)) or isinstance(thickness, bool) or thickness < 1
    ):
        raise ValueError(f"thickness must be an int >= 1, got {thickness!r}")
    if color is not None:
        ok = (
            isinstance(color, (tuple, list))
            and len(color) == 3
            and all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v <= 255
                for v in color
            )
        )
        if not ok:
            raise ValueError(f"color must be 3 ints in 0..255 (RGB), got {color!r}")


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"image must be HWC RGB, got shape {image.shape}")
    return np.ascontiguousarray(image[..., :3], dtype=np.uint8)


def _pixel_rect(box: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """Inclusive pixel rectangle of an xyxy box (x2, y2 exclusive), clipped to the image."""
    x1, y1, x2, y2 = (float(v) for v in box)
    left, top = max(0, math.floor(x1)), max(0, math.floor(y1))
    right, bottom = min(width - 1, math.ceil(x2) - 1), min(height - 1, math.ceil(y2) - 1)
    return left, top, right, bottom


def _masks(prediction: Prediction, height: int, width: int) -> np.ndarray | list:
    rles = prediction.masks_rle
    if not rles:
        return []
    if [int(s) for s in rles[0]["size"]] != [height, width]:
        rles = mask_utils.resize_masks(rles, height, width)
    return mask_utils.decode_masks(rles, height, width)


def _blend(region: np.ndarray, color: tuple[int, ...], alpha: float) -> None:
    region *= 1 - alpha
    region += np.asarray(color, np.float32) * alpha


def label_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's default font at ``size`` pixels (its bitmap font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):  # Pillow without FreeType, or < 10.1
        return ImageFont.load_default()


def draw_label(
    draw: ImageDraw.ImageDraw,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    text: str,
    left: int,
    top: int,
    color: tuple[int, ...],
) -> None:
    """Draw ``text`` on a box of ``color`` just above (x=left, y=top), or inside if no room."""
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    pad = 2
    w, h = x1 - x0 + 2 * pad, y1 - y0 + 2 * pad
    y = top - h if top - h >= 0 else top
    draw.rectangle((left, y, left + w - 1, y + h - 1), fill=color)
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    text_color = (0, 0, 0) if luminance > 150 else (255, 255, 255)
    draw.text((left + pad - x0, y + pad - y0), text, fill=text_color, font=font)


def _save_paths(
    prediction: Prediction, save_path: str | Path | None, save_dir: str | Path | None
) -> list[Path]:
    paths = [Path(save_path)] if save_path is not None else []
    if save_dir is not None:
        name = Path(prediction.name or f"image_{prediction.index}").name
        if prediction.frame_index is not None:
            name = f"{Path(name).stem}_{int(prediction.frame_index):06d}.png"
        elif Path(name).suffix.lower() not in _IMAGE_SUFFIXES:
            name = f"{name}.png"
        paths.append(free_path(Path(save_dir) / name))
    return paths


def free_path(path: Path) -> Path:
    """``path`` when no file is there yet, else the first free ``<stem>_<n><suffix>``, n >= 2.

    Example:
        >>> free_path(Path("/nonexistent/a.png"))
        PosixPath('/nonexistent/a.png')
    """
    candidate, number = path, 2
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}_{number}{path.suffix}")
        number += 1
    return candidate
