"""Decoded pictures as displayed: RGB conversion and the display rotation.

Pure numpy, apart from reading a PyAV frame in `frame_to_rgb`.

Example:
    >>> rotate_image(np.zeros((2, 3, 3), np.uint8), 270).shape
    (3, 2, 3)

"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import av


def frame_to_rgb(frame: av.VideoFrame, rotation: int = 0) -> np.ndarray:
    """Convert a decoded frame to RGB and turn it by the display rotation.

    Args:
        frame: A decoded PyAV video frame.
        rotation: Degrees counter-clockwise (0, 90, 180 or 270), as in `VideoInfo`.

    Returns:
        A writable, C-contiguous (H, W, 3) uint8 RGB array as displayed.

    """
    return rotate_image(frame.to_ndarray(format="rgb24"), rotation)


def rotate_image(image: np.ndarray, rotation: int) -> np.ndarray:
    """Turn a decoded (stored) picture by its display rotation.

    Args:
        image: (H, W, ...) array as stored in the stream.
        rotation: Degrees counter-clockwise, a multiple of 90 (any sign).

    Returns:
        A C-contiguous array as displayed (H and W swapped for 90 and 270).

    Example:
        >>> rotate_image(np.array([[1, 2], [3, 4]]), 90).tolist()
        [[2, 4], [1, 3]]

    """
    k = normalize_rotation(rotation) // 90
    return np.ascontiguousarray(np.rot90(image, k) if k else image)


def normalize_rotation(degrees: float) -> int:
    """Round a rotation to a multiple of 90 in 0..270.

    Args:
        degrees: Degrees counter-clockwise, any sign; None or NaN gives 0.

    Returns:
        0, 90, 180 or 270.

    Example:
        >>> normalize_rotation(-90.0), normalize_rotation(float("nan"))
        (270, 0)

    """
    if degrees is None or not math.isfinite(degrees):
        return 0
    return int(round(degrees / 90.0)) % 4 * 90
