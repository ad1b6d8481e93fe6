"""One process pool for the per-file work of the data layer (decoding, image features)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

_PARALLEL_FROM = 256  # below this many jobs a process pool costs more than it saves


def parallel_map(fn: Callable, jobs: Sequence, workers: int | None = None,
                 chunksize: int = 64, serial_below: int = _PARALLEL_FROM) -> Iterator:
    """`map(fn, jobs)` in order, over `workers` processes (all cores by default); in this
    process when there are fewer than `serial_below` jobs.

    Spawned, not forked: the parent may hold TensorFlow threads, which fork
    would copy mid-lock. `fn` must be importable (a module-level function).
    """
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(jobs) < serial_below:
        yield from map(fn, jobs)
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        yield from pool.map(fn, jobs, chunksize=chunksize)
