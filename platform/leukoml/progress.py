"""Progress bars for the long steps Keras does not cover (decoding, sibling search, scoring).

tqdm draws only on a terminal (`disable=None`), so logs of batch jobs stay clean.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], total: int | None = None, what: str = "",
             unit: str = "img") -> Iterator[T]:
    from tqdm.auto import tqdm

    return iter(tqdm(items, total=total, desc=what, unit=unit, disable=None, mininterval=1.0,
                     leave=False, dynamic_ncols=True))
