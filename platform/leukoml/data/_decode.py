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


class ImageError(ValueError):
    """The bytes are not a usable image; the message is the reason."""


def decode_image(data: bytes, size: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Bytes of a JPEG/PNG/BMP/TIFF -> (size, size, 3) uint8 RGB.

    EXIF orientation is applied, the first page of a multi-page TIFF is used,
    grayscale/palette/CMYK/16-bit become 8-bit RGB, transparency is laid on
    white, and the image is squashed to `size` x `size` (the papers' protocol).
    """
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
    try:
        image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, much faster
        image.load()
        image = _to_rgb(ImageOps.exif_transpose(image))
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    except Exception as exc:
        raise ImageError(f"truncated or corrupt image data: {exc}") from None
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
