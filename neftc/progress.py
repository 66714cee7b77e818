"""When to show a progress bar: only to a person watching a terminal. A bar written to a file, a
pipe or a CI log is noise (one carriage-return line per update), so every ``tqdm`` in neftc takes
``disable=no_bar(...)``."""

from __future__ import annotations

import sys
from typing import TextIO


def no_bar(wanted: bool = True, stream: TextIO | None = None) -> bool:
    """``tqdm``'s ``disable``: True unless a bar is ``wanted`` and ``stream`` (default: the
    current ``sys.stderr``, where tqdm writes) is a terminal."""
    out = sys.stderr if stream is None else stream
    isatty = getattr(out, "isatty", None)
    return not (wanted and callable(isatty) and bool(isatty()))
