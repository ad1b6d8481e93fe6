"""The one exception type for bad user input (config, data, names).

Raised before any work starts where possible; the CLI prints it without a
traceback and exits with status 2, the convention for usage errors.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LeukomlError(ValueError):
    """A problem with the user's input, stated so that it can be fixed."""


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest of `known` to a mistyped `word` (` 'x' or 'y'`
    when two are as close: `epochs` is as near `min_epochs` as `max_epochs`), else ``.

    Case, `-` and `_` are ignored when comparing: `max-epoch` finds `max_epochs`."""
    spelled = {k.lower().replace("-", "_"): k for k in known}
    typed = str(word).lower().replace("-", "_")
    close = difflib.get_close_matches(typed, spelled, n=2, cutoff=0.6)
    score = [difflib.SequenceMatcher(None, typed, c).ratio() for c in close]
    tied = sorted(spelled[c] for c, r in zip(close, score) if r == score[0])
    return f" (did you mean {' or '.join(map(repr, tied))}?)" if close else ""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """A library exception's text for a one-line message: whitespace collapsed, SQLAlchemy's
    "(Background on this error at: ...)" link dropped, at most `limit` characters."""
    text = " ".join(str(exc).split("(Background on this error at:")[0].split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
