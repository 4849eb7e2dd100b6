"""Where a prediction's image goes under its own name: shared by the project-style exports."""

from __future__ import annotations

from pathlib import PurePosixPath

from engine.prediction import Prediction

__all__ = ["PNG_SUFFIX", "image_file_name"]

#: The suffix of images written as PNG.
PNG_SUFFIX = ".png"


def image_file_name(prediction: Prediction) -> str:
    """Return the file name under which a prediction's image is stored.

    A still image keeps its name (its last path part; ``image_<index>`` when empty); a
    video frame is ``<video stem>_<frame_index:06d>.png``.

    Args:
        prediction: The prediction.

    Returns:
        A file name without directory parts.

    Example:
        >>> from engine.detections import Detections
        >>> p = Prediction(Detections.empty(), [], name="clip.mp4", frame_index=12)
        >>> image_file_name(p)
        'clip_000012.png'

    """
    name = PurePosixPath(str(prediction.name).replace("\\", "/")).name
    if name in ("", ".", ".."):
        name = f"image_{prediction.index}"
    if prediction.frame_index is not None:
        return f"{PurePosixPath(name).stem}_{int(prediction.frame_index):06d}{PNG_SUFFIX}"
    return name
