"""Time and memory of the sibling search as a data set grows, beside decoding the same images.

Issue 25. A lab's archive has one image per cell, so almost no image has a
sibling and every image pays the whole search. This script writes a set of
fields drawn with OpenCV (red-cell discs, one stained leukocyte, blur and
noise; 360 px JPEGs, each its own field, so any group found is a false one)
and, at each size, runs in a fresh process each:

- decode: what `prepare` does to every file (`_decode_one`: decode, cell crop
  at 64 px, SHA-256 and perceptual hash), over all cores; the anchor;
- siblings: `find_siblings` on the same files.

Each row gives wall time, the ratio to decode, the parent's and the largest
worker's peak RSS, and the images found with a sibling; the growth exponent
is fitted on the sizes from 10,000 on.

    python benchmarks/siblings_scale.py [--sizes 2000,10000,17092,50000,100000]

Writes benchmarks/results/siblings_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import machine, print_table, write_result

CLASSES = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")
FIELDS = Path(os.environ.get("LEUKOML_CACHE_DIR", Path.home() / ".cache" / "leukoml")) / (
    "benchmark-fields")


def field(seed: int, side: int = 360) -> np.ndarray:
    """A blood-smear-like field (BGR uint8) drawn with OpenCV: its own field, no siblings."""
    import cv2

    rng = np.random.default_rng(seed)
    stain = rng.normal(0, 10, 3)
    image = np.empty((side, side, 3), np.uint8)
    image[:] = np.clip(np.array([222, 224, 236]) + stain / 2 + rng.normal(0, 5, 3), 0, 255)

    def colour(low, high):
        return tuple(int(v) for v in rng.uniform(low, high, 3))

    for _ in range(int(rng.integers(6, 16))):  # red cells: pale rims, paler centres
        r = int(side * rng.uniform(0.06, 0.11))
        c = tuple(int(v) for v in rng.uniform(-r, side + r, 2))
        rim = np.clip(np.array([145, 140, 214]) + stain[::-1] + rng.normal(0, 8, 3), 0, 255)
        cv2.circle(image, c, r, tuple(map(int, rim)), -1, cv2.LINE_AA)
        cv2.circle(image, c, int(r * rng.uniform(0.3, 0.55)), (182, 182, 232), -1, cv2.LINE_AA)
    centre = rng.uniform(0.3, 0.7, 2) * side
    r = side * rng.uniform(0.09, 0.16)
    cv2.circle(image, tuple(map(int, centre)), int(r), colour(150, 215), -1, cv2.LINE_AA)
    for _ in range(int(rng.integers(1, 6))):  # nuclear lobes
        c = centre + rng.normal(0, r * 0.35, 2)
        axes = (int(r * rng.uniform(0.2, 0.45)), int(r * rng.uniform(0.15, 0.35)))
        cv2.ellipse(image, tuple(map(int, c)), axes, float(rng.uniform(0, 180)), 0, 360,
                    colour(40, 130), -1, cv2.LINE_AA)
    for _ in range(int(rng.integers(0, 80))):  # granules
        c = centre + rng.normal(0, r * 0.5, 2)
        cv2.circle(image, tuple(map(int, c)), int(rng.integers(1, 4)), colour(40, 200), -1)
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.8, 2.0))
    noise = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(rng.uniform(2, 7))
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def field_path(folder: Path, i: int) -> Path:
    return folder / CLASSES[i % len(CLASSES)] / f"{i:06d}.jpg"


def _write_field(job: tuple[str, int]) -> None:
    import cv2

    folder, i = job
    path = field_path(Path(folder), i)
    if not path.exists():
        cv2.imwrite(str(path), field(i), [cv2.IMWRITE_JPEG_QUALITY, 90])


def make_fields(folder: Path, n: int) -> None:
    from leukoml.data._parallel import parallel_map

    for name in CLASSES:
        (folder / name).mkdir(parents=True, exist_ok=True)
    missing = [(str(folder), i) for i in range(n) if not field_path(folder, i).exists()]
    if missing:
        print(f"writing {len(missing):,} fields to {folder}")
        list(parallel_map(_write_field, missing, chunksize=256))


def one(step: str, folder: Path, n: int) -> dict:
    """In a fresh process: time one step over the first n fields. Its log goes to stderr with
    a timestamp per line, as in a batch log (no terminal), for `longest_silence`."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(created).3f %(name)s: %(message)s")
    paths = [str(field_path(folder, i)) for i in range(n)]
    logging.getLogger("benchmark").info("start")
    started = time.perf_counter()
    if step == "decode":
        from leukoml.data._cache import _decode_one
        from leukoml.data._parallel import parallel_map

        ok = sum(r[0] for r in parallel_map(_decode_one, [(p, 64, "cell") for p in paths]))
        extra = {"decoded": int(ok)}
    else:
        from leukoml.data._siblings import find_siblings

        found = find_siblings(paths)
        extra = {"images_with_sibling": found.n_with_sibling, "pairs_verified": found.verified,
                 "phases": found.phases}
    seconds = time.perf_counter() - started
    logging.getLogger("benchmark").info("end")
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    worker_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"seconds": round(seconds, 1), "peak_rss_gb": round(kib / 2**20, 2),
            "worker_peak_rss_gb": round(worker_kib / 2**20, 2), **extra}


