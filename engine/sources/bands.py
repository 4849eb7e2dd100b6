"""Read a large image file top to bottom in horizontal bands, with bounded memory.

Tiled prediction only ever needs one row of tiles at a time. For an image too large to
hold comfortably (a 20000x20000 RGB image is 1.2 GB decoded), the model worker opens the
file itself and reads it one band of rows after another through libvips in sequential
mode, which decodes JPEG, PNG and TIFF as a stream: memory is a band (window height x
image width x 3 bytes), not the image.

The pixels match `engine.sources.decode` for the modes read in bands (RGB, RGBA, L, LA,
P, PA, 16-bit): alpha dropped keeping the stored colour, gray repeated into three
channels, 16 bits kept as their high byte. Anything else (CMYK, float, 32-bit, an EXIF
orientation that turns the image) is decoded whole, as every other image is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from engine.sources.decode import ImageLoadError, check_pixels, strict_pillow

#: Images with at least this many pixels are read in bands when predicted in tiles.
BAND_READ_MIN_PIXELS = 64 * 1024 * 1024

#: File formats libvips streams top to bottom.
BAND_FORMATS = frozenset({"JPEG", "PNG", "TIFF"})

#: Pillow modes whose conversion to RGB libvips reproduces exactly.
BAND_MODES = frozenset({"RGB", "RGBA", "L", "LA", "P", "PA", "I;16", "I;16B", "I;16L"})

_EXIF_ORIENTATION = 0x0112

#: Rows fetched from libvips per call: small fetches keep its buffers small.
_FETCH_ROWS = 64


@dataclass(frozen=True)
class BandSource:
    """A large local image file that the model worker reads itself, band by band.

    Attributes:
        path: The file.
        name: What to call the image in error messages.
        height: Image height in pixels, from the header.
        width: Image width in pixels, from the header.
    """

    path: str
    name: str
    height: int
    width: int

    @property
    def shape(self) -> tuple[int, int, int]:
        """(height, width, 3), as the decoded array would have."""
        return (self.height, self.width, 3)


def band_reading_available() -> bool:
    """Tell whether libvips (pyvips) can be loaded in this process."""
    try:
        import pyvips  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def band_source_for(
    path: str, name: str, max_pixels: int, min_pixels: int = BAND_READ_MIN_PIXELS
) -> BandSource | None:
    """Probe an image file's header and decide whether to read it in bands.

    Args:
        path: A local image file.
        name: What to call it in error messages.
        max_pixels: Refuse images with more pixels than this.
        min_pixels: Only images at least this large are read in bands.

    Returns:
        A `BandSource` when the image is at least ``min_pixels``, in a format and mode
        read in bands, and libvips is available; None when it should be decoded whole.

    Raises:
        ImageLoadError: The file cannot be opened, or the image is above ``max_pixels``.

    Example:
        >>> band_source_for("aerial.tif", "aerial.tif", 500_000_000)  # doctest: +SKIP
        BandSource(path='aerial.tif', name='aerial.tif', height=20000, width=20000)
    """
    try:
        with strict_pillow(), Image.open(path) as image:
            width, height = image.size
            check_pixels(name, width, height, max_pixels)
            if width * height < min_pixels:
                return None
            readable = image.format in BAND_FORMATS and image.mode in BAND_MODES
            orientation = _orientation(image) if readable else 1
    except ImageLoadError:
        raise
    except FileNotFoundError as e:
        raise ImageLoadError(f"file not found: {name}") from e
    except Exception:  # not an image Pillow can open: the whole-image decoder says why
        return None
    if not readable or orientation != 1 or not band_reading_available():
        return None
    return BandSource(str(path), name, int(height), int(width))


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation; 1 when the EXIF block cannot be read (decode.py ignores it too)."""
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:
        return 1


