"""The error tree of neftc.

Every error a user can cause is a ``NeftcError``: the CLI prints its message (which names the
problem and the fix) and exits non-zero without a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class NeftcError(Exception):
    """Base class of every error neftc reports to a user."""

    exit_code: int = 2


class ModelFileError(NeftcError):
    """A model file is missing, corrupt, of the wrong kind or inconsistent with the architecture."""


class UntrustedModelError(ModelFileError):
    """A model file holds a pickled object whose loading would execute code from the file."""


class TraceError(NeftcError):
    """A model cannot be traced into an fx graph."""


class TargetError(NeftcError):
    """An unknown target tag, a bad target spec file or a bad ``--set`` override."""


class PassError(NeftcError):
    """A compiler pass failed; the message names the pass and the node."""


class PassOrderError(PassError):
    """A pass pipeline asks for a fact that no earlier pass provides."""


class CapacityError(NeftcError):
    """The model does not fit on the target chip."""


class LayoutError(NeftcError):
    """A layout directory is missing, truncated, edited or not a neftc layout."""


class OutputError(NeftcError):
    """An output path cannot be written safely."""


class DataError(NeftcError):
    """A data set cannot be read or does not fit the model."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean 'x'?' for the most similar choice, or '' when nothing is close.

    Case is ignored (``FEFET_128x128`` finds ``fefet_128x128``); the choices are ranked by
    ``difflib``'s similarity ratio (at least 0.6), ties broken by the order given."""
    best = closest(word, choices)
    return f" Did you mean '{best}'?" if best is not None else ""


def closest(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The choice most similar to ``word`` ignoring case, or None when none reaches ``cutoff``."""
    folded = word.casefold()
    best: tuple[float, str] | None = None
    for choice in choices:
        ratio = difflib.SequenceMatcher(None, folded, choice.casefold()).ratio()
        if ratio >= cutoff and (best is None or ratio > best[0]):
            best = (ratio, choice)
    return best[1] if best is not None else None
