"""Decode any image file a lab may have into a square RGB uint8 array.

Used by the decode cache and by the served model alike, so training and
serving see the same pixels. Anything that cannot be read becomes an
`ImageError` whose message says why; callers skip and list the file.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "TIFF"})
# 50 Mpx: a whole-slide tile is larger, a microscope field is not. PIL's own
# bomb check (89 Mpx warning, 179 Mpx error) is later and louder than needed.
MAX_PIXELS = 50_000_000
# A microscope field or cell crop is tens of pixels wide at least; an image under this on a
# side (a 1x1 tracking pixel, an icon) is refused rather than given a confident label.
MIN_SIDE = 16


class ImageError(ValueError):
    """The bytes are not a usable image; the message is the reason."""


def _open(data: bytes, size: int, max_pixels: int) -> Image.Image:
    """The image in `data`, checked and loaded as RGB (drafted near `size` px), or an `ImageError`."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised content)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"refused as a decompression bomb: {exc}") from None
    except Exception as exc:  # PIL raises many types on malformed headers
        raise ImageError(f"unreadable image header: {exc}") from None
    if image.format not in _FORMATS:
        raise ImageError(f"unsupported image format {image.format}")
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(f"{width}x{height} px is over the limit of {max_pixels:,} pixels")
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"{width}x{height} px is too small to hold a cell (under {MIN_SIDE} "
                         "px on a side)")
    try:
        image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, much faster
        image.load()
        return _to_rgb(ImageOps.exif_transpose(image))
    except Exception as exc:
        raise ImageError(f"truncated or corrupt image data: {exc}") from None


def decode_cropped(data: bytes, size: int, crop: str = "none",
                   max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, bool]:
    """(pixels, cell found) : `decode_image`, telling whether `crop="cell"` found the cell."""
    from leukoml.data._crop import cell_square

    # a cell crop keeps about a third of the field: decode at thrice the size
    image = _open(data, size * 3 if crop == "cell" else size, max_pixels)
    found = False
    try:
        if crop == "cell":
            square = cell_square(np.asarray(image, dtype=np.uint8))
            if square is not None:
                x0, y0, side = square
                image = image.crop((x0, y0, x0 + side, y0 + side))
                found = True
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    except Exception as exc:
        raise ImageError(f"truncated or corrupt image data: {exc}") from None
    return np.asarray(image, dtype=np.uint8), found


def decode_image(data: bytes, size: int, max_pixels: int = MAX_PIXELS,
                 crop: str = "none") -> np.ndarray:
    """Bytes of a JPEG/PNG/BMP/TIFF -> (size, size, 3) uint8 RGB.

    EXIF orientation is applied, the first page of a multi-page TIFF is used,
    grayscale/palette/CMYK/16-bit become 8-bit RGB, transparency is laid on
    white; with `crop="cell"` a square around the leukocyte is kept (the whole
    image if none is found); then the image is squashed to `size` x `size`.
    """
    return decode_cropped(data, size, crop, max_pixels)[0]


def decode_gray(data: bytes, max_side: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Bytes of an image -> (h, w) uint8 grey, aspect kept, longest side at most `max_side`."""
    image = _open(data, max_side, max_pixels).convert("L")
    scale = max_side / max(image.size)
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BOX)
    return np.asarray(image, dtype=np.uint8)


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":  # 16/32-bit integer or float grayscale
        pixels = np.asarray(image, dtype=np.float64)
        if mode == "F":  # floats are 0..1 by convention; other ranges are scaled to their max
            top = max(1.0, float(pixels.max()))
        else:
            top = 65535.0 if mode.startswith("I;16") or pixels.max() > 255 else 255.0
        pixels = np.clip(pixels / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(pixels, "L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
