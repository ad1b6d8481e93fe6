"""`crop: cell`: find the leukocyte in a smear field and keep a square around it.

Kaggle-style images are whole 320x240 fields in which the white cell covers a
few percent of the pixels; squashed to 64 px it is a dozen pixels wide. The
leukocyte's nucleus is the largest strongly stained violet region, so an HSV
threshold, an opening and a closing, and the largest connected component
(OpenCV) locate it. The square is about twice the nucleus, at least
MIN_SIDE of the field; when nothing is found the whole image is kept and the
miss is counted. Training, evaluation, Grad-CAM and the served model all crop
through `decode_image`, so they see the same pixels.
"""

from __future__ import annotations

import numpy as np

# OpenCV hue is 0-179 (degrees / 2): 110-160 is violet to purple, the stained nucleus
HUE = (110, 160)
MIN_SATURATION = 60
MIN_AREA = 0.002  # share of the field: smaller stained specks (platelets) are not a cell
MIN_SIDE = 0.35  # share of the field's shorter side
SCALE = 2.0  # the square's side, in nucleus extents
_WORK_SIDE = 160  # px: the search runs on a reduced copy


def cell_square(rgb: np.ndarray) -> tuple[int, int, int] | None:
    """(x0, y0, side) of the square around the leukocyte in `rgb`, or None if none is found."""
    import cv2

    height, width = rgb.shape[:2]
    scale = min(1.0, _WORK_SIDE / max(height, width))
    small = rgb if scale == 1.0 else cv2.resize(
        rgb, (max(1, round(width * scale)), max(1, round(height * scale))),
        interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_RGB2HSV)
    mask = ((hsv[..., 0] >= HUE[0]) & (hsv[..., 0] <= HUE[1])
            & (hsv[..., 1] >= MIN_SATURATION)).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel, iterations=2)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count < 2:
        return None
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h, area = (int(v) for v in stats[best])
    if area < MIN_AREA * mask.size:
        return None
    shorter = min(height, width)
    side = int(round(min(shorter, max(MIN_SIDE * shorter, SCALE * max(w, h) / scale))))
    cx, cy = (x + w / 2) / scale, (y + h / 2) / scale
    x0 = int(round(min(max(cx - side / 2, 0), width - side)))
    y0 = int(round(min(max(cy - side / 2, 0), height - side)))
    return x0, y0, side