class BandReader:
    """Rows of a `BandSource`, read top to bottom, optionally resized on the fly.

    Bands may overlap (rows of tiles do): the rows shared with the previous band are kept
    from it, and only new rows are decoded, so each row is decoded once.

    Args:
        source: The image.
        size: (height, width) to resize the image to before it is read, or None.

    Raises:
        ImageLoadError: The file cannot be opened.

    Example:
        >>> reader = BandReader(BandSource("big.png", "big.png", 20000, 20000))  # doctest: +SKIP
        >>> reader.rows(0, 640).shape                                            # doctest: +SKIP
        (640, 20000, 3)
    """

    def __init__(self, source: BandSource, size: tuple[int, int] | None = None) -> None:
        self.source = source
        self._image = _open_rgb(source, access="sequential")
        if size is not None and tuple(size) != (source.height, source.width):
            self._image = self._image.resize(
                size[1] / source.width, vscale=size[0] / source.height, kernel="linear"
            )
        self.height, self.width = int(self._image.height), int(self._image.width)
        self._region = _new_region(self._image)
        self._band = np.zeros((0, self.width, 3), np.uint8)
        self._band_top = 0

    def rows(self, top: int, bottom: int) -> np.ndarray:
        """Rows ``top`` to ``bottom`` (exclusive) as an (rows, width, 3) uint8 array.

        Args:
            top: First row; never above the previous call's ``top``.
            bottom: Row after the last, at most `height`.

        Raises:
            ImageLoadError: The file fails to decode (e.g. it is truncated).
            ValueError: The rows go backwards or out of the image.
        """
        if not 0 <= top < bottom <= self.height or top < self._band_top:
            raise ValueError(
                f"{self.source.name}: rows {top}:{bottom} out of order or outside 0:{self.height}"
            )
        band_end = self._band_top + len(self._band)
        kept = self._band[max(top - self._band_top, 0) : max(bottom - self._band_top, 0)]
        start = max(band_end, top)
        if start < bottom:
            new = self._read(start, bottom)
            kept = np.concatenate([kept, new]) if len(kept) else new
        self._band, self._band_top = kept, top
        return kept

    def _read(self, top: int, bottom: int) -> np.ndarray:
        """Decode rows top:bottom, a few at a time, into one new array."""
        import pyvips

        out = np.empty((bottom - top, self.width, 3), np.uint8)
        try:
            for start in range(top, bottom, _FETCH_ROWS):
                stop = min(start + _FETCH_ROWS, bottom)
                data = self._region.fetch(0, start, self.width, stop - start)
                out[start - top : stop - top] = np.frombuffer(data, np.uint8).reshape(
                    stop - start, self.width, 3
                )
        except pyvips.Error as e:
            raise ImageLoadError(
                f"{self.source.name}: cannot decode image: {_vips_reason(e)}"
            ) from e
        return out


def shrunk_whole_image(source: BandSource, max_side: int) -> np.ndarray:
    """The whole image shrunk so its longer side is ``max_side`` (never enlarged).

    libvips shrinks while it decodes (for JPEG, in the decoder itself), so memory stays
    that of the small image.

    Args:
        source: The image.
        max_side: Longest side of the result, in pixels.

    Returns:
        An (h, w, 3) uint8 array.
    """
    import pyvips

    image = _open_rgb(source, access="sequential")
    scale = min(1.0, max_side / max(source.height, source.width))
    try:
        if scale < 1.0:
            image = image.resize(scale, kernel="linear")
        data = image.write_to_memory()
    except pyvips.Error as e:
        raise ImageLoadError(f"{source.name}: cannot decode image: {_vips_reason(e)}") from e
    return np.frombuffer(data, np.uint8).reshape(image.height, image.width, 3).copy()


def _new_region(image: Any) -> Any:
    import pyvips

    return pyvips.Region.new(image)


def _open_rgb(source: BandSource, access: str) -> Any:
    """Open the file lazily in libvips and convert it to 8-bit RGB as decode.py does."""
    import pyvips

    try:
        image = pyvips.Image.new_from_file(source.path, access=access, fail_on="truncated")
    except pyvips.Error as e:
        raise ImageLoadError(f"{source.name}: cannot open image: {_vips_reason(e)}") from e
    if image.format == "ushort":
        image = (image >> 8).cast("uchar")
    elif image.format != "uchar":
        raise ImageLoadError(
            f"{source.name}: cannot read {image.format} pixels in bands; expected 8 or 16 bits"
        )
    if image.bands in (1, 2):
        gray = image[0]
        image = gray.bandjoin([gray, gray])
    elif image.bands >= 4:
        image = image[0:3]
    if (image.width, image.height) != (source.width, source.height):
        raise ImageLoadError(
            f"{source.name}: libvips reads {image.width}x{image.height}, the header says "
            f"{source.width}x{source.height}"
        )
    return image


def _vips_reason(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."
