"""Progress of the long steps Keras does not cover (decoding, sibling search, scoring).

On a terminal, a tqdm bar. In a batch log (no terminal: `mlflow run` under a
scheduler, a CI job, `nohup`), tqdm draws nothing, so a log line says how far
the step is, its rate and the time left, every LOG_EVERY seconds: a long
step never leaves the log silent for more than that.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
LOG_EVERY = 30.0  # seconds between progress lines in a batch log

log = logging.getLogger("leukoml.progress")


def progress(items: Iterable[T], total: int | None = None, what: str = "",
             unit: str = "img") -> Iterator[T]:
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return iter(tqdm(items, total=total, desc=what, unit=unit, mininterval=1.0,
                         leave=False, dynamic_ncols=True))
    return _logged(items, total, what, unit)


def _logged(items: Iterable[T], total: int | None, what: str, unit: str) -> Iterator[T]:
    """A line when the step starts, every LOG_EVERY seconds, and when it ends."""
    start = last = time.monotonic()
    done = 0
    of = f"/{total:,}" if total else ""
    log.info("%s: 0%s %s", what, of, unit)
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= LOG_EVERY:
            last = now
            rate = done / (now - start)
            left = f", ~{(total - done) / rate:.0f} s left" if total and rate > 0 else ""
            log.info("%s: %s%s %s (%.1f %s/s%s)", what, f"{done:,}", of, unit, rate, unit, left)
    log.info("%s: %s %s in %.0f s", what, f"{done:,}", unit, time.monotonic() - start)