def longest_silence(log: str) -> float:
    """The longest time between two lines of a batch log whose lines start with a timestamp."""
    stamps = []
    for line in log.splitlines():
        try:
            stamps.append(float(line.split(" ", 1)[0]))
        except ValueError:
            continue
    return round(float(np.diff(stamps).max()), 1) if len(stamps) > 1 else 0.0


def prepare_log(data: Path) -> dict:
    """`leukoml prepare` of `data` with a cold cache, as a batch job: its wall time and the
    longest silence of its log (leukoml's lines carry HH:MM:SS)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "LEUKOML_CACHE_DIR": tmp,
               "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "leukoml", "prepare", "--data", str(data)],
                              env=env, capture_output=True, text=True, check=True, cwd=tmp)
        seconds = time.perf_counter() - started
    stamps = []
    for line in done.stderr.splitlines():
        head = line.split(" ", 1)[0]
        if len(head) == 8 and head[2] == head[5] == ":":
            h, m, sec = (int(x) for x in head.split(":"))
            stamps.append(h * 3600 + m * 60 + sec)
    gaps = np.diff(stamps) if len(stamps) > 1 else np.zeros(1)
    return {"data": str(data), "seconds": round(seconds, 1), "log_lines": len(stamps),
            "longest_log_silence_seconds": int(gaps.max())}


def exponent(sizes: list[int], seconds: list[float]) -> float | None:
    points = [(n, s) for n, s in zip(sizes, seconds) if n >= 10_000]
    if len(points) < 2:
        return None
    x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    return round(float(np.polyfit(x, y, 1)[0]), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,10000,17092,50000,100000")
    parser.add_argument("--fields", default=str(FIELDS))
    parser.add_argument("--one", choices=("decode", "siblings"), help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = Path(args.fields)
    if args.one:
        print(json.dumps(one(args.one, folder, args.n)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    info = machine()
    make_fields(folder, max(sizes))
    rows = []
    for n in sizes:
        row = {"images": n, "load_average_1m_before": round(os.getloadavg()[0], 2)}
        for step in ("decode", "siblings"):
            done = subprocess.run([sys.executable, __file__, "--one", step, "--n", str(n),
                                   "--fields", str(folder)], check=True, capture_output=True,
                                  text=True)
            row[step] = json.loads(done.stdout.strip().splitlines()[-1])
            row[step]["longest_log_silence_seconds"] = longest_silence(done.stderr)
        row["ratio_to_decode"] = round(row["siblings"]["seconds"] / row["decode"]["seconds"], 2)
        rows.append(row)
        print_table([{"n": n, "decode": row["decode"]["seconds"],
                      "siblings": row["siblings"]["seconds"], "ratio": row["ratio_to_decode"],
                      "rss": row["siblings"]["peak_rss_gb"],
                      "worker": row["siblings"]["worker_peak_rss_gb"],
                      "false": row["siblings"]["images_with_sibling"],
                      "silence": row["siblings"]["longest_log_silence_seconds"]}],
                    [("images", "n", ","), ("decode s", "decode"), ("siblings s", "siblings"),
                     ("x decode", "ratio"), ("peak GB", "rss"), ("worker GB", "worker"),
                     ("with sibling", "false"), ("log gap s", "silence")])
    from _common import KAGGLE

    prepared = prepare_log(KAGGLE) if KAGGLE.is_dir() else None
    if prepared:
        print(f"leukoml prepare of {KAGGLE.name}, cold cache: {prepared}")
    result = {
        "machine": info, "prepare_kaggle_cold": prepared, "data": "OpenCV-drawn fields, 360 px JPEG, each its own field",
        "rows": rows,
        "growth_exponent_10k_up": {
            "siblings": exponent(sizes, [r["siblings"]["seconds"] for r in rows]),
            "decode": exponent(sizes, [r["decode"]["seconds"] for r in rows])},
        "targets": {"ratio_to_decode_at_17k": 4.0, "seconds_at_17k_idle": 180,
                    "peak_rss_gb_at_100k": 4.0, "growth_exponent": 1.1,
                    "longest_log_silence_seconds": 90},
    }
    print(f"wrote {write_result('siblings_scale', result)}")


if __name__ == "__main__":
    main()
