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
    """` (did you mean 'x'?)` for the closest of `known` to a mistyped `word`, else ``.

    Case, `-` and `_` are ignored when comparing: `max-epoch` finds `max_epochs`."""
    spelled = {k.lower().replace("-", "_"): k for k in known}
    close = difflib.get_close_matches(str(word).lower().replace("-", "_"), spelled, n=1,
                                      cutoff=0.6)
    return f" (did you mean {spelled[close[0]]!r}?)" if close else ""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """A library exception's text for a one-line message: whitespace collapsed, SQLAlchemy's
    "(Background on this error at: ...)" link dropped, at most `limit` characters."""
    text = " ".join(str(exc).split("(Background on this error at:")[0].split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
