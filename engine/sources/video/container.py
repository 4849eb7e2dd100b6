"""Opening video files with PyAV, and the one error type of the video modules.

Example:
    >>> with open_container("clip.mp4") as container:          # doctest: +SKIP
    ...     container.streams.video[0].codec_context.name
    'h264'

"""

from __future__ import annotations

import os

import av


class VideoError(ValueError):
    """A video could not be opened, probed or decoded.

    The message starts with the video's path and says what is wrong, e.g.
    ``"/data/a.mp4: no video stream"``; a missing file gives ``"file not found: <path>"``.
    """


def open_container(name: str) -> av.container.InputContainer:
    """Open a file for reading, turning PyAV's errors into `VideoError`.

    Args:
        name: The file's path.

    Returns:
        An open PyAV input container (close it, or use it as a context manager).

    Raises:
        VideoError: "file not found: <name>"; or a message starting with ``name`` when it
            is a directory, not a readable media file, or cannot be read.

    """
    if not os.path.exists(name):
        raise VideoError(f"file not found: {name}")
    if os.path.isdir(name):
        raise VideoError(f"{name}: is a directory, not a video file")
    try:
        return av.open(name, mode="r", metadata_errors="ignore")
    except FileNotFoundError as e:
        raise VideoError(f"file not found: {name}") from e
    except av.FFmpegError as e:
        raise VideoError(f"{name}: not a readable video file: {error_reason(e)}") from e
    except OSError as e:
        raise VideoError(f"{name}: cannot read file: {e.strerror or e}") from e


def error_reason(error: BaseException) -> str:
    """A short, lowercase reason from a PyAV error (without errno and call details).

    Args:
        error: The exception PyAV raised.

    Returns:
        Its ``strerror`` (else its message, else its type's name), first letter lowercased.

    Example:
        >>> error_reason(OSError(2, "No such file or directory"))
        'no such file or directory'

    """
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return text[:1].lower() + text[1:]
