"""Blood-smear-like images of the 5 WBC classes, rendered deterministically.

The embedded default dataset: no download, yet a model has something real to
learn. Each image is a pale field of red-cell discs with one stained
leukocyte whose nucleus shape, granules and size follow its class:

- basophil:   mid-size, dense dark-purple granules hiding a round nucleus
- eosinophil: mid-size, bilobed nucleus, orange-red granules
- lymphocyte: small, one large round nucleus, a thin blue rim of cytoplasm
- monocyte:   large, kidney/horseshoe nucleus, grey-blue cytoplasm
- neutrophil: mid-size, 2-5 lobes on a curve, faint lilac cytoplasm

The classes overlap on purpose (2-lobed neutrophils, pale eosinophil
granules, small monocytes, sparse basophil granules), with random position,
rotation, scale, stain jitter, blur and noise, so the task is not trivial;
centred on the cell (`crop: cell`, the default) a small CNN can still reach
100% (seen for Asghar2022CNN at 64 px).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SYNTHETIC_CLASSES = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")
GENERATOR_VERSION = 1
_SS = 2  # supersampling factor for anti-aliased edges


def _jitter(rng, rgb, amount):
    return tuple(int(np.clip(c + rng.normal(0, amount), 0, 255)) for c in rgb)


def _disc(draw, cx, cy, r, fill):
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)


def _red_cells(draw, rng, size, stain):
    for _ in range(int(rng.integers(6, 14))):
        r = size * rng.uniform(0.075, 0.1)
        cx, cy = rng.uniform(-r, size + r, 2)
        rim = _jitter(rng, (214 + stain[0], 140 + stain[1], 145 + stain[2]), 8)
        _disc(draw, cx, cy, r, rim)
        _disc(draw, cx, cy, r * rng.uniform(0.35, 0.5), _jitter(rng, (232, 182, 182), 6))


def _granules(draw, rng, cx, cy, radius, count, colour, grain):
    for _ in range(count):
        a, d = rng.uniform(0, 2 * math.pi), radius * math.sqrt(rng.uniform(0, 1))
        _disc(draw, cx + d * math.cos(a), cy + d * math.sin(a), grain * rng.uniform(0.7, 1.3),
              _jitter(rng, colour, 12))


def _lobes(draw, rng, cx, cy, spread, count, lobe_r, angle, colour):
    """`count` nuclear lobes on a gentle arc, joined by thin chromatin strands."""
    points = []
    bend = rng.uniform(-0.6, 0.6)
    for i in range(count):
        t = (i - (count - 1) / 2) / max(count - 1, 1)
        along, across = t * spread * 2, bend * spread * (1 - (2 * t) ** 2)
        x = cx + along * math.cos(angle) - across * math.sin(angle)
        y = cy + along * math.sin(angle) + across * math.cos(angle)
        points.append((x, y))
    draw.line(points, fill=colour, width=max(1, int(lobe_r * 0.35)))
    for x, y in points:
        r = lobe_r * rng.uniform(0.85, 1.15)
        draw.ellipse((x - r, y - r * rng.uniform(0.75, 1.0), x + r, y + r), fill=colour)


def _leukocyte(draw, rng, kind, cx, cy, unit, stain):
    angle = rng.uniform(0, 2 * math.pi)
    nucleus = _jitter(rng, (88 + stain[0], 38 + stain[1], 118 + stain[2]), 10)
    if kind == "lymphocyte":
        r = unit * rng.uniform(0.9, 1.15)
        _disc(draw, cx, cy, r, _jitter(rng, (150, 175, 215), 12))
        off = r * 0.12
        _disc(draw, cx + rng.uniform(-off, off), cy + rng.uniform(-off, off),
              r * rng.uniform(0.75, 0.86), nucleus)
    elif kind == "monocyte":
        r = unit * rng.uniform(1.3, 1.7)
        _disc(draw, cx, cy, r, _jitter(rng, (170, 165, 195), 12))
        nr = r * 0.62
        draw.ellipse((cx - nr, cy - nr * 0.8, cx + nr, cy + nr * 0.8), fill=nucleus)
        # the bite that makes the kidney / horseshoe shape
        bx, by = cx + nr * 0.9 * math.cos(angle), cy + nr * 0.9 * math.sin(angle)
        _disc(draw, bx, by, nr * rng.uniform(0.45, 0.7), _jitter(rng, (170, 165, 195), 12))
    elif kind == "neutrophil":
        r = unit * rng.uniform(1.15, 1.4)
        _disc(draw, cx, cy, r, _jitter(rng, (215, 190, 210), 10))
        _granules(draw, rng, cx, cy, r * 0.9, int(rng.integers(0, 30)), (200, 160, 190), unit * 0.05)
        lobes = int(rng.choice([2, 3, 3, 4, 4, 5], p=[0.12, 0.3, 0.2, 0.18, 0.12, 0.08]))
        _lobes(draw, rng, cx, cy, r * 0.45, lobes, r * 0.24, angle, nucleus)
    elif kind == "eosinophil":
        r = unit * rng.uniform(1.15, 1.45)
        _disc(draw, cx, cy, r, _jitter(rng, (225, 175, 160), 10))
        intensity = rng.uniform(0.35, 1.0)
        granule = tuple(int(255 - (255 - c) * intensity) for c in (225, 110, 60))
        _granules(draw, rng, cx, cy, r * 0.92, int(rng.integers(40, 110)), granule, unit * 0.07)
        _lobes(draw, rng, cx, cy, r * 0.35, 2, r * 0.3, angle, nucleus)
    elif kind == "basophil":
        r = unit * rng.uniform(1.05, 1.35)
        _disc(draw, cx, cy, r, _jitter(rng, (185, 160, 205), 10))
        _disc(draw, cx, cy, r * rng.uniform(0.5, 0.65), nucleus)
        _granules(draw, rng, cx, cy, r * 0.9, int(rng.integers(25, 120)), (60, 25, 90), unit * 0.08)
    else:
        raise ValueError(f"unknown synthetic class {kind!r}")


def render_cell(kind: str, size: int, seed: int | tuple[int, ...]) -> np.ndarray:
    """One (size, size, 3) uint8 image of class `kind`, determined by `seed`."""
    rng = np.random.default_rng(seed)
    canvas = size * _SS
    stain = rng.normal(0, 10, 3)
    background = _jitter(rng, (236 + stain[0] / 2, 224 + stain[1] / 2, 222 + stain[2] / 2), 5)
    image = Image.new("RGB", (canvas, canvas), background)
    draw = ImageDraw.Draw(image)
    _red_cells(draw, rng, canvas, stain)
    unit = canvas * 0.13 * rng.uniform(0.85, 1.15)
    cx, cy = canvas * rng.uniform(0.3, 0.7, 2)
    _leukocyte(draw, rng, kind, cx, cy, unit, stain)
    image = image.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.6, 1.8) * _SS))
    image = image.resize((size, size), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32)
    pixels += rng.normal(0, rng.uniform(2, 7), pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def write_synthetic_dataset(folder: Path, per_class: int, seed: int, size: int) -> Path:
    """Render `per_class` PNGs per class into `folder/<class>/`; returns `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for label, kind in enumerate(SYNTHETIC_CLASSES):
        (folder / kind).mkdir(exist_ok=True)
        for i in range(per_class):
            pixels = render_cell(kind, size, seed=(seed, label, i))
            Image.fromarray(pixels).save(folder / kind / f"{kind}_{i:05d}.png", optimize=False)
    return folder
